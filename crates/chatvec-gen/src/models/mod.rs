//! Causal language models loaded from a Hugging Face model directory.
//!
//! One shared [`Decoder`] runs every supported architecture; the per-architecture modules only
//! translate `config.json` into a [`DecoderConfig`].

mod config;
mod decoder;
mod gemma;
mod gguf;
mod kernels;
mod linear;
mod llama;
mod mistral;
mod qwen2;
mod rope;
mod weights;

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub use config::{Activation, DecoderConfig, RopeConfig, RopeScaling};
pub(crate) use decoder::{head_format, table_format};
pub use decoder::{Decoder, KvCache, Logits, SeqInput};
pub use gguf::{is_gguf, GgufWeights};
pub use rope::Rope;
pub use weights::{CheckpointWeights, WeightSource};

use crate::device::WeightFormat;
use crate::error::{GenError, Result};
use config::JsonConfig;

/// How to load a model: where, computing in which dtype, with linear weights in which format.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Where the weights live and the model computes.
    pub device: Device,
    /// Compute dtype (activations, KV cache, dense weights).
    pub dtype: DType,
    /// How linear weights are held.
    pub weights: WeightFormat,
    /// Refuse before loading when the model would not fit in available memory.
    pub check_memory: bool,
}

impl ModelOptions {
    /// Dense weights in `dtype` on `device` (the exact path), without the memory check.
    pub fn dense(device: &Device, dtype: DType) -> Self {
        ModelOptions { device: device.clone(), dtype, weights: WeightFormat::Dense, check_memory: false }
    }
}

/// Architectures chatvec can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM`.
    Llama,
    /// `MistralForCausalLM`.
    Mistral,
    /// `Qwen2ForCausalLM`.
    Qwen2,
    /// `GemmaForCausalLM`.
    Gemma,
}

/// The `architectures` names accepted, for error messages.
pub const SUPPORTED_ARCHITECTURES: &str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GemmaForCausalLM";

impl Architecture {
    /// Reads `architectures[0]` (or `model_type` when that is absent).
    fn detect(json: &serde_json::Value, path: &Path) -> Result<Self> {
        let name = json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .or_else(|| json.get("model_type").and_then(|m| m.as_str()))
            .ok_or_else(|| GenError::bad_file(path, "neither `architectures` nor `model_type` is set"))?;
        match name {
            "LlamaForCausalLM" | "llama" => Ok(Architecture::Llama),
            "MistralForCausalLM" | "mistral" => Ok(Architecture::Mistral),
            "Qwen2ForCausalLM" | "qwen2" => Ok(Architecture::Qwen2),
            "GemmaForCausalLM" | "gemma" => Ok(Architecture::Gemma),
            other => Err(GenError::UnsupportedArchitecture {
                name: other.to_string(),
                path: path.to_path_buf(),
                supported: SUPPORTED_ARCHITECTURES.to_string(),
            }),
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Gemma => "gemma",
        })
    }
}

/// Reads and checks `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<(Architecture, DecoderConfig)> {
    if !dir.is_dir() {
        return Err(GenError::NotAModel(format!("{}: not a directory", dir.display())));
    }
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(GenError::NotAModel(format!("{}: no config.json (not a model directory)", dir.display())));
    }
    let config = chatvec_format::ModelConfig::load(dir).map_err(|e| GenError::NotAModel(e.to_string()))?;
    config_from_json(&config.raw, &path)
}

/// Interprets a parsed config.json (`path` is only used in errors).
pub fn config_from_json(value: &serde_json::Value, path: &Path) -> Result<(Architecture, DecoderConfig)> {
    let arch = Architecture::detect(value, path)?;
    let cfg = JsonConfig { value, path };
    let decoder = match arch {
        Architecture::Llama => llama::config(&cfg)?,
        Architecture::Mistral => mistral::config(&cfg)?,
        Architecture::Qwen2 => qwen2::config(&cfg)?,
        Architecture::Gemma => gemma::config(&cfg)?,
    };
    config::validate(&decoder, path)?;
    Ok((arch, decoder))
}

/// A causal LM with the KV cache of one sequence (the single-sequence API: [`Model::forward_last`],
/// [`Model::forward_all`]); [`Model::forward_batch`] runs any number of sequences, each with
/// its own [`KvCache`], in one pass.
#[derive(Debug)]
pub struct Model {
    arch: Architecture,
    dir: Option<PathBuf>,
    decoder: Decoder,
    /// The single-sequence API's keys and values.
    cache: KvCache,
    /// The token ids whose keys and values are in `cache`, in order.
    cached: Vec<u32>,
}

impl Model {
    /// Loads `dir` (config.json + safetensors or PyTorch `.bin` weights) onto `device`, computing in `dtype`, with dense
    /// weights.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with(dir, &ModelOptions::dense(device, dtype))
    }

    /// Loads `dir` as `opts` say; with `check_memory`, a model that would not fit in available
    /// memory is refused before any weight is read.
    pub fn load_with(dir: &Path, opts: &ModelOptions) -> Result<Self> {
        if is_gguf(dir) {
            return Self::load_gguf(dir, opts);
        }
        let (arch, cfg) = read_config(dir)?;
        if opts.check_memory {
            if let Some(available) = crate::memory::available_bytes() {
                let stored = stored_bytes_per_weight(cfg.stored_dtype.as_deref());
                crate::memory::check_fits(&cfg, opts.weights, opts.dtype, stored, available)?;
            }
        }
        let weights = CheckpointWeights::open(dir)?;
        let decoder = Decoder::load(&cfg, &weights, &opts.device, opts.dtype, opts.weights.ggml())?;
        Ok(Model { arch, dir: Some(dir.to_path_buf()), decoder, cache: KvCache::new(), cached: Vec::new() })
    }

    /// Loads a GGUF file: hyperparameters from its metadata, weights in their stored formats
    /// (`opts.weights` does not apply).
    fn load_gguf(path: &Path, opts: &ModelOptions) -> Result<Self> {
        let weights = GgufWeights::open(path)?;
        let (arch, cfg) = config_from_json(&weights.config_json()?, path)?;
        if opts.check_memory {
            if let Some(available) = crate::memory::available_bytes() {
                let file = std::fs::metadata(path).map_err(|e| GenError::io(path, e))?.len() as f64;
                crate::memory::check_file_fits(path, file, &cfg, opts.dtype, available)?;
            }
        }
        let decoder = Decoder::load(&cfg, &weights, &opts.device, opts.dtype, None)?;
        Ok(Model { arch, dir: Some(path.to_path_buf()), decoder, cache: KvCache::new(), cached: Vec::new() })
    }

    /// Builds a model from a config and any weight source (in-memory tensors for benchmarks).
    pub fn from_weights(
        arch: Architecture,
        cfg: &DecoderConfig,
        weights: &dyn WeightSource,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Self::from_weights_as(arch, cfg, weights, &ModelOptions::dense(device, dtype))
    }

    /// Builds a model from a config and any weight source, as `opts` say (no memory check).
    pub fn from_weights_as(
        arch: Architecture,
        cfg: &DecoderConfig,
        weights: &dyn WeightSource,
        opts: &ModelOptions,
    ) -> Result<Self> {
        let decoder = Decoder::load(cfg, weights, &opts.device, opts.dtype, opts.weights.ggml())?;
        Ok(Model { arch, dir: None, decoder, cache: KvCache::new(), cached: Vec::new() })
    }

    /// The architecture read from config.json.
    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    /// The directory the model was loaded from, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The decoder configuration.
    pub fn config(&self) -> &DecoderConfig {
        self.decoder.config()
    }

    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.decoder.dtype()
    }

    /// How the linear weights are held.
    pub fn weight_format(&self) -> WeightFormat {
        self.decoder.weight_format().map_or(WeightFormat::Dense, WeightFormat::Ggml)
    }

    /// Device holding the weights.
    pub fn device(&self) -> &Device {
        self.decoder.device()
    }

    /// Number of positions in the KV cache.
    pub fn position(&self) -> usize {
        self.cache.len()
    }

    /// The token ids in the KV cache, in order.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) {
        self.cache = KvCache::new();
        self.cached.clear();
    }

    /// Keeps the first `len` cached positions (for reusing a shared prompt prefix).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        self.cache.truncate(len);
        self.cached.truncate(len);
        Ok(())
    }

    /// Appends `tokens` to the cache and returns float32 logits `(vocab,)` at the last one.
    pub fn forward_last(&mut self, tokens: &[u32]) -> Result<Tensor> {
        Ok(self.forward_own(tokens, Logits::Last)?.squeeze(0)?)
    }

    /// Appends `tokens` to the cache and returns float32 logits `(len, vocab)` at every one
    /// (what perplexity needs). Call [`Model::reset`] first to score a fresh sequence.
    pub fn forward_all(&mut self, tokens: &[u32]) -> Result<Tensor> {
        self.forward_own(tokens, Logits::All)
    }

    /// Runs several sequences in one pass, each after the positions in its own cache; returns
    /// each input's float32 logits `(rows, vocab)` for the rows it asks for. The model's own
    /// single-sequence cache is not touched.
    pub fn forward_batch(&self, inputs: &mut [SeqInput<'_>]) -> Result<Vec<Option<Tensor>>> {
        for input in inputs.iter() {
            self.check_tokens(input.tokens)?;
        }
        self.decoder.forward(inputs)
    }

    /// The single-sequence API as a batch of one over the model's own cache.
    fn forward_own(&mut self, tokens: &[u32], logits: Logits) -> Result<Tensor> {
        self.check_tokens(tokens)?;
        let mut input = [SeqInput { tokens, cache: &mut self.cache, logits }];
        let out = self.decoder.forward(&mut input)?.pop().flatten().expect("logits were asked for");
        self.cached.extend_from_slice(tokens);
        Ok(out)
    }
}

impl Model {
    /// Refuses ids the embedding has no row for, which would otherwise fail deep inside a
    /// tensor op with an index error.
    pub(crate) fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let cfg = self.config();
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            return Err(GenError::InvalidArgument(format!(
                "token id {id} is outside the model's vocabulary (vocab_size {}): the tokenizer and the model disagree",
                cfg.vocab_size
            )));
        }
        Ok(())
    }
}

/// Bytes per weight of a checkpoint stored as `torch_dtype` (bf16 when unknown).
fn stored_bytes_per_weight(torch_dtype: Option<&str>) -> f64 {
    match torch_dtype {
        Some("float32") => 4.0,
        _ => 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<(Architecture, DecoderConfig)> {
        config_from_json(&v, Path::new("config.json"))
    }

    fn llama(extra: serde_json::Value) -> serde_json::Value {
        let mut v = json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 176,
            "vocab_size": 100, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 256
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn both_rope_spellings_give_the_same_config() {
        let scaling = json!({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 64});
        let mut old_scaling = scaling.clone();
        old_scaling["rope_type"] = json!("llama3");
        let (_, old) = parse(llama(json!({
            "rope_theta": 500000.0, "rope_scaling": old_scaling, "torch_dtype": "bfloat16"
        })))
        .unwrap();
        let mut params = scaling;
        params["rope_type"] = json!("llama3");
        params["rope_theta"] = json!(500000.0);
        let (_, new) = parse(llama(json!({"rope_parameters": params, "dtype": "bfloat16"}))).unwrap();
        assert_eq!(old.rope, new.rope);
        assert_eq!(old.stored_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(new.stored_dtype.as_deref(), Some("bfloat16"));
        assert!(matches!(new.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        assert_eq!(new.rope.theta, 500000.0);
        assert_eq!(new.head_dim, 16);
    }

    #[test]
    fn llama3_rope_rescales_by_frequency_band() {
        // transformers' _compute_llama3_parameters for head_dim 16, theta 500000, factor 8,
        // low 1, high 4, original 64: high frequencies kept, low ones divided by the factor.
        let (_, c) = parse(llama(json!({"rope_theta": 500000.0, "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}})))
        .unwrap();
        let rope = Rope::new(&c.rope, c.head_dim);
        let f = rope.inv_freq();
        assert_eq!(f.len(), 8);
        assert_eq!(f[0], 1.0);
        let mut bands = [0; 3];
        for (i, &x) in f.iter().enumerate() {
            let plain = 1.0f32 / 500000f32.powf((2 * i) as f32 / 16.0);
            let wavelen = 2.0 * std::f32::consts::PI / plain;
            if wavelen < 16.0 {
                assert_eq!(x, plain, "high-frequency band {i} is unscaled");
                bands[0] += 1;
            } else if wavelen > 64.0 {
                assert_eq!(x, plain / 8.0, "low-frequency band {i} is divided by the factor");
                bands[2] += 1;
            } else {
                assert!(x > plain / 8.0 && x < plain, "band {i} is interpolated");
                bands[1] += 1;
            }
        }
        assert_eq!(bands, [1, 1, 6]);
    }

    #[test]
    fn qwen2_has_qkv_bias_and_gemma_its_quirks() {
        let mut q = llama(json!({"tie_word_embeddings": true}));
        q["architectures"] = json!(["Qwen2ForCausalLM"]);
        let (arch, c) = parse(q).unwrap();
        assert_eq!(arch, Architecture::Qwen2);
        assert!(c.qkv_bias && !c.o_bias && c.tie_word_embeddings);

        let mut g = llama(json!({"head_dim": 32, "hidden_act": "gelu"}));
        g["architectures"] = json!(["GemmaForCausalLM"]);
        let (_, c) = parse(g).unwrap();
        assert_eq!(c.head_dim, 32);
        assert_eq!(c.activation, Activation::GeluTanh);
        assert!(c.scale_embeddings && c.norm_weight_offset == 1.0 && c.tie_word_embeddings);

        let mut m = llama(json!({"sliding_window": 4096}));
        m["architectures"] = json!(["MistralForCausalLM"]);
        assert_eq!(parse(m).unwrap().1.sliding_window, Some(4096));
    }

    #[test]
    fn every_number_is_checked_before_anything_is_sized_by_it() {
        let mut mistral = llama(json!({"sliding_window": 0}));
        mistral["architectures"] = json!(["MistralForCausalLM"]);
        let cases = [
            (llama(json!({"num_hidden_layers": 4611686018427387904u64})), "num_hidden_layers"),
            (llama(json!({"num_hidden_layers": 1000000000000u64})), "num_hidden_layers"),
            (llama(json!({"vocab_size": 0})), "vocab_size"),
            (llama(json!({"rope_theta": 0.0})), "rope_theta"),
            (llama(json!({"rms_norm_eps": -1e-6})), "rms_norm_eps"),
            (llama(json!({"max_position_embeddings": 0})), "max_position_embeddings"),
            (llama(json!({"max_position_embeddings": 1u64 << 40})), "max_position_embeddings"),
            (llama(json!({"eos_token_id": [1, 100]})), "eos_token_id"),
            (llama(json!({"bos_token_id": 4294967396u64})), "bos_token_id"),
            (llama(json!({"rope_scaling": {"rope_type": "linear", "factor": -2.0}})), "rope_scaling.factor"),
            (mistral, "sliding_window"),
        ];
        for (config, key) in cases {
            let err = parse(config).unwrap_err().to_string();
            assert!(err.starts_with("config.json: `") && err.contains(key) && err.contains("allowed"), "{err}");
            assert!(!err.contains('\n') && !err.contains("Some("), "{err}");
        }
        assert!(parse(llama(json!({"eos_token_id": [1, 99], "bos_token_id": 0}))).is_ok());
    }

    #[test]
    fn unsupported_settings_are_named() {
        let mut v = llama(json!({}));
        v["architectures"] = json!(["MambaForCausalLM"]);
        let err = parse(v).unwrap_err().to_string();
        assert!(err.contains("MambaForCausalLM") && err.contains("LlamaForCausalLM"), "{err}");

        let err = parse(llama(json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}))).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");

        let mut v = llama(json!({}));
        v.as_object_mut().unwrap().remove("vocab_size");
        let err = parse(v).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("vocab_size"), "{err}");
    }
}
