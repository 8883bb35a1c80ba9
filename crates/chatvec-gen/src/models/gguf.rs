//! A GGUF file (llama.cpp's format) as a weight source: its hyperparameters become a
//! `config.json`-shaped value, its tensors keep their stored ggml format, and llama.cpp's names
//! and Q/K row order are mapped back to transformers' (both from `chatvec_gguf::arch`, the one
//! table the exporter writes with). The file is read and checked by `chatvec_gguf::read`.

use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use chatvec_gguf::arch::{hf_to_gguf, unpermute_rows, Llama3Scaling};
use chatvec_gguf::read::{GgufIndex, MetaValue};
use serde_json::json;

use super::weights::WeightSource;
use crate::error::{GenError, Result};

/// An open, checked GGUF file.
pub struct GgufWeights {
    index: GgufIndex,
    arch: String,
    /// (query heads, key/value heads): llama.cpp stores llama-family q/k rows permuted per head.
    permuted_heads: Option<(usize, usize)>,
}

impl GgufWeights {
    /// Reads and checks the header and tensor index of `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let index = GgufIndex::open(path).map_err(|e| GenError::bad_file(path, e.problem.to_string()))?;
        let arch = match index.get("general.architecture") {
            Some(MetaValue::Str(s)) => s.clone(),
            _ => return Err(GenError::bad_file(path, "metadata `general.architecture` is missing")),
        };
        let mut w = GgufWeights { index, arch, permuted_heads: None };
        if w.arch == "llama" {
            let heads = w.meta_usize("attention.head_count")?;
            w.permuted_heads = Some((heads, w.meta_usize_or("attention.head_count_kv", heads)?));
        }
        Ok(w)
    }

    /// The checked header and tensor index.
    pub fn index(&self) -> &GgufIndex {
        &self.index
    }

    fn err(&self, message: String) -> GenError {
        GenError::bad_file(self.index.path(), message)
    }

    /// The hyperparameters as a transformers `config.json` value (only the fields chatvec reads).
    pub fn config_json(&self) -> Result<serde_json::Value> {
        let architecture = match self.arch.as_str() {
            "llama" => "LlamaForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            "gemma" => "GemmaForCausalLM",
            other => {
                return Err(
                    self.err(format!("GGUF architecture {other:?} is not supported (supported: llama, qwen2, gemma)"))
                );
            }
        };
        let heads = self.meta_usize("attention.head_count")?;
        let hidden = self.meta_usize("embedding_length")?;
        let head_dim = self.meta_usize_or("attention.key_length", hidden / heads.max(1))?;
        let rope_theta = self.meta_f64_or("rope.freq_base", 10_000.0)?;
        let vocab = self.index.tensor("token_embd.weight").and_then(|t| t.shape.first().copied()).unwrap_or(0);
        Ok(json!({
            "architectures": [architecture],
            "hidden_size": hidden,
            "intermediate_size": self.meta_usize("feed_forward_length")?,
            "num_hidden_layers": self.meta_usize("block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": self.meta_usize_or("attention.head_count_kv", heads)?,
            "head_dim": head_dim,
            "vocab_size": vocab,
            "rms_norm_eps": self.meta_f64_or("attention.layer_norm_rms_epsilon", 1e-6)?,
            "rope_theta": rope_theta,
            "rope_scaling": self.rope_scaling(rope_theta, self.meta_usize_or("rope.dimension_count", head_dim)?)?,
            "max_position_embeddings": self.meta_usize_or("context_length", 4096)?,
            "tie_word_embeddings": self.index.tensor("output.weight").is_none(),
        }))
    }

    /// transformers' `rope_scaling` for a `rope_freqs` tensor (llama.cpp's form of Llama 3.1's
    /// `llama3` scaling), or null without one.
    fn rope_scaling(&self, theta: f64, dim: usize) -> Result<serde_json::Value> {
        let Some(entry) = self.index.tensor("rope_freqs.weight") else { return Ok(serde_json::Value::Null) };
        if entry.stored.name != "F32" || entry.shape != [dim / 2] {
            return Err(self.err(format!(
                "rope_freqs.weight is {} {:?}; chatvec reads F32 [{}]",
                entry.stored.name,
                entry.shape,
                dim / 2
            )));
        }
        let bytes = self.index.read_bytes(entry).map_err(|e| self.err(e.problem.to_string()))?;
        let factors: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let s = Llama3Scaling::from_factors(&factors, theta as f32, dim)
            .ok_or_else(|| self.err("rope_freqs.weight is not a llama3 rope scaling chatvec can reproduce".into()))?;
        Ok(json!({"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                  "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_context}))
    }

    fn meta_usize(&self, key: &str) -> Result<usize> {
        let k = format!("{}.{key}", self.arch);
        self.meta_usize_opt(&k)?.ok_or_else(|| self.err(format!("metadata `{k}` is missing")))
    }

    fn meta_usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.meta_usize_opt(&format!("{}.{key}", self.arch))?.unwrap_or(default))
    }

    fn meta_usize_opt(&self, k: &str) -> Result<Option<usize>> {
        match self.index.get(k) {
            None => Ok(None),
            Some(MetaValue::UInt(x)) => {
                usize::try_from(*x).map(Some).map_err(|_| self.err(format!("`{k}` = {x} is too large")))
            }
            Some(MetaValue::Int(x)) => {
                usize::try_from(*x).map(Some).map_err(|_| self.err(format!("`{k}` = {x} is negative")))
            }
            Some(_) => Err(self.err(format!("metadata `{k}` is not an integer"))),
        }
    }

    fn meta_f64_or(&self, key: &str, default: f64) -> Result<f64> {
        let k = format!("{}.{key}", self.arch);
        match self.index.get(&k) {
            None => Ok(default),
            Some(MetaValue::Float(x)) => Ok(*x),
            Some(_) => Err(self.err(format!("metadata `{k}` is not a float"))),
        }
    }

    /// A tensor under its transformers name, checked against `shape`, q/k rows in transformers'
    /// order.
    fn load(&self, name: &str, shape: &[usize]) -> Result<QTensor> {
        let gguf = hf_to_gguf(name).ok_or_else(|| self.err(format!("no GGUF tensor corresponds to {name}")))?;
        let entry = self.index.tensor(&gguf).ok_or_else(|| self.err(format!("missing tensor {gguf} ({name})")))?;
        if entry.shape != shape {
            return Err(self.err(format!("{gguf} has shape {:?}, the metadata implies {shape:?}", entry.shape)));
        }
        let mut bytes = self.index.read_bytes(entry).map_err(|e| self.err(e.problem.to_string()))?;
        let heads = match (self.permuted_heads, gguf.rsplit('.').nth(1)) {
            (Some((heads, _)), Some("attn_q")) => Some(heads),
            (Some((_, kv_heads)), Some("attn_k")) => Some(kv_heads),
            _ => None,
        };
        if let Some(heads) = heads {
            let rows = shape[0];
            if heads == 0 || rows == 0 || !rows.is_multiple_of(2 * heads) {
                return Err(self.err(format!("{gguf}: {rows} rows do not split into {heads} heads of row pairs")));
            }
            bytes = unpermute_rows(&bytes, bytes.len() / rows, heads);
        }
        if self.arch == "gemma" && gguf.ends_with("norm.weight") {
            self.undo_plus_one(&gguf, entry.stored.name, &mut bytes)?;
        }
        let storage = super::linear::cpu_storage(&[&bytes], entry.stored.candle)?;
        Ok(QTensor::new(storage, shape)?)
    }
}

impl GgufWeights {
    /// Gemma's norms are stored as `1 + w` (the converter adds the 1 transformers adds at run
    /// time; chatvec's decoder adds it too): subtract it back.
    fn undo_plus_one(&self, gguf: &str, type_name: &str, bytes: &mut [u8]) -> Result<()> {
        if type_name != "F32" {
            return Err(self.err(format!("{gguf}: Gemma norm weights stored as {type_name}; chatvec reads F32 ones")));
        }
        for x in bytes.chunks_exact_mut(4) {
            let v = f32::from_le_bytes([x[0], x[1], x[2], x[3]]) - 1.0;
            x.copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    }
}

impl WeightSource for GgufWeights {
    fn contains(&self, name: &str) -> bool {
        hf_to_gguf(name).is_some_and(|g| self.index.tensor(&g).is_some())
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self.load(name, shape)?.dequantize(&Device::Cpu)?)
    }

    fn qtensor(&self, name: &str, shape: &[usize]) -> Result<Option<QTensor>> {
        let q = self.load(name, shape)?;
        if candle_cannot_multiply(q.dtype(), shape.last().copied().unwrap_or(0)) {
            // Read dequantized instead (exact, in f32: more memory for this tensor only).
            return Ok(None);
        }
        Ok(Some(q))
    }
}

/// candle's Q4_1, Q5_0 and Q5_1 dot products take blocks two at a time and panic on a row of an
/// odd number of blocks (352 columns: 11 blocks), which llama.cpp multiplies.
fn candle_cannot_multiply(dtype: GgmlDType, cols: usize) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1) && (cols / dtype.block_size()) % 2 == 1
}

/// Whether `path` names a GGUF file.
pub fn is_gguf(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}
