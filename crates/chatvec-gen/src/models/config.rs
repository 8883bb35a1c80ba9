//! The shape of a decoder-only transformer, read from a Hugging Face `config.json`.
//!
//! Both spellings are read: 2024-era `rope_theta`/`rope_scaling`/`torch_dtype` and
//! transformers-5 `rope_parameters`/`dtype`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{GenError, Result};

/// Rotary position embedding parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Base of the geometric frequency series.
    pub theta: f64,
    /// How frequencies are rescaled for long contexts.
    pub scaling: RopeScaling,
}

/// The `rope_type` variants this crate implements.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1 frequency-band rescaling.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// `low_freq_factor` of the config.
        low_freq_factor: f64,
        /// `high_freq_factor` of the config.
        high_freq_factor: f64,
        /// The context the model was trained with before the extension.
        original_max_position_embeddings: f64,
    },
}

/// MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (`silu`, Llama/Mistral/Qwen2).
    Silu,
    /// GELU with tanh approximation (`gelu_pytorch_tanh`, Gemma).
    GeluTanh,
    /// Exact GELU (`gelu`).
    Gelu,
}

/// Everything the shared decoder needs to know about one checkpoint.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Rows of the embedding and the output projection.
    pub vocab_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (fewer than query heads: grouped-query attention).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary embedding settings.
    pub rope: RopeConfig,
    /// Biases on q/k/v projections (Qwen2, Llama `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama `attention_bias`).
    pub o_bias: bool,
    /// Biases on the MLP projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// The MLP's activation.
    pub activation: Activation,
    /// Gemma multiplies embeddings by sqrt(hidden_size).
    pub scale_embeddings: bool,
    /// Gemma's RMSNorm multiplies by (1 + weight).
    pub norm_weight_offset: f64,
    /// The output projection is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Mistral-style sliding-window attention: a query sees at most this many keys.
    pub sliding_window: Option<usize>,
    /// Positions the model was trained for: the context limit.
    pub max_position_embeddings: usize,
    /// `bos_token_id` of config.json.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` of config.json (int or list).
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` / `dtype` as written, e.g. `bfloat16`.
    pub stored_dtype: Option<String>,
}

/// Typed access to a config.json object with errors that name the file.
pub(crate) struct JsonConfig<'a> {
    pub value: &'a Value,
    pub path: &'a Path,
}

impl JsonConfig<'_> {
    fn field(&self, key: &str) -> Option<&Value> {
        chatvec_format::config::lookup(self.value, key)
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| GenError::bad_file(self.path, format!("missing integer `{key}`")))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.field(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| GenError::bad_file(self.path, format!("`{key}` is not an integer"))),
        }
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.field(key) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| GenError::bad_file(self.path, format!("`{key}` is not a number")))
            }
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.field(key) {
            None => Ok(None),
            Some(v) => {
                v.as_bool().map(Some).ok_or_else(|| GenError::bad_file(self.path, format!("`{key}` is not a boolean")))
            }
        }
    }

    pub fn opt_str(&self, key: &str) -> Option<&str> {
        self.field(key).and_then(Value::as_str)
    }

    fn path_buf(&self) -> PathBuf {
        self.path.to_path_buf()
    }
}

/// Reads `eos_token_id`-style values: an integer, a list of integers, or null.
pub(crate) fn token_ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        // An id too large for u32 becomes u32::MAX, which `validate` reports as outside the vocabulary.
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![u32::try_from(n).unwrap_or(u32::MAX)]).unwrap_or_default(),
        Some(Value::Array(items)) => {
            items.iter().filter_map(Value::as_u64).map(|n| u32::try_from(n).unwrap_or(u32::MAX)).collect()
        }
        _ => Vec::new(),
    }
}

/// Per-architecture defaults for keys a config may omit.
pub(crate) struct Defaults {
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub activation: Activation,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
}

/// Reads the keys common to Llama-like decoders; architectures adjust the result.
pub(crate) fn common(cfg: &JsonConfig, defaults: Defaults) -> Result<DecoderConfig> {
    let hidden_size = cfg.usize("hidden_size")?;
    let num_heads = cfg.usize("num_attention_heads")?;
    if num_heads == 0 || hidden_size == 0 {
        return Err(GenError::bad_file(cfg.path, "hidden_size and num_attention_heads must be positive"));
    }
    let num_kv_heads = cfg.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
    if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(GenError::bad_file(
            cfg.path,
            format!("num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"),
        ));
    }
    let head_dim = cfg.opt_usize("head_dim")?.unwrap_or(hidden_size / num_heads);
    if head_dim % 2 != 0 {
        return Err(GenError::bad_file(cfg.path, format!("head_dim {head_dim} is odd")));
    }
    let activation = match cfg.opt_str("hidden_activation").or_else(|| cfg.opt_str("hidden_act")) {
        None => defaults.activation,
        Some("silu") | Some("swish") => Activation::Silu,
        Some("gelu_pytorch_tanh") | Some("gelu_new") | Some("gelu_fast") => Activation::GeluTanh,
        Some("gelu") => Activation::Gelu,
        Some(other) => {
            return Err(GenError::UnsupportedConfig {
                path: cfg.path_buf(),
                message: format!("activation `{other}` is not supported (silu, gelu, gelu_pytorch_tanh)"),
            })
        }
    };
    Ok(DecoderConfig {
        hidden_size,
        intermediate_size: cfg.usize("intermediate_size")?,
        vocab_size: cfg.usize("vocab_size")?,
        num_layers: cfg.usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(defaults.rms_norm_eps),
        rope: rope(cfg, defaults.rope_theta)?,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        activation,
        scale_embeddings: false,
        norm_weight_offset: 0.0,
        tie_word_embeddings: cfg.opt_bool("tie_word_embeddings")?.unwrap_or(defaults.tie_word_embeddings),
        sliding_window: None,
        max_position_embeddings: cfg.opt_usize("max_position_embeddings")?.unwrap_or(defaults.max_position_embeddings),
        bos_token_id: token_ids(cfg.value.get("bos_token_id")).first().copied(),
        eos_token_ids: token_ids(cfg.value.get("eos_token_id")),
        stored_dtype: cfg.opt_str("dtype").or_else(|| cfg.opt_str("torch_dtype")).map(str::to_string),
    })
}

/// Reads RoPE settings from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`.
fn rope(cfg: &JsonConfig, default_theta: f64) -> Result<RopeConfig> {
    let params = cfg.field("rope_parameters").or_else(|| cfg.field("rope_scaling"));
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64)
        .or(cfg.opt_f64("rope_theta")?)
        .unwrap_or(default_theta);
    let Some(params) = params else {
        return Ok(RopeConfig { theta, scaling: RopeScaling::Default });
    };
    let kind = params.get("rope_type").or_else(|| params.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        params
            .get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| GenError::bad_file(cfg.path, format!("rope `{kind}` needs a number `{key}`")))
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        other => {
            return Err(GenError::UnsupportedConfig {
                path: cfg.path_buf(),
                message: format!("rope type `{other}` is not supported (default, linear, llama3)"),
            })
        }
    };
    Ok(RopeConfig { theta, scaling })
}

/// Largest values accepted from config.json: far above any released model, low enough that
/// nothing sized by them can overflow or exhaust memory before the weights are checked.
const MAX_WIDTH: usize = 1 << 20;
const MAX_VOCAB: usize = 1 << 24;
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 4096;
const MAX_POSITIONS: usize = 1 << 24;

/// Checks every number of a parsed config against the range a decoder can use, before anything
/// is allocated from it; the error names the file, the key and the allowed range.
pub(crate) fn validate(c: &DecoderConfig, path: &Path) -> Result<()> {
    let out_of_range = |key: &str, value: String, range: String| {
        Err(GenError::bad_file(path, format!("`{key}` is {value}; allowed: {range}")))
    };
    let counts = [
        ("hidden_size", c.hidden_size, 1, MAX_WIDTH),
        ("intermediate_size", c.intermediate_size, 1, 4 * MAX_WIDTH),
        ("vocab_size", c.vocab_size, 1, MAX_VOCAB),
        ("num_hidden_layers", c.num_layers, 1, MAX_LAYERS),
        ("num_attention_heads", c.num_heads, 1, MAX_HEADS),
        ("num_key_value_heads", c.num_kv_heads, 1, c.num_heads),
        ("head_dim", c.head_dim, 2, MAX_WIDTH / 16),
        ("max_position_embeddings", c.max_position_embeddings, 1, MAX_POSITIONS),
        ("sliding_window", c.sliding_window.unwrap_or(1), 1, MAX_POSITIONS),
    ];
    for (key, value, lo, hi) in counts {
        if !(lo..=hi).contains(&value) {
            return out_of_range(key, value.to_string(), format!("{lo} to {hi}"));
        }
    }
    if !(c.rms_norm_eps.is_finite() && (0.0..1.0).contains(&c.rms_norm_eps)) {
        return out_of_range("rms_norm_eps", c.rms_norm_eps.to_string(), "0 <= eps < 1".into());
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(c.rope.theta) {
        return out_of_range("rope_theta", c.rope.theta.to_string(), "a finite number > 0".into());
    }
    let factors = match c.rope.scaling {
        RopeScaling::Default => vec![],
        RopeScaling::Linear { factor } => vec![("factor", factor)],
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => vec![
            ("factor", factor),
            ("low_freq_factor", low_freq_factor),
            ("high_freq_factor", high_freq_factor),
            ("original_max_position_embeddings", original_max_position_embeddings),
        ],
    };
    for (key, value) in factors {
        if !positive(value) {
            return out_of_range(&format!("rope_scaling.{key}"), value.to_string(), "a finite number > 0".into());
        }
    }
    let vocab = c.vocab_size;
    for (key, id) in
        c.eos_token_ids.iter().map(|&id| ("eos_token_id", id)).chain(c.bos_token_id.map(|id| ("bos_token_id", id)))
    {
        if id as usize >= vocab {
            return out_of_range(key, id.to_string(), format!("a token id below vocab_size {vocab}"));
        }
    }
    Ok(())
}
