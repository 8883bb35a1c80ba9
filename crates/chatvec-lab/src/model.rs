//! The trainable Llama: parameters in a `VarMap` under Hugging Face tensor names, a batched
//! causal forward built only from differentiable candle ops, and checkpoint I/O in the layout
//! `chatvec merge` and `chatvec-gen` read.
//!
//! chatvec-gen's decoder cannot be reused for training: it copies weights at load time (q/k/v
//! and gate/up are concatenated), and its RMSNorm, RoPE and softmax are candle's fused kernels,
//! which have no backward pass. This forward uses the lab's own fused kernels with a backward
//! pass ([`crate::kernels`]); `tests::training_forward_matches_chatvec_gen` proves the two agree.

use std::collections::HashMap;
use std::path::Path;

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde_json::json;

use crate::data::{Draw, Rng};
use crate::kernels::{self, RopeTables};

/// Token ids of the Llama-3 special tokens in the lab tokenizer.
pub const BOS: u32 = 2000;
/// `<|end_of_text|>`.
pub const EOS: u32 = 2001;
/// `<|eot_id|>`.
pub const EOT: u32 = 2004;
/// First and one-past-last id of the chat-only special tokens (headers, eot, reserved): their
/// rows start at zero, as Llama-3 base has them.
pub const CHAT_ONLY_ROWS: std::ops::Range<usize> = 2002..2008;

/// Architecture of the lab models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabConfig {
    /// Vocabulary size (the fixture tokenizer's 2008).
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Attention heads (as many KV heads).
    pub heads: usize,
    /// Longest sequence trained and evaluated.
    pub max_positions: usize,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig { vocab: 2008, hidden: 96, intermediate: 256, layers: 4, heads: 4, max_positions: 256 }
    }
}

/// RMSNorm epsilon.
pub const RMS_EPS: f64 = 1e-5;
/// RoPE base.
pub const ROPE_THETA: f64 = 10000.0;

impl LabConfig {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Floating-point operations of one training token (forward and backward, the backward
    /// counted as twice the forward) in sequences of `seq` tokens: the matmuls only (the
    /// projections, the lm_head and the attention scores over all `seq` keys); the elementwise
    /// ops are a few percent of this.
    pub fn train_flops_per_token(&self, seq: usize) -> f64 {
        let (h, i, v, l) = (self.hidden as f64, self.intermediate as f64, self.vocab as f64, self.layers as f64);
        let forward = 2.0 * (l * (4.0 * h * h + 3.0 * h * i) + v * h) + l * 4.0 * seq as f64 * h;
        3.0 * forward
    }

    /// `config.json` of a `LlamaForCausalLM` with this shape.
    pub fn hf_config(&self) -> serde_json::Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": BOS,
            "eos_token_id": EOS,
            "head_dim": self.head_dim(),
            "hidden_act": "silu",
            "hidden_size": self.hidden,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate,
            "max_position_embeddings": self.max_positions,
            "mlp_bias": false,
            "model_type": "llama",
            "num_attention_heads": self.heads,
            "num_hidden_layers": self.layers,
            "num_key_value_heads": self.heads,
            "pretraining_tp": 1,
            "rms_norm_eps": RMS_EPS,
            "rope_scaling": null,
            "rope_theta": ROPE_THETA,
            "tie_word_embeddings": false,
            "torch_dtype": "bfloat16",
            "use_cache": true,
            "vocab_size": self.vocab,
        })
    }

    /// Every parameter: (name, shape), in a fixed order.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden, self.intermediate, self.vocab);
        let mut p = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.layers {
            let pre = format!("model.layers.{l}");
            for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                p.push((format!("{pre}.self_attn.{n}.weight"), vec![h, h]));
            }
            p.push((format!("{pre}.mlp.gate_proj.weight"), vec![i, h]));
            p.push((format!("{pre}.mlp.up_proj.weight"), vec![i, h]));
            p.push((format!("{pre}.mlp.down_proj.weight"), vec![h, i]));
            p.push((format!("{pre}.input_layernorm.weight"), vec![h]));
            p.push((format!("{pre}.post_attention_layernorm.weight"), vec![h]));
        }
        p.push(("model.norm.weight".to_string(), vec![h]));
        p.push(("lm_head.weight".to_string(), vec![v, h]));
        p
    }
}

/// The model being trained.
pub struct TrainModel {
    /// Shape.
    pub cfg: LabConfig,
    /// All parameters by HF name.
    pub vars: VarMap,
    /// When set, the chat-only rows of `lm_head` get no gradient and stay as they are (zero in
    /// base and target, as in Llama-3 base): they are multiplied by this 0/1 column.
    pub frozen_rows: Option<Tensor>,
    /// Which implementation of RMSNorm, RoPE, softmax and the loss the forward uses.
    pub kernels: Kernels,
    rope: RopeTables,
    cos: Tensor,
    sin: Tensor,
}

/// Implementations of the non-matmul ops of a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The lab's fused kernels with a backward pass ([`crate::kernels`]): the default.
    Fused,
    /// candle's composed differentiable ops (`rms_norm_slow`, `rope_slow`, masked softmax,
    /// `log_softmax`): the reference the fused ones are tested and timed against.
    Composed,
}

impl TrainModel {
    /// Fresh weights from `seed`: normal(0, 0.02) matrices (output projections scaled by
    /// 1/sqrt(2·layers)), unit norms, and zero rows for the chat-only special tokens.
    pub fn init(cfg: LabConfig, seed: u64) -> Result<Self> {
        let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(17));
        let mut tensors = HashMap::new();
        for (name, shape) in cfg.parameters() {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if shape.len() == 1 {
                vec![1.0; n]
            } else {
                let std = if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                    0.02 / (2.0 * cfg.layers as f64).sqrt()
                } else {
                    0.02
                };
                let mut d: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
                if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
                    for row in CHAT_ONLY_ROWS {
                        d[row * cfg.hidden..(row + 1) * cfg.hidden].fill(0.0);
                    }
                }
                d
            };
            tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
        }
        Self::from_tensors(cfg, tensors)
    }

    /// Loads a saved checkpoint's weights (any float dtype) as float32 parameters.
    pub fn load(cfg: LabConfig, dir: &Path) -> Result<Self> {
        let path = dir.join("model.safetensors");
        let loaded = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| e.with_path(&path))?;
        let mut tensors = HashMap::new();
        for (name, shape) in cfg.parameters() {
            let Some(t) = loaded.get(&name) else { return Err(Error::MissingTensor { path, name }) };
            if t.dims() != shape.as_slice() {
                return Err(Error::ShapeMismatch { name, found: t.dims().to_vec(), expected: shape.to_vec() });
            }
            tensors.insert(name, t.to_dtype(DType::F32)?);
        }
        Self::from_tensors(cfg, tensors)
    }

    fn from_tensors(cfg: LabConfig, tensors: HashMap<String, Tensor>) -> Result<Self> {
        let vars = VarMap::new();
        {
            let mut data = vars.data().lock().expect("fresh VarMap");
            for (name, t) in tensors {
                data.insert(name, Var::from_tensor(&t)?);
            }
        }
        let (cos, sin) = rope_tables(&cfg)?;
        Ok(TrainModel {
            cfg,
            vars,
            frozen_rows: None,
            kernels: Kernels::Fused,
            rope: RopeTables::new(&cos, &sin)?,
            cos,
            sin,
        })
    }

    fn get(&self, name: &str) -> Result<Tensor> {
        let data = self.vars.data().lock().expect("VarMap lock");
        Ok(data.get(name).ok_or_else(|| Error::NoParameter(name.to_string()))?.as_tensor().clone())
    }

    /// All parameters, sorted by name (a stable order for the optimizer).
    pub fn all_vars(&self) -> Vec<Var> {
        let data = self.vars.data().lock().expect("VarMap lock");
        let mut named: Vec<(&String, &Var)> = data.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter().map(|(_, v)| v.clone()).collect()
    }

    /// Logits `(b·s, vocab)` for a batch of token ids `(b, s)`; position 0 is the first token.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        if s > self.cfg.max_positions {
            return Err(Error::TooManyTokens { tokens: s, max: self.cfg.max_positions });
        }
        let h = self.cfg.hidden;
        let embed = self.get("model.embed_tokens.weight")?;
        let mut x = embed.index_select(&ids.flatten_all()?, 0)?;
        for l in 0..self.cfg.layers {
            x = self.layer(&x, l, b, s)?;
        }
        let x = self.norm(&x, "model.norm.weight")?;
        let head = self.get("lm_head.weight")?;
        let head = match &self.frozen_rows {
            Some(keep) => head.broadcast_mul(keep)?,
            None => head,
        };
        debug_assert_eq!(x.dims2()?, (b * s, h));
        Ok(kernels::linear(&x, &head)?)
    }

    fn norm(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let w = self.get(name)?;
        Ok(match self.kernels {
            Kernels::Fused => kernels::rms_norm(x, &w, RMS_EPS as f32)?,
            Kernels::Composed => candle_nn::ops::rms_norm_slow(x, &w, RMS_EPS as f32)?,
        })
    }

    fn rotate(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.kernels {
            Kernels::Fused => kernels::rope(x, &self.rope)?,
            Kernels::Composed => {
                let s = x.dim(2)?;
                candle_nn::rotary_emb::rope_slow(
                    &x.contiguous()?,
                    &self.cos.narrow(0, 0, s)?,
                    &self.sin.narrow(0, 0, s)?,
                )?
            }
        })
    }

    fn attention_weights(&self, scores: &Tensor) -> Result<Tensor> {
        Ok(match self.kernels {
            Kernels::Fused => kernels::causal_softmax(scores)?,
            Kernels::Composed => {
                let mask = causal_mask(scores.dim(candle_core::D::Minus1)?)?;
                candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, candle_core::D::Minus1)?
            }
        })
    }

    /// Weighted mean next-token negative log-likelihood of `logits` `(n, vocab)`, divided by
    /// `max(Σ weights, 1)`.
    pub fn loss(&self, logits: &Tensor, targets: &[u32], weights: &[f32]) -> Result<Tensor> {
        if self.kernels == Kernels::Fused {
            return Ok(kernels::cross_entropy(logits, targets.to_vec(), weights.to_vec())?);
        }
        let logp = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
        let idx = Tensor::new(targets, &Device::Cpu)?.unsqueeze(1)?;
        let picked = logp.gather(&idx, 1)?.squeeze(1)?;
        let total = weights.iter().sum::<f32>().max(1.0) as f64;
        Ok(((picked * Tensor::new(weights, &Device::Cpu)?)?.sum_all()? * (-1.0 / total))?)
    }

    /// One decoder layer on the residual stream `x` `(b·s, hidden)`.
    fn layer(&self, x: &Tensor, l: usize, b: usize, s: usize) -> Result<Tensor> {
        let (nh, hd) = (self.cfg.heads, self.cfg.head_dim());
        let p = format!("model.layers.{l}");
        let linear = |x: &Tensor, name: &str| -> Result<Tensor> { Ok(kernels::linear(x, &self.get(name)?)?) };
        let hn = self.norm(x, &format!("{p}.input_layernorm.weight"))?;
        let heads = |name: &str| -> Result<Tensor> {
            Ok(linear(&hn, &format!("{p}.self_attn.{name}.weight"))?.reshape((b, s, nh, hd))?.transpose(1, 2)?)
        };
        let q = self.rotate(&heads("q_proj")?)?;
        let k = self.rotate(&heads("k_proj")?)?;
        let v = heads("v_proj")?.contiguous()?;
        let att = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let att = self.attention_weights(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b * s, nh * hd))?;
        let x1 = (x + linear(&y, &format!("{p}.self_attn.o_proj.weight"))?)?;
        let hn = self.norm(&x1, &format!("{p}.post_attention_layernorm.weight"))?;
        let gate = candle_nn::ops::silu(&linear(&hn, &format!("{p}.mlp.gate_proj.weight"))?)?;
        let up = linear(&hn, &format!("{p}.mlp.up_proj.weight"))?;
        Ok((x1 + linear(&(gate * up)?, &format!("{p}.mlp.down_proj.weight"))?)?)
    }

    /// Freezes the chat-only rows of `lm_head` (see [`TrainModel::frozen_rows`]).
    pub fn freeze_chat_only_rows(&mut self) -> Result<()> {
        let keep: Vec<f32> = (0..self.cfg.vocab).map(|r| if CHAT_ONLY_ROWS.contains(&r) { 0.0 } else { 1.0 }).collect();
        self.frozen_rows = Some(Tensor::from_vec(keep, (self.cfg.vocab, 1), &Device::Cpu)?);
        Ok(())
    }

    /// Writes a complete Hugging Face model directory: bf16 `model.safetensors`, config.json,
    /// generation_config.json and the tokenizer files. `chat` decides the chat format: eos
    /// `[2001, 2004]` and the chat template in tokenizer_config.json; otherwise eos 2001 and no
    /// template (a base or continually pre-trained model).
    pub fn save(&self, dir: &Path, tokenizer_dir: &Path, chat: bool) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut out = HashMap::new();
        for (name, _) in self.cfg.parameters() {
            out.insert(name.clone(), self.get(&name)?.to_dtype(DType::BF16)?);
        }
        candle_core::safetensors::save(&out, dir.join("model.safetensors"))?;
        write_json(&dir.join("config.json"), &self.cfg.hf_config())?;
        let eos = if chat { json!([EOS, EOT]) } else { json!(EOS) };
        write_json(
            &dir.join("generation_config.json"),
            &json!({"bos_token_id": BOS, "eos_token_id": eos, "do_sample": false}),
        )?;
        write_tokenizer(tokenizer_dir, dir, chat)
    }
}

/// Copies the tokenizer files, keeping the chat template only for a chat model.
pub fn write_tokenizer(from: &Path, to: &Path, chat: bool) -> Result<()> {
    for f in ["tokenizer.json", "special_tokens_map.json"] {
        std::fs::copy(from.join(f), to.join(f)).map_err(|e| Error::io(from.join(f), e))?;
    }
    let path = from.join("tokenizer_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut cfg: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| Error::Json { path: path.clone(), line: None, source })?;
    if !chat {
        if let Some(o) = cfg.as_object_mut() {
            o.remove("chat_template");
        }
    }
    write_json(&to.join("tokenizer_config.json"), &cfg)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n").map_err(|e| Error::io(path, e))
}

/// cos/sin `(max_positions, head_dim/2)`, computed as chatvec-gen and transformers do (f32).
fn causal_mask(s: usize) -> Result<Tensor> {
    let m: Vec<f32> = (0..s * s).map(|i| if i % s > i / s { f32::NEG_INFINITY } else { 0.0 }).collect();
    Ok(Tensor::from_vec(m, (s, s), &Device::Cpu)?)
}

fn rope_tables(cfg: &LabConfig) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let inv: Vec<f32> = (0..hd).step_by(2).map(|i| 1.0 / (ROPE_THETA as f32).powf(i as f32 / hd as f32)).collect();
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for pos in 0..cfg.max_positions {
        for &f in &inv {
            let a = pos as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let shape = (cfg.max_positions, hd / 2);
    Ok((Tensor::from_vec(cos, shape, &Device::Cpu)?, Tensor::from_vec(sin, shape, &Device::Cpu)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tiny() -> LabConfig {
        LabConfig { vocab: 2008, hidden: 32, intermediate: 48, layers: 2, heads: 2, max_positions: 64 }
    }

    fn tokenizer_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llama-tiny/tokenizer")
    }

    #[test]
    fn training_forward_matches_chatvec_gen() {
        let cfg = tiny();
        let m = TrainModel::init(cfg, 3).unwrap();
        // Non-trivial norms so their weights matter.
        {
            let data = m.vars.data().lock().unwrap();
            let w = data.get("model.layers.1.input_layernorm.weight").unwrap();
            w.set(&Tensor::arange(0f32, 32., &Device::Cpu).unwrap().affine(0.05, 0.5).unwrap()).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path(), &tokenizer_dir(), true).unwrap();
        // Compare on the bf16 weights both sides actually use.
        let saved = TrainModel::load(cfg, dir.path()).unwrap();
        let ids: Vec<u32> = (0..40u32).map(|i| (i * 37 + 5) % 2000).collect();
        let ours = saved.forward(&Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap();
        let mut gen = chatvec_gen::Model::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
        let theirs = gen.forward_all(&ids).unwrap();
        let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "max |logit difference| {diff}");
    }

    #[test]
    fn fused_and_composed_kernels_give_the_same_loss_and_gradients() {
        let mut m = TrainModel::init(tiny(), 4).unwrap();
        m.freeze_chat_only_rows().unwrap();
        let ids: Vec<u32> = (0..2 * 24u32).map(|i| (i * 53 + 11) % 2008).collect();
        let ids = Tensor::from_vec(ids, (2, 24), &Device::Cpu).unwrap();
        let targets: Vec<u32> = (0..48u32).map(|i| (i * 31 + 7) % 2008).collect();
        let weights: Vec<f32> = (0..48).map(|i| (i % 4 != 0) as u8 as f32).collect();
        let run = |m: &TrainModel| {
            let loss = m.loss(&m.forward(&ids).unwrap(), &targets, &weights).unwrap();
            let grads = loss.backward().unwrap();
            let g: Vec<Vec<f32>> = m
                .all_vars()
                .iter()
                .map(|v| grads.get(v).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .collect();
            (loss.to_scalar::<f32>().unwrap(), g)
        };
        let (fused_loss, fused) = run(&m);
        m.kernels = Kernels::Composed;
        let (composed_loss, composed) = run(&m);
        assert!((fused_loss - composed_loss).abs() < 1e-5, "{fused_loss} vs {composed_loss}");
        for (a, b) in fused.iter().zip(&composed) {
            let scale = b.iter().fold(0f32, |x, y| x.max(y.abs())).max(1e-6);
            let worst = a.iter().zip(b).fold(0f32, |x, (p, q)| x.max((p - q).abs()));
            assert!(worst <= 1e-3 * scale, "gradient differs by {worst} (largest {scale})");
        }
    }

    #[test]
    fn chat_only_rows_start_at_zero() {
        let m = TrainModel::init(tiny(), 1).unwrap();
        let e = m.get("model.embed_tokens.weight").unwrap();
        let norms = e.sqr().unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
        assert!(norms[2000] > 0.0 && norms[2001] > 0.0);
        assert!(CHAT_ONLY_ROWS.clone().all(|r| norms[r] == 0.0));
    }
}
