//! One base pre-training with a given shape, data mix and schedule, watching the copy probe:
//! the experiment behind the lab's base recipe (does the base learn to copy, and when?).
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release -p chatvec-lab --example base_sweep -- \
//!     [--echo 25 --min-words 2 --max-words 8] [--steps 700 --lr 3e-3 --warmup 30 --batch 8 --seq 96]
//!     [--hidden 128 --layers 4 --intermediate 352 --heads 4] [--seed 0 --probe-every 250]
//!     [--save DIR | --probe-only DIR]
//! ```
//!
//! `--probe-only DIR` measures a saved model of that shape instead of training one.
//!
//! The corpus is generated in memory with the given [`CopyMix`] (800 kB, the lab's English
//! seed), the probe is [`CopyProbe`] on 64 lists; every probe prints the loss on the first list,
//! on its repeat, and the share of repeats predicted exactly.

use anyhow::{Context, Result};
use chatvec_lab::data::{english_corpus, english_words, CopyMix, ENGLISH_SEED};
use chatvec_lab::model::{LabConfig, TrainModel};
use chatvec_lab::train::{
    english_docs, load_tokenizer, run_stage_probed, token_stream, CopyProbe, Source, StageOptions, COPY_PROBE_SEED,
};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.into())
}

fn num<T: std::str::FromStr + std::fmt::Display>(args: &[String], name: &str, default: T) -> Result<T> {
    arg(args, name, &default.to_string()).parse().ok().with_context(|| format!("{name} wants a number"))
}

fn main() -> Result<()> {
    chatvec_lab::train::keep_freed_buffers();
    let args: Vec<String> = std::env::args().collect();
    let mix = CopyMix {
        echoed_percent: num(&args, "--echo", 25)?,
        min_words: num(&args, "--min-words", 2)?,
        max_words: num(&args, "--max-words", 8)?,
    };
    let cfg = LabConfig {
        hidden: num(&args, "--hidden", 128)?,
        layers: num(&args, "--layers", 4)?,
        intermediate: num(&args, "--intermediate", 352)?,
        heads: num(&args, "--heads", 4)?,
        ..LabConfig::default()
    };
    let o = StageOptions {
        steps: num(&args, "--steps", 700)?,
        batch: num(&args, "--batch", 8)?,
        seq: num(&args, "--seq", 96)?,
        lr: num(&args, "--lr", 3e-3)?,
        warmup: num(&args, "--warmup", 30)?,
    };
    let seed: u64 = num(&args, "--seed", 0)?;
    println!("{mix:?} {cfg:?} {o:?} seed {seed}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tok = load_tokenizer(&root.join("fixtures/llama-tiny/tokenizer"))?;
    let text = english_corpus(ENGLISH_SEED, 800_000, &mix);
    let source = Source::Stream(token_stream(&tok, &english_docs(&text))?);
    let probe = CopyProbe::new(&tok, &english_words(), 64, COPY_PROBE_SEED)?;
    if let Some(dir) = args.iter().position(|a| a == "--probe-only").and_then(|i| args.get(i + 1)) {
        // Measure a saved model (its shape given by --hidden etc.) instead of training one.
        let model = TrainModel::load(cfg, std::path::Path::new(dir))?;
        println!("{dir}: {}", probe.measure(&model, 0)?);
        return Ok(());
    }
    let mut model = TrainModel::init(cfg, seed)?;
    model.freeze_chat_only_rows()?;
    let every = num(&args, "--probe-every", 250)?;
    run_stage_probed(&model, &source, &o, seed * 3 + 1, Some((&probe, every)), |l| println!("{l}"))?;
    if let Some(dir) = args.iter().position(|a| a == "--save").and_then(|i| args.get(i + 1)) {
        model.save(std::path::Path::new(dir), &root.join("fixtures/llama-tiny/tokenizer"), false)?;
    }
    Ok(())
}
