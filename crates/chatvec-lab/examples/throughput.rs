//! Trainer throughput against this machine's f32 matmul peak, on 1 and 2 threads, side by side.
//!
//! ```text
//! cargo run --release -p chatvec-lab --example throughput -- [--threads 1,2] [--steps 20]
//!     [--hidden 128 --layers 4 --intermediate 352 --heads 4] [--batch 8 --seq 96]
//! ```
//!
//! For each thread count it starts itself again with `RAYON_NUM_THREADS` set (candle and rayon
//! read it once), and the child prints: the best f32 GFLOP/s of candle's matmul (gemm) on
//! 1024³ and on the trainer's own largest shape, then tokens/s and achieved GFLOP/s of training
//! steps with the fused kernels and with candle's composed ops (the trainer before the fused
//! kernels), alternating so that machine load hits both alike.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use chatvec_lab::model::{Kernels, LabConfig, TrainModel};
use chatvec_lab::train::{english_docs, load_tokenizer, run_stage, token_stream, Source, StageOptions};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.into())
}

fn num(args: &[String], name: &str, default: usize) -> Result<usize> {
    arg(args, name, &default.to_string()).parse().with_context(|| format!("{name} wants a number"))
}

/// Best GFLOP/s of `(m, k) × (k, n)` over `reps` runs.
fn matmul_gflops(m: usize, k: usize, n: usize, reps: usize) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu)?;
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        std::hint::black_box(c);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

fn child(args: &[String]) -> Result<()> {
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_default();
    let cfg = LabConfig {
        hidden: num(args, "--hidden", 128)?,
        layers: num(args, "--layers", 4)?,
        intermediate: num(args, "--intermediate", 352)?,
        heads: num(args, "--heads", 4)?,
        ..LabConfig::default()
    };
    let o = StageOptions {
        steps: num(args, "--steps", 20)?,
        batch: num(args, "--batch", 8)?,
        seq: num(args, "--seq", 96)?,
        lr: 1e-3,
        warmup: 2,
    };
    let peak = matmul_gflops(1024, 1024, 1024, 5)?;
    let lm_head = matmul_gflops(o.batch * o.seq, cfg.hidden, cfg.vocab, 5)?;
    println!(
        "threads {threads}: matmul peak {peak:.1} GFLOP/s (1024³), {lm_head:.1} GFLOP/s ({}×{}×{}, the lm_head)",
        o.batch * o.seq,
        cfg.hidden,
        cfg.vocab
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tok = load_tokenizer(&root.join("fixtures/llama-tiny/tokenizer"))?;
    let text = std::fs::read_to_string(root.join("data/lab/english.txt"))?;
    let source = Source::Stream(token_stream(&tok, &english_docs(&text))?);
    let flops = cfg.train_flops_per_token(o.seq);
    for round in 0..2 {
        for kernels in [Kernels::Composed, Kernels::Fused] {
            let mut model = TrainModel::init(cfg, 0)?;
            model.kernels = kernels;
            let t = Instant::now();
            run_stage(&model, &source, &o, 1, |_| {})?;
            let secs = t.elapsed().as_secs_f64();
            let tokens = (o.steps * o.batch * o.seq) as f64;
            let tps = tokens / secs;
            println!(
                "threads {threads} round {round} {kernels:?}: {:.3} s/step, {tps:.0} tokens/s, {:.1} GFLOP/s ({:.0} % of peak), batch {}×{}, hidden {} × {} layers",
                secs / o.steps as f64,
                tps * flops / 1e9,
                100.0 * tps * flops / 1e9 / peak,
                o.batch,
                o.seq,
                cfg.hidden,
                cfg.layers
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--child") {
        return child(&args);
    }
    let me = std::env::current_exe()?;
    for t in arg(&args, "--threads", "1,2").split(',') {
        let status = std::process::Command::new(&me)
            .args(&args[1..])
            .arg("--child")
            .env("RAYON_NUM_THREADS", t.trim())
            .status()
            .with_context(|| format!("running {}", me.display()))?;
        anyhow::ensure!(status.success(), "the {t}-thread run failed");
    }
    Ok(())
}
