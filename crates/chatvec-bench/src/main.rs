//! `chatvec-bench merge`: builds synthetic Llama-3.2-1B-shaped bf16 triples (and a doubled one)
//! with chatvec's own writer, then measures in the same run the disk floor (read the three
//! inputs once, write one output of the same size) and `chatvec merge`'s wall time and peak RSS.
//!
//! `chatvec-bench export`: the same 1B shape exported to GGUF by `chatvec export gguf` and by
//! llama.cpp's convert_hf_to_gguf.py, against the disk floor (read the model once, write a file
//! of the GGUF's size), wall time and peak RSS of each, in one run.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use chatvec_core::synth::{write_random_model, LlamaShape};
use chatvec_core::DType;
use clap::Parser;

/// Benchmarks for chatvec.
#[derive(Parser)]
enum Bench {
    /// Merge speed and memory against the disk floor, at 1× and 2× the Llama-3.2-1B shape.
    Merge {
        /// Where to put the synthetic models (needs ~45 GB for both scales).
        #[arg(long, default_value = "target/bench-models")]
        dir: PathBuf,
        /// Layer multipliers of the 1B shape to run (1 = 16 layers, 2 = 32 layers).
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        scales: Vec<usize>,
        /// The chatvec binary to time.
        #[arg(long, default_value = "target/release/chatvec")]
        chatvec: PathBuf,
        /// Delete the synthetic models afterwards.
        #[arg(long)]
        clean: bool,
        /// Also time the notebook approach (benches/merge/notebook.py; needs python3 with torch
        /// and transformers, and about 3× a model's size in RAM).
        #[arg(long)]
        notebook: bool,
    },
    /// GGUF export speed and memory against the disk floor and llama.cpp's converter (1B shape).
    Export {
        /// Where to put the synthetic model (shared with `merge`; ~3 GB plus the outputs).
        #[arg(long, default_value = "target/bench-models")]
        dir: PathBuf,
        /// GGUF types to time (the converter writes f32, f16, bf16, q8_0).
        #[arg(long, value_delimiter = ',', default_value = "f16,q8_0")]
        types: Vec<String>,
        /// The chatvec binary to time.
        #[arg(long, default_value = "target/release/chatvec")]
        chatvec: PathBuf,
        /// A llama.cpp checkout (clone node-llama-cpp's llama/gitRelease.bundle) for the converter.
        #[arg(long)]
        llama_cpp: PathBuf,
        /// Python with the converter's requirements (torch, transformers, numpy, sentencepiece);
        /// default $CHATVEC_PYTHON, else python3.
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Writes one synthetic bf16 Llama with random weights (input of benches/gen/run.sh).
    Synth {
        /// Output directory (created).
        #[arg(long)]
        out: PathBuf,
        /// 1b: Llama-3.2-1B (tied embeddings, 1.24 B parameters); 8b: Llama-3-8B (8.03 B).
        #[arg(long, default_value = "1b")]
        shape: String,
    },
}

fn main() -> Result<()> {
    match Bench::parse() {
        Bench::Merge { dir, scales, chatvec, clean, notebook } => bench_merge(&dir, &scales, &chatvec, clean, notebook),
        Bench::Export { dir, types, chatvec, llama_cpp, python } => {
            let python = python.or_else(|| std::env::var_os("CHATVEC_PYTHON").map(PathBuf::from));
            bench_export(&dir, &types, &chatvec, &llama_cpp, &python.unwrap_or_else(|| "python3".into()))
        }
        Bench::Synth { out, shape } => {
            let shape = match shape.as_str() {
                "1b" => LlamaShape { tie: true, ..LlamaShape::llama32_1b() },
                "8b" => LlamaShape {
                    hidden: 4096,
                    intermediate: 14336,
                    layers: 32,
                    heads: 32,
                    kv_heads: 8,
                    vocab: 128256,
                    tie: false,
                },
                other => bail!("--shape {other}: expected 1b or 8b"),
            };
            std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
            Ok(write_random_model(&out, &shape, DType::BF16, 0, 5_000_000_000)?)
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// Flushes dirty pages and drops the page cache (root only), so every measurement reads from disk.
fn drop_caches() -> bool {
    // SAFETY: sync() has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Runs `cmd`, returning (wall seconds, peak RSS bytes) from wait4's rusage.
fn timed(cmd: &mut Command) -> Result<(f64, u64)> {
    let start = Instant::now();
    let child = cmd.spawn().context("spawn")?;
    let mut status = 0;
    // SAFETY: rusage is plain old data, filled by wait4 for the child we just spawned.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = start.elapsed().as_secs_f64();
    if pid < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (status {status})");
    }
    Ok((wall, usage.ru_maxrss as u64 * 1024))
}

/// The disk floor: every weight file of the three inputs read once, one thread per model so the
/// disk has as many reads in flight as the merge gives it, and a file as large as the target's
/// weights written (its bytes copied) with 16 MiB sequential I/O, then synced.
fn disk_floor(models: &[PathBuf; 3], out: &Path) -> Result<f64> {
    std::fs::create_dir_all(out)?;
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let sink = if i == 0 { Some(out.join("floor.bin")) } else { None };
                scope.spawn(move || read_model(m, sink.as_deref()))
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(start.elapsed().as_secs_f64())
}

/// Reads every safetensors file of `model` once; copies the bytes to `sink` when given.
fn read_model(model: &Path, sink: Option<&Path>) -> Result<()> {
    let mut buf = vec![0u8; 16 << 20];
    let mut out = sink.map(File::create).transpose()?;
    let mut files: Vec<_> = std::fs::read_dir(model)?.flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "safetensors")) {
        let mut r = File::open(f)?;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if let Some(o) = out.as_mut() {
                o.write_all(&buf[..n])?;
            }
        }
    }
    if let Some(o) = out {
        o.sync_all()?;
    }
    Ok(())
}

fn bench_merge(dir: &Path, scales: &[usize], chatvec: &Path, clean: bool, notebook: bool) -> Result<()> {
    if !chatvec.is_file() {
        bail!("{}: build it first with `cargo build --release -p chatvec`", chatvec.display());
    }
    let mut rows = vec![];
    for &scale in scales {
        let mut shape = LlamaShape::llama32_1b();
        shape.layers *= scale;
        let root = dir.join(format!("x{scale}"));
        let models = [root.join("target"), root.join("base"), root.join("chat")];
        for (i, m) in models.iter().enumerate() {
            if !m.join("config.json").is_file() {
                eprintln!("writing synthetic {} ({} layers)...", m.display(), shape.layers);
                std::fs::create_dir_all(m)?;
                write_random_model(m, &shape, DType::BF16, 100 * scale as u64 + i as u64, 5_000_000_000)?;
            }
        }
        let model_bytes = dir_bytes(&models[0]);
        let floor_dir = root.join("floor");
        let cache_dropped = drop_caches();
        let floor = disk_floor(&models, &floor_dir)?;
        std::fs::remove_dir_all(&floor_dir)?;
        let out = root.join("merged");
        let _ = std::fs::remove_dir_all(&out);
        drop_caches();
        let (wall, rss) = timed(
            Command::new(chatvec)
                .args(["merge", "--quiet", "--target"])
                .arg(&models[0])
                .arg("--base")
                .arg(&models[1])
                .arg("--chat")
                .arg(&models[2])
                .arg("-o")
                .arg(&out)
                .stderr(std::process::Stdio::null()),
        )?;
        // Count the merge's final sync like the floor's: data on disk, not only in the page cache.
        let s = Instant::now();
        drop_caches();
        let wall = wall + s.elapsed().as_secs_f64();
        std::fs::remove_dir_all(&out)?;
        let nb = if notebook {
            let nb_out = root.join("notebook");
            drop_caches();
            let r = timed(
                Command::new("python3")
                    .arg("benches/merge/notebook.py")
                    .arg(&models[1])
                    .arg(&models[2])
                    .arg(&models[0])
                    .arg(&nb_out)
                    .stderr(std::process::Stdio::null()),
            )?;
            let _ = std::fs::remove_dir_all(&nb_out);
            Some(r)
        } else {
            None
        };
        rows.push((scale, shape.layers, model_bytes, floor, wall, rss, cache_dropped, nb));
    }
    println!(
        "| shape | model size | disk floor | chatvec merge | merge / floor | peak RSS | throughput (4 × size / wall) | notebook wall | notebook RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (scale, layers, bytes, floor, wall, rss, dropped, nb) in &rows {
        let (nb_wall, nb_rss) = match nb {
            Some((w, r)) => (format!("{w:.1} s"), format!("{:.1} GiB", *r as f64 / (1u64 << 30) as f64)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| 1B ×{scale} ({layers} layers){} | {:.2} GB | {floor:.1} s | {wall:.1} s | {:.2}× | {:.0} MiB | {:.2} GB/s | {nb_wall} | {nb_rss} |",
            if *dropped { "" } else { " (page cache warm)" },
            *bytes as f64 / 1e9,
            wall / floor,
            *rss as f64 / 1048576.0,
            4.0 * *bytes as f64 / 1e9 / wall,
        );
    }
    if clean {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}

/// The synthetic 1B model with the tiny Llama-3 tokenizer's files (the vocabulary is padded to
/// 128256 by both exporters), so the converter can run on it.
fn export_model(dir: &Path) -> Result<PathBuf> {
    let model = dir.join("x1/target");
    if !model.join("config.json").is_file() {
        eprintln!("writing synthetic {}...", model.display());
        std::fs::create_dir_all(&model)?;
        write_random_model(&model, &LlamaShape::llama32_1b(), DType::BF16, 100, 5_000_000_000)?;
    }
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(Path::new("fixtures/llama-tiny/tokenizer").join(f), model.join(f)).context(f)?;
    }
    Ok(model)
}

/// The floor for an export: the model's weights read once and `out_bytes` written, synced.
fn export_floor(model: &Path, out: &Path, out_bytes: u64) -> Result<f64> {
    let start = Instant::now();
    read_model(model, None)?;
    let mut f = File::create(out)?;
    let buf = vec![0u8; 16 << 20];
    let mut left = out_bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(start.elapsed().as_secs_f64())
}

fn bench_export(dir: &Path, types: &[String], chatvec: &Path, llama_cpp: &Path, python: &Path) -> Result<()> {
    if !chatvec.is_file() {
        bail!("{}: build it first with `cargo build --release -p chatvec`", chatvec.display());
    }
    let model = export_model(dir)?;
    let model_bytes = dir_bytes(&model);
    let mut rows = vec![];
    for t in types {
        let out = dir.join(format!("export-{t}.gguf"));
        let _ = std::fs::remove_file(&out);
        drop_caches();
        let run = |cmd: &mut Command| -> Result<(f64, u64, u64)> {
            let (wall, rss) = timed(cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()))?;
            let s = Instant::now();
            let dropped = drop_caches();
            let bytes = std::fs::metadata(&out)?.len();
            std::fs::remove_file(&out)?;
            Ok((wall + if dropped { s.elapsed().as_secs_f64() } else { 0.0 }, rss, bytes))
        };
        let ours = run(Command::new(chatvec)
            .args(["export", "gguf", "-q", "--type", t, "--model"])
            .arg(&model)
            .arg("-o")
            .arg(&out))?;
        drop_caches();
        let floor = export_floor(&model, &out, ours.2)?;
        std::fs::remove_file(&out)?;
        drop_caches();
        let theirs = run(Command::new(python)
            .arg("scripts/gguf/convert_oracle.py")
            .arg(llama_cpp)
            .arg(&model)
            .args(["--outtype", t, "--outfile"])
            .arg(&out)
            .env("CHATVEC_GGUF_PRE", "gpt-2"))?;
        rows.push((t.clone(), ours, floor, theirs));
    }
    println!(
        "1B shape (Llama-3.2-1B, bf16, {:.2} GB of weights), page cache dropped before each run:",
        model_bytes as f64 / 1e9
    );
    println!("| type | GGUF size | disk floor | chatvec export | / floor | chatvec peak RSS | convert_hf_to_gguf.py | / floor | converter peak RSS |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mib = |b: u64| b as f64 / 1048576.0;
    for (t, ours, floor, theirs) in rows {
        println!(
            "| {t} | {:.2} GB | {floor:.1} s | {:.1} s | {:.2}× | {:.0} MiB | {:.1} s | {:.2}× | {:.0} MiB |",
            ours.2 as f64 / 1e9,
            ours.0,
            ours.0 / floor,
            mib(ours.1),
            theirs.0,
            theirs.0 / floor,
            mib(theirs.1)
        );
    }
    Ok(())
}
