//! Synthetic Llama-shaped checkpoints with random weights, written with chatvec's own shard
//! writer: benchmark and test inputs of any size without a model hub, in memory that does not
//! grow with the model.

use std::path::Path;

use serde_json::json;

use chatvec_format::dtype::encode;
use chatvec_format::writer::{plan_shards, write_index, write_json, ShardWriter, TensorSpec};
use chatvec_format::{DType, Result};
use chatvec_gen::sampling::Rng;

/// The dimensions of a Llama-architecture model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaShape {
    /// Hidden size.
    pub hidden: usize,
    /// MLP intermediate size.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Whether lm_head is tied to the embedding (then not stored).
    pub tie: bool,
}

impl LlamaShape {
    /// Llama-3.2-1B's shape, untied (about 1.5 B parameters, 3 GB in bf16).
    pub fn llama32_1b() -> Self {
        LlamaShape { hidden: 2048, intermediate: 8192, layers: 16, heads: 32, kv_heads: 8, vocab: 128256, tie: false }
    }

    /// Every tensor's name and shape, in transformers' order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, kv) = (self.hidden, self.intermediate, self.hidden / self.heads * self.kv_heads);
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie {
            out.push(("lm_head.weight".to_string(), vec![self.vocab, h]));
        }
        out
    }

    /// The bos and eos ids: Llama-3's when the vocabulary has them, else its last two ids (stop
    /// ids beyond the vocabulary are refused).
    pub fn special_ids(&self) -> (usize, usize) {
        if self.vocab > 128001 {
            (128000, 128001)
        } else {
            (self.vocab.saturating_sub(2), self.vocab.saturating_sub(1))
        }
    }

    /// A Llama-3-style `config.json`.
    pub fn config(&self, dtype: DType) -> serde_json::Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden / self.heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie,
            // Llama-3's ids where the vocabulary has them; the last two ids of a smaller one.
            "bos_token_id": self.special_ids().0,
            "eos_token_id": self.special_ids().1,
            "torch_dtype": dtype.torch_name(),
        })
    }
}

/// Uniform in [-a, a].
fn uniform(rng: &mut Rng, a: f64) -> f64 {
    (rng.next_f64() * 2.0 - 1.0) * a
}

/// Writes a model of `shape` with random weights (norms near 1, the rest uniform with std 0.02)
/// into the existing directory `dir`.
pub fn write_random_model(dir: &Path, shape: &LlamaShape, dtype: DType, seed: u64, shard_size: u64) -> Result<()> {
    let specs: Vec<TensorSpec> = shape
        .tensors()
        .into_iter()
        .enumerate()
        .map(|(index, (name, shape))| {
            let bytes = shape.iter().product::<usize>() * dtype.size();
            TensorSpec { name, dtype: dtype.safetensors_name().into(), shape, bytes, index }
        })
        .collect();
    let shards = plan_shards(specs, shard_size, "model");
    let mut writer = ShardWriter::start(dir, shards.clone())?;
    let mut rng = Rng::new(seed);
    let block = 1 << 20;
    let mut vals = vec![0f64; block];
    for t in shards.iter().flat_map(|s| &s.tensors) {
        let is_norm = t.shape.len() == 1;
        let numel: usize = t.shape.iter().product();
        let mut done = 0;
        while done < numel {
            let n = block.min(numel - done);
            for v in &mut vals[..n] {
                // Uniform on [-a, a] has std a/√3; 0.0346 gives std 0.02.
                *v = if is_norm { 1.0 + uniform(&mut rng, 0.1) } else { uniform(&mut rng, 0.0346) };
            }
            let mut buf = writer.buffer(n * dtype.size());
            encode(dtype, &vals[..n], &mut buf);
            writer.push(buf)?;
            done += n;
        }
    }
    writer.finish()?;
    write_index(dir, &shards, "model")?;
    write_json(&dir.join("config.json"), &shape.config(dtype))?;
    let (bos, eos) = shape.special_ids();
    write_json(&dir.join("generation_config.json"), &json!({"bos_token_id": bos, "eos_token_id": eos}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatvec_format::Checkpoint;

    #[test]
    fn synthetic_model_opens_with_the_expected_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let shape =
            LlamaShape { hidden: 32, intermediate: 64, layers: 2, heads: 4, kv_heads: 2, vocab: 100, tie: false };
        write_random_model(dir.path(), &shape, DType::BF16, 7, 20_000).unwrap();
        let c = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(c.tensors().len(), 2 * 9 + 3);
        assert_eq!(c.get("model.layers.1.self_attn.k_proj.weight").unwrap().shape, vec![16, 32]);
        assert!(dir.path().join("model.safetensors.index.json").is_file());
        assert_eq!(c.config.vocab_size(), Some(100));
    }
}
