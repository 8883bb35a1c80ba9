//! Load time, prefill and decode speed of chatvec's decoder on a model directory, with linear
//! weights in a chosen format; or the machine's memory read bandwidth. `benches/gen/run.sh`
//! runs it beside llama.cpp and transformers. `CHATVEC_SIMD=avx2` times the AVX2 kernels on an
//! AVX-512 machine; every record names the CPU and the tier.
//!
//! ```text
//! cargo run --release -p chatvec-gen --example bench_gen -- --model DIR [--quantize q8_0] \
//!     [--prompt 128] [--new 32]
//! cargo run --release -p chatvec-gen --example bench_gen -- --bandwidth
//! ```
//! The last line of output is a JSON record.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use chatvec_gen::sampling::argmax;
use chatvec_gen::{Model, ModelOptions, WeightFormat};
use rayon::prelude::*;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn num(name: &str, default: usize) -> usize {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    chatvec_gen::alloc::reuse_freed_buffers();
    chatvec_format::SimdTier::from_env()?;
    if std::env::args().any(|a| a == "--bandwidth") {
        let cpu = chatvec_format::simd::cpu_line();
        println!("{}", serde_json::json!({"read_gb_per_s": read_bandwidth(), "cpu": cpu}));
        return Ok(());
    }
    let dir = PathBuf::from(arg("--model").ok_or("--model DIR is required")?);
    let weights = WeightFormat::parse(&arg("--quantize").unwrap_or_else(|| "q8_0".into()))?;
    let (prompt_len, new_tokens) = (num("--prompt", 128), num("--new", 32));
    let opts = ModelOptions { weights, check_memory: true, ..ModelOptions::dense(&Device::Cpu, DType::F32) };

    let t0 = Instant::now();
    let mut model = Model::load_with(&dir, &opts)?;
    let load_s = t0.elapsed().as_secs_f64();

    // BOS, then ids spread over the vocabulary (the same ids benches/gen/llama_cpp.mjs feeds).
    let mut prompt = vec![128000u32];
    prompt.extend((0..prompt_len as u32 - 1).map(|k| 1000 + (k * 7919) % 100_000));

    let (t, cpu) = (Instant::now(), cpu_seconds());
    let logits = model.forward_last(&prompt)?.to_vec1::<f32>()?;
    let (prefill_s, prefill_cpu_s) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let mut tokens = vec![argmax(&logits)];
    let (t, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..new_tokens {
        let last = *tokens.last().expect("one token");
        let logits = model.forward_last(&[last])?.to_vec1::<f32>()?;
        tokens.push(argmax(&logits));
    }
    let (decode_s, decode_cpu_s) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let record = serde_json::json!({
        "impl": "chatvec",
        "weights": weights.describe(DType::F32),
        "threads": candle_core::utils::get_num_threads(),
        "cpu": chatvec_format::simd::cpu_line(),
        "prompt_tokens": prompt.len(),
        "new_tokens": new_tokens,
        "load_s": load_s,
        "prefill_tokens_per_s": prompt.len() as f64 / prefill_s,
        "decode_tokens_per_s": new_tokens as f64 / decode_s,
        "prefill_cpu_s": prefill_cpu_s,
        "decode_cpu_s": decode_cpu_s,
        "tokens": &tokens[..new_tokens],
    });
    println!("{record}");
    Ok(())
}

/// CPU seconds (user + system, all threads) this process has used: on a shared machine, work
/// per token compares fairly where wall time depends on what else runs.
fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain old data, filled by getrusage for this process.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Memory read bandwidth in GB/s: the best of five parallel sums over 1 GiB, on the threads
/// rayon uses (RAYON_NUM_THREADS).
fn read_bandwidth() -> f64 {
    let data = vec![1u64; 1 << 27];
    (0..5)
        .map(|_| {
            let t = Instant::now();
            let sum: u64 = data.par_chunks(1 << 16).map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b))).sum();
            assert_eq!(sum, 1 << 27);
            (8u64 << 27) as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}
