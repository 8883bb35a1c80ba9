//! A GGUF file (llama.cpp's format) as a weight source: its hyperparameters become a
//! `config.json`-shaped value, its tensors keep their stored ggml format, and llama.cpp's names
//! and Q/K row order are mapped back to transformers'.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{QStorage, QTensor};
use candle_core::{Device, Tensor};
use serde_json::json;

use super::weights::WeightSource;
use crate::error::{GenError, Result};

/// An open GGUF file.
pub struct GgufWeights {
    path: PathBuf,
    content: Content,
    file: Mutex<File>,
    arch: String,
    /// (query heads, key/value heads): llama.cpp stores llama-family q/k rows permuted per head.
    permuted_heads: Option<(usize, usize)>,
}

impl GgufWeights {
    /// Reads the header and tensor index of `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let err = |m: String| GenError::bad_file(path, m);
        let mut file = File::open(path).map_err(|e| GenError::io(path, e))?;
        let content = Content::read(&mut file).map_err(|e| err(format!("not a readable GGUF: {e}")))?;
        let arch = meta_str(&content, "general.architecture").map_err(err)?;
        let mut w =
            GgufWeights { path: path.to_path_buf(), content, file: Mutex::new(file), arch, permuted_heads: None };
        if w.arch == "llama" {
            let heads = w.meta_usize("attention.head_count").map_err(err)?;
            w.permuted_heads = Some((heads, w.meta_usize("attention.head_count_kv").unwrap_or(heads)));
        }
        Ok(w)
    }

    /// The hyperparameters as a transformers `config.json` value (only the fields chatvec reads).
    pub fn config_json(&self) -> Result<serde_json::Value> {
        let err = |m: String| GenError::bad_file(&self.path, m);
        let architecture = match self.arch.as_str() {
            "llama" => "LlamaForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            other => {
                return Err(err(format!("GGUF architecture `{other}` is not supported (supported: llama, qwen2)")));
            }
        };
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(err("rope_freqs.weight (Llama-3.1 rope scaling) is not supported in GGUF yet; \
                            run the Hugging Face directory instead"
                .into()));
        }
        let get = |k: &str| self.meta_usize(k).map_err(err);
        let heads = get("attention.head_count")?;
        let hidden = get("embedding_length")?;
        let vocab = self.tensor_dims("token_embd.weight").and_then(|d| d.first().copied()).unwrap_or(0);
        Ok(json!({
            "architectures": [architecture],
            "hidden_size": hidden,
            "intermediate_size": get("feed_forward_length")?,
            "num_hidden_layers": get("block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": self.meta_usize("attention.head_count_kv").unwrap_or(heads),
            "head_dim": self.meta_usize("attention.key_length").unwrap_or(hidden / heads.max(1)),
            "vocab_size": vocab,
            "rms_norm_eps": self.meta_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            "rope_theta": self.meta_f64("rope.freq_base").unwrap_or(10_000.0),
            "max_position_embeddings": self.meta_usize("context_length").unwrap_or(4096),
            "tie_word_embeddings": !self.content.tensor_infos.contains_key("output.weight"),
        }))
    }

    fn meta_usize(&self, key: &str) -> std::result::Result<usize, String> {
        let k = format!("{}.{key}", self.arch);
        let v = self.content.metadata.get(&k).ok_or_else(|| format!("metadata `{k}` is missing"))?;
        v.to_u64().or_else(|_| v.to_u32().map(u64::from)).map(|x| x as usize).map_err(|e| format!("`{k}`: {e}"))
    }

    fn meta_f64(&self, key: &str) -> Option<f64> {
        let v = self.content.metadata.get(&format!("{}.{key}", self.arch))?;
        v.to_f32().map(f64::from).or_else(|_| v.to_f64()).ok()
    }

    fn tensor_dims(&self, name: &str) -> Option<Vec<usize>> {
        self.content.tensor_infos.get(name).map(|t| t.shape.dims().to_vec())
    }

    fn read(&self, gguf_name: &str) -> Result<QTensor> {
        let mut file = self.file.lock().map_err(|_| GenError::InvalidArgument("GGUF reader poisoned".into()))?;
        self.content
            .tensor(&mut *file, gguf_name, &Device::Cpu)
            .map_err(|e| GenError::bad_file(&self.path, format!("{gguf_name}: {e}")))
    }

    /// A tensor under its transformers name, checked against `shape`, q/k rows in transformers'
    /// order.
    fn load(&self, name: &str, shape: &[usize]) -> Result<QTensor> {
        let err = |m: String| GenError::bad_file(&self.path, m);
        let gguf = gguf_name(name).ok_or_else(|| err(format!("no GGUF tensor corresponds to {name}")))?;
        if !self.content.tensor_infos.contains_key(&gguf) {
            return Err(err(format!("missing tensor {gguf} ({name})")));
        }
        let q = self.read(&gguf)?;
        if q.shape().dims() != shape {
            return Err(err(format!("{gguf} has shape {:?}, the metadata implies {shape:?}", q.shape().dims())));
        }
        match (self.permuted_heads, gguf.rsplit('.').nth(1)) {
            (Some((heads, _)), Some("attn_q")) => unpermute_rows(&q, heads),
            (Some((_, kv_heads)), Some("attn_k")) => unpermute_rows(&q, kv_heads),
            _ => Ok(q),
        }
    }
}

fn meta_str(content: &Content, key: &str) -> std::result::Result<String, String> {
    match content.metadata.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(format!("metadata `{key}` is missing")),
    }
}

/// llama.cpp's name for a transformers tensor name.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let (module, kind) = module.rsplit_once('.')?;
    let g = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// Undoes convert_hf_to_gguf.py's `permute` of llama q/k weights: within each head, GGUF row
/// `2j + s` is transformers' row `s * head_dim / 2 + j`. Rows are whole blocks, so the bytes are
/// moved without dequantizing. 1-d tensors (biases) are permuted the same way.
fn unpermute_rows(q: &QTensor, heads: usize) -> Result<QTensor> {
    let dims = q.shape().dims().to_vec();
    let rows = dims[0];
    let data = q.data()?;
    let row_bytes = data.len() / rows;
    let (head_dim, half) = (rows / heads, rows / heads / 2);
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..half {
                let (to, from) = (h * head_dim + s * half + j, h * head_dim + 2 * j + s);
                out[to * row_bytes..(to + 1) * row_bytes]
                    .copy_from_slice(&data[from * row_bytes..(from + 1) * row_bytes]);
            }
        }
    }
    let storage = QStorage::from_data(std::borrow::Cow::Owned(out), &Device::Cpu, q.dtype())?;
    Ok(QTensor::new(storage, dims)?)
}

impl WeightSource for GgufWeights {
    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.content.tensor_infos.contains_key(&g))
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self.load(name, shape)?.dequantize(&Device::Cpu)?)
    }

    fn qtensor(&self, name: &str, shape: &[usize]) -> Result<Option<QTensor>> {
        self.load(name, shape).map(Some)
    }
}

/// Whether `path` names a GGUF file.
pub fn is_gguf(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}
