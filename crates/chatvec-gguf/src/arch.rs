//! The architectures chatvec exports and how llama.cpp's converter treats each: the GGUF tensor
//! names, the Q/K row permutation of Llama-family attention, Gemma's `norm + 1`, the tensors it
//! leaves out or adds (`rope_freqs` for `llama3` rope scaling), and the hyper-parameter keys.

use chatvec_format::{Error, ModelConfig, Result};
use serde_json::Value as Json;

use crate::format::{Metadata, Value};

/// A llama.cpp architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `llama`: Llama 2/3/3.1 and Mistral.
    Llama,
    /// `qwen2`.
    Qwen2,
    /// `gemma`.
    Gemma,
}

/// How a tensor's values change on the way into the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Stored as is.
    None,
    /// Rows reordered per head so rotary pairs sit next to each other (`LlamaModel.permute`):
    /// `heads` groups of rows, each group's two halves interleaved.
    Permute {
        /// Number of row groups (attention heads, KV heads for `k_proj`).
        heads: usize,
    },
    /// Gemma stores `w` where transformers computes with `1 + w`.
    PlusOne,
}

impl Arch {
    /// The architecture of a model, from `config.json`'s `architectures`, or its `model_type` when
    /// `architectures` is missing (transformers loads such models by `model_type`).
    pub fn of(config: &ModelConfig) -> Result<Self> {
        let by_model_type = || match config.model_type()? {
            "llama" => Some("LlamaForCausalLM"),
            "mistral" => Some("MistralForCausalLM"),
            "qwen2" => Some("Qwen2ForCausalLM"),
            "gemma" => Some("GemmaForCausalLM"),
            _ => None,
        };
        match config.architecture().or_else(by_model_type) {
            Some("LlamaForCausalLM" | "MistralForCausalLM") => Ok(Arch::Llama),
            Some("Qwen2ForCausalLM") => Ok(Arch::Qwen2),
            Some("GemmaForCausalLM") => Ok(Arch::Gemma),
            Some(other) => Err(Error::UnsupportedArchitecture {
                path: "config.json".into(),
                step: "GGUF export",
                supported: "Llama, Mistral, Qwen2 and Gemma",
                found: other.to_string(),
            }),
            None => Err(Error::UnknownModelType {
                path: "config.json".into(),
                step: "GGUF export",
                supported: "llama, mistral, qwen2, gemma",
                model_type: config.model_type().unwrap_or("").to_string(),
            }),
        }
    }

    /// The name in `general.architecture`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma => "gemma",
        }
    }

    /// The GGUF name of HF tensor `name`, `Ok(None)` for tensors the converter drops.
    pub fn gguf_name(self, name: &str) -> Result<Option<String>> {
        if name.ends_with(".rotary_emb.inv_freq") || (self == Arch::Gemma && name == "lm_head.weight") {
            return Ok(None);
        }
        hf_to_gguf(name)
            .map(Some)
            .ok_or_else(|| Error::tensor(name, format!("has no GGUF name in llama.cpp's {} architecture", self.name())))
    }

    /// What happens to the values of HF tensor `name`.
    pub fn transform(self, name: &str, config: &ModelConfig) -> Transform {
        let heads = config.get("num_attention_heads").and_then(Json::as_u64).unwrap_or(1) as usize;
        let kv_heads = config.get("num_key_value_heads").and_then(Json::as_u64).map_or(heads, |v| v as usize);
        match self {
            Arch::Llama if name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias") => {
                Transform::Permute { heads }
            }
            Arch::Llama if name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias") => {
                Transform::Permute { heads: kv_heads }
            }
            Arch::Gemma if name.ends_with("norm.weight") => Transform::PlusOne,
            _ => Transform::None,
        }
    }

    /// The `rope_freqs` factors the converter adds for `llama3` rope scaling (`None` otherwise).
    pub fn rope_freqs(self, config: &ModelConfig) -> Option<Vec<f32>> {
        let scaling = config.rope_scaling()?;
        let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Json::as_str)?;
        if self != Arch::Llama || !kind.eq_ignore_ascii_case("llama3") {
            return None;
        }
        let f = |k: &str, d: f64| scaling.get(k).and_then(Json::as_f64).unwrap_or(d);
        let base = config.rope_theta().unwrap_or(10000.0) as f32;
        let scaling = Llama3Scaling {
            factor: f("factor", 8.0),
            low_freq_factor: f("low_freq_factor", 1.0),
            high_freq_factor: f("high_freq_factor", 4.0),
            original_context: f("original_max_position_embeddings", 8192.0),
        };
        Some(scaling.factors(base, head_dim(config)))
    }

    /// The hyper-parameter keys, in the order the converter writes them, ending with `file_type`
    /// (and, for llama, `vocab_size` and `rope.dimension_count` after it).
    pub fn write_params(self, config: &ModelConfig, file_type: u32, meta: &mut Metadata) -> Result<()> {
        let a = self.name();
        let need = |k: &str| {
            config
                .get(k)
                .and_then(Json::as_u64)
                .map(|v| v as u32)
                .ok_or_else(|| Error::bad_key("config.json", k, "is missing or not a number; GGUF export needs it"))
        };
        let u = |meta: &mut Metadata, k: &str, v: u32| meta.set(&format!("{a}.{k}"), Value::U32(v));
        let eps = config.get("rms_norm_eps").and_then(Json::as_f64);
        if self == Arch::Gemma {
            u(meta, "context_length", need("max_position_embeddings")?);
            u(meta, "embedding_length", need("hidden_size")?);
            u(meta, "block_count", need("num_hidden_layers")?);
            u(meta, "feed_forward_length", need("intermediate_size")?);
            u(meta, "attention.head_count", need("num_attention_heads")?);
            let kv = config
                .get("num_key_value_heads")
                .map_or_else(|| need("num_attention_heads"), |_| need("num_key_value_heads"))?;
            u(meta, "attention.head_count_kv", kv);
            meta.set(&format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(eps.unwrap_or(1e-6) as f32));
            u(meta, "attention.key_length", need("head_dim")?);
            u(meta, "attention.value_length", need("head_dim")?);
            meta.set("general.file_type", Value::U32(file_type));
            return Ok(());
        }
        u(meta, "block_count", need("num_hidden_layers")?);
        for (key, hf) in [
            ("context_length", "max_position_embeddings"),
            ("embedding_length", "hidden_size"),
            ("feed_forward_length", "intermediate_size"),
            ("attention.head_count", "num_attention_heads"),
            ("attention.head_count_kv", "num_key_value_heads"),
        ] {
            if config.get(hf).is_some() {
                u(meta, key, need(hf)?);
            }
        }
        write_rope_scaling(a, config, meta);
        if let Some(theta) = config.rope_theta() {
            meta.set(&format!("{a}.rope.freq_base"), Value::F32(theta as f32));
        }
        if let Some(eps) = eps {
            meta.set(&format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(eps as f32));
        }
        if let Some(hd) = config.get("head_dim").and_then(Json::as_u64) {
            u(meta, "attention.key_length", hd as u32);
            u(meta, "attention.value_length", hd as u32);
        }
        meta.set("general.file_type", Value::U32(file_type));
        if self == Arch::Llama {
            u(meta, "vocab_size", need("vocab_size")?);
            u(meta, "rope.dimension_count", head_dim(config) as u32);
        }
        Ok(())
    }
}

/// transformers' module names and llama.cpp's, outside the layers.
const MODEL_TENSORS: [(&str, &str); 3] =
    [("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("lm_head", "output")];

/// transformers' module names and llama.cpp's, inside layer `i` (`model.layers.{i}.` and `blk.{i}.`).
const LAYER_TENSORS: [(&str, &str); 9] = [
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// Splits `weight`/`bias` off a tensor name.
fn split_suffix(name: &str) -> Option<(&str, &str)> {
    name.rsplit_once('.').filter(|(_, s)| *s == "weight" || *s == "bias")
}

/// llama.cpp's name for transformers tensor `hf` (`model.layers.3.self_attn.q_proj.weight` →
/// `blk.3.attn_q.weight`), if it has one.
pub fn hf_to_gguf(hf: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(hf)?;
    if let Some((_, g)) = MODEL_TENSORS.iter().find(|(h, _)| *h == stem) {
        return Some(format!("{g}.{suffix}"));
    }
    let (layer, part) = stem.strip_prefix("model.layers.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, g) = LAYER_TENSORS.iter().find(|(h, _)| *h == part)?;
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// transformers' name for llama.cpp tensor `gguf`, the inverse of [`hf_to_gguf`].
pub fn gguf_to_hf(gguf: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(gguf)?;
    if let Some((h, _)) = MODEL_TENSORS.iter().find(|(_, g)| *g == stem) {
        return Some(format!("{h}.{suffix}"));
    }
    let (layer, part) = stem.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (h, _) = LAYER_TENSORS.iter().find(|(_, g)| *g == part)?;
    Some(format!("model.layers.{layer}.{h}.{suffix}"))
}

/// `llama3` rope scaling: transformers' `rope_scaling` fields, and the per-frequency divisors
/// llama.cpp stores as `rope_freqs` instead (the GGUF writer and reader share this formula).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    /// `factor`.
    pub factor: f64,
    /// `low_freq_factor`.
    pub low_freq_factor: f64,
    /// `high_freq_factor`.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`.
    pub original_context: f64,
}

impl Llama3Scaling {
    /// The `rope_freqs` values for rotary dimension `dim` and base `base`, as the converter
    /// computes them on float32 tensors (each Python float meets an f32 and becomes one).
    pub fn factors(&self, base: f32, dim: usize) -> Vec<f32> {
        let (factor, low, high, old_ctx) =
            (self.factor, self.low_freq_factor, self.high_freq_factor, self.original_context);
        let (low_wavelen, high_wavelen) = ((old_ctx / low) as f32, (old_ctx / high) as f32);
        (0..dim)
            .step_by(2)
            .map(|i| {
                let freq = 1.0f32 / base.powf(i as f32 / dim as f32);
                let wavelen = (2.0 * std::f64::consts::PI) as f32 / freq;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor as f32
                } else {
                    let smooth = (old_ctx as f32 / wavelen - low as f32) / (high - low) as f32;
                    1.0 / ((1.0 - smooth) / factor as f32 + smooth)
                }
            })
            .collect()
    }

    /// The scaling that gives `factors` (a GGUF's `rope_freqs`), if it is a `llama3` one: low and
    /// high frequency factors 1 and 4 (Llama 3.1's), the original context solved from the
    /// factors and checked by recomputing them.
    pub fn from_factors(factors: &[f32], base: f32, dim: usize) -> Option<Self> {
        let factor = factors.iter().copied().fold(1.0f32, f32::max) as f64;
        let wavelen = |i: usize| (2.0 * std::f64::consts::PI) * (base as f64).powf((2 * i) as f64 / dim as f64);
        let smooth = factors.iter().position(|&f| f != 1.0 && f as f64 != factor);
        let old_ctx = match smooth {
            // 1/f = (1 - s)/factor + s with s = (old/w - 1)/3.
            Some(i) => {
                let s = (1.0 / factors[i] as f64 - 1.0 / factor) / (1.0 - 1.0 / factor);
                (3.0 * s + 1.0) * wavelen(i)
            }
            // No factor between 1 and `factor`: any old with 4·(last w at 1) < old < (first w at
            // factor) gives the same factors; take the geometric middle.
            None => {
                let low = 4.0 * factors.iter().rposition(|&f| f == 1.0).map_or(0.25, wavelen);
                let high = factors.iter().position(|&f| f as f64 == factor).map_or(4.0 * low, wavelen);
                (low * high).sqrt()
            }
        };
        let candidate =
            |old: f64| Llama3Scaling { factor, low_freq_factor: 1.0, high_freq_factor: 4.0, original_context: old };
        let matches = |s: &Llama3Scaling| {
            let again = s.factors(base, dim);
            again.len() == factors.len()
                && again.iter().zip(factors).all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0))
        };
        [candidate(old_ctx.round()), candidate(old_ctx)].into_iter().find(matches)
    }
}

/// `head_dim`, or `hidden_size / num_attention_heads`.
fn head_dim(config: &ModelConfig) -> usize {
    let get = |k: &str| config.get(k).and_then(Json::as_u64).map(|v| v as usize);
    get("head_dim").unwrap_or_else(|| get("hidden_size").unwrap_or(0) / get("num_attention_heads").unwrap_or(1).max(1))
}

/// `linear` and `yarn` rope scaling keys (`llama3` goes into the `rope_freqs` tensor instead).
fn write_rope_scaling(a: &str, config: &ModelConfig, meta: &mut Metadata) {
    let Some(s) = config.rope_scaling() else { return };
    let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Json::as_str).unwrap_or("");
    let factor = s.get("factor").and_then(Json::as_f64);
    match (kind, factor) {
        ("linear", Some(f)) => {
            meta.set(&format!("{a}.rope.scaling.type"), Value::str("linear"));
            meta.set(&format!("{a}.rope.scaling.factor"), Value::F32(f as f32));
        }
        ("yarn", Some(f)) => {
            meta.set(&format!("{a}.rope.scaling.type"), Value::str("yarn"));
            meta.set(&format!("{a}.rope.scaling.factor"), Value::F32(f as f32));
            if let Some(n) = s.get("original_max_position_embeddings").and_then(Json::as_u64) {
                meta.set(&format!("{a}.rope.scaling.original_context_length"), Value::U32(n as u32));
            }
        }
        _ => {}
    }
}

/// Row order after [`Transform::Permute`]: output row `r` takes input row `source_row(r)`.
///
/// The converter reshapes `(heads, 2, rows/heads/2, cols)`, swaps axes 1 and 2 and flattens: output
/// row `h·d + 2i + j` comes from input row `h·d + j·d/2 + i`, with `d = rows / heads`.
pub fn source_row(r: usize, rows: usize, heads: usize) -> usize {
    let d = rows / heads;
    let (h, k) = (r / d, r % d);
    let (i, j) = (k / 2, k % 2);
    h * d + j * (d / 2) + i
}

/// Undoes [`Transform::Permute`] on stored rows of `row_bytes` bytes each (whole ggml blocks, so
/// quantized rows move without dequantizing): stored row `r` goes back to row `source_row(r)`.
pub fn unpermute_rows(stored: &[u8], row_bytes: usize, heads: usize) -> Vec<u8> {
    let rows = stored.len() / row_bytes.max(1);
    let mut out = vec![0u8; stored.len()];
    for (r, row) in stored.chunks_exact(row_bytes.max(1)).enumerate() {
        let to = source_row(r, rows, heads);
        out[to * row_bytes..(to + 1) * row_bytes].copy_from_slice(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_interleaves_the_two_halves_of_each_head() {
        // 2 heads of 4 rows: [0 1 2 3 | 4 5 6 7] -> [0 2 1 3 | 4 6 5 7]
        let order: Vec<usize> = (0..8).map(|r| source_row(r, 8, 2)).collect();
        assert_eq!(order, vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }

    #[test]
    fn hf_names_map_to_llama_cpp_names() {
        let a = Arch::Llama;
        assert_eq!(a.gguf_name("model.layers.3.self_attn.q_proj.weight").unwrap().unwrap(), "blk.3.attn_q.weight");
        assert_eq!(a.gguf_name("model.layers.0.self_attn.k_proj.bias").unwrap().unwrap(), "blk.0.attn_k.bias");
        assert_eq!(a.gguf_name("lm_head.weight").unwrap().unwrap(), "output.weight");
        assert_eq!(Arch::Gemma.gguf_name("lm_head.weight").unwrap(), None);
        assert!(a.gguf_name("model.vision.proj.weight").unwrap_err().to_string().contains("model.vision.proj.weight"));
        for hf in ["model.layers.12.mlp.down_proj.weight", "model.norm.weight", "model.layers.0.self_attn.q_proj.bias"]
        {
            assert_eq!(gguf_to_hf(&hf_to_gguf(hf).unwrap()).as_deref(), Some(hf));
        }
        assert_eq!(gguf_to_hf("rope_freqs.weight"), None);
    }

    #[test]
    fn llama3_scaling_is_recovered_from_the_factors_it_makes() {
        for (old, base, dim) in [(8192.0, 500_000.0, 128), (64.0, 500_000.0, 16), (8192.0, 10_000.0, 64)] {
            let s = Llama3Scaling { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_context: old };
            let factors = s.factors(base, dim);
            let back = Llama3Scaling::from_factors(&factors, base, dim).unwrap();
            assert_eq!(back.factors(base, dim), factors, "{old} {base} {dim}");
        }
        assert_eq!(Llama3Scaling::from_factors(&[1.0, 2.0, 0.5], 10_000.0, 6), None);
    }

    #[test]
    fn unpermuting_restores_the_rows_the_permutation_moved() {
        let (rows, heads, row_bytes) = (16, 2, 3);
        let hf: Vec<u8> = (0..rows * row_bytes).map(|i| i as u8).collect();
        let stored: Vec<u8> =
            (0..rows).flat_map(|r| hf[source_row(r, rows, heads) * row_bytes..][..row_bytes].to_vec()).collect();
        assert_ne!(stored, hf);
        assert_eq!(unpermute_rows(&stored, row_bytes, heads), hf);
    }
}
