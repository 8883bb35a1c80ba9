//! Prefill and decode speed of chatvec's decoder on a synthetic 1B-shaped Llama (Llama-3.2-1B
//! shapes, random weights) on CPU in f32. `benches/gen/run.sh` runs it beside transformers.
//!
//! ```text
//! cargo run --release -p chatvec-gen --example bench_gen -- [--prompt 128] [--new 32] [--layers 16]
//! ```
//! The last line of output is a JSON record.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use chatvec_gen::models::{config_from_json, WeightSource};
use chatvec_gen::sampling::{argmax, Rng};
use chatvec_gen::Model;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt_len = arg("--prompt", 128);
    let new_tokens = arg("--new", 32);
    let layers = arg("--layers", 16);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": layers,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "vocab_size": 128256, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
        "tie_word_embeddings": true, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    });
    let (arch, cfg) = config_from_json(&config, std::path::Path::new("synthetic"))?;

    let t0 = Instant::now();
    let dev = Device::Cpu;
    let mut weights: HashMap<String, Tensor> = HashMap::new();
    // Uniform noise (std 0.02) from the crate's own generator: Tensor::randn takes most of a
    // minute for 1.2B values.
    let mut rng = Rng::new(0);
    let mut add = |name: String, shape: &[usize], ones: bool| -> candle_core::Result<()> {
        let t = if ones {
            Tensor::ones(shape, DType::F32, &dev)?
        } else {
            let n: usize = shape.iter().product();
            let data: Vec<f32> =
                (0..n).map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.07).collect();
            Tensor::from_vec(data, shape, &dev)?
        };
        weights.insert(name, t);
        Ok(())
    };
    let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    add("model.embed_tokens.weight".into(), &[cfg.vocab_size, h], false)?;
    add("model.norm.weight".into(), &[h], true)?;
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), &[h], true)?;
        add(format!("{p}.post_attention_layernorm.weight"), &[h], true)?;
        add(format!("{p}.self_attn.q_proj.weight"), &[q, h], false)?;
        add(format!("{p}.self_attn.k_proj.weight"), &[kv, h], false)?;
        add(format!("{p}.self_attn.v_proj.weight"), &[kv, h], false)?;
        add(format!("{p}.self_attn.o_proj.weight"), &[h, q], false)?;
        add(format!("{p}.mlp.gate_proj.weight"), &[i, h], false)?;
        add(format!("{p}.mlp.up_proj.weight"), &[i, h], false)?;
        add(format!("{p}.mlp.down_proj.weight"), &[h, i], false)?;
    }
    let params: usize = weights.values().map(|t| t.elem_count()).sum();
    let mut model = Model::from_weights(arch, &cfg, &weights as &dyn WeightSource, &dev, DType::F32)?;
    drop(weights);
    eprintln!("built {:.2}B-parameter model in {:.1} s", params as f64 / 1e9, t0.elapsed().as_secs_f64());

    let prompt: Vec<u32> = (0..prompt_len as u32).map(|k| 1000 + (k * 7919) % 100_000).collect();
    // Warm-up: touches every weight once and sizes the allocator.
    model.forward_last(&prompt[..8])?;
    model.reset();

    let t = Instant::now();
    let logits = model.forward_last(&prompt)?.to_vec1::<f32>()?;
    let prefill_s = t.elapsed().as_secs_f64();
    let mut next = argmax(&logits);
    let t = Instant::now();
    for _ in 0..new_tokens {
        let logits = model.forward_last(&[next])?.to_vec1::<f32>()?;
        next = argmax(&logits);
    }
    let decode_s = t.elapsed().as_secs_f64();
    let record = serde_json::json!({
        "impl": "chatvec",
        "params": params,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "prompt_tokens": prompt_len,
        "new_tokens": new_tokens,
        "prefill_s": prefill_s,
        "prefill_tokens_per_s": prompt_len as f64 / prefill_s,
        "decode_tokens_per_s": new_tokens as f64 / decode_s,
    });
    println!("{record}");
    Ok(())
}
