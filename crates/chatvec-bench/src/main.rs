//! `chatvec-bench merge`: builds synthetic Llama-3.2-1B-shaped bf16 triples with chatvec's own
//! writer, then measures in one run, with the page cache dropped (cold) and with the inputs in it
//! (warm): the disk floor (read the three inputs once, write one output of the same size), the
//! write-only floor, `chatvec merge`, and optionally mergekit and the notebook approach, each with
//! its peak RSS; then a merge at several ratios in one pass against as many separate merges, and
//! `extract` and `inspect`. Every measurement includes a final `sync`.//!
//! `chatvec-bench export`: the same 1B shape exported to GGUF by `chatvec export gguf` and by
//! llama.cpp's convert_hf_to_gguf.py, against the disk floor (read the model once, write a file
//! of the GGUF's size), wall time and peak RSS of each, in one run.
//!
//! `chatvec-bench load`: a model's load time to the first token against a cold read of its
//! weights, pair by pair.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use chatvec_bench::synth::{write_random_model, LlamaShape};
use chatvec_format::writer::{plan_shards, ChunkedWrite, Shard, ShardWriter, TensorSpec};
use chatvec_format::DType;
use clap::Parser;

/// Benchmarks for chatvec.
#[derive(Parser)]
enum Bench {
    /// Merge speed and memory against the disk floors and the peers, cold and warm.
    Merge(MergeBench),
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
    /// Load time to the first token against a cold read of the same weights, in pairs: each
    /// drops the page cache (root only), reads every safetensors shard once, drops it again and
    /// times `chatvec generate --greedy --max-new-tokens 1` (load, a one-word prompt, one token).
    Load {
        /// The model directory (its safetensors shards are what is read).
        #[arg(long)]
        model: PathBuf,
        /// How many (cold read, cold load) pairs.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        pairs: u32,
        /// The chatvec binary to time.
        #[arg(long, default_value = "target/release/chatvec")]
        chatvec: PathBuf,
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

/// What `chatvec-bench merge` runs.
#[derive(clap::Args)]
struct MergeBench {
    /// Where to put the synthetic models (3 models + outputs: ~21 GB at scale 1).
    #[arg(long, default_value = "target/bench-models")]
    dir: PathBuf,
    /// Layer multipliers of the 1B shape to run (1 = 16 layers, 4 = 64 layers).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    scales: Vec<usize>,
    /// The chatvec binary to time.
    #[arg(long, default_value = "target/release/chatvec")]
    chatvec: PathBuf,
    /// Another chatvec binary (e.g. built before a change), timed the same way.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Also time mergekit: its `mergekit-yaml` (a `linear` recipe T:1, C:1, B:−1, normalize: false,
    /// bf16; no tokenizer copied, as the synthetic models have none).
    #[arg(long, value_name = "MERGEKIT_YAML")]
    mergekit: Option<PathBuf>,
    /// Also time the notebook approach (benches/merge/notebook.py) with this Python (torch and
    /// transformers; about 3× a model's size in RAM).
    #[arg(long, value_name = "PYTHON")]
    notebook: Option<PathBuf>,
    /// Ratios of the one-pass merge, timed against as many separate merges.
    #[arg(long, value_delimiter = ',', default_value = "0.3,0.5,0.7,1.0")]
    ratios: Vec<f64>,
    /// Measure everything this many times, interleaved, and report each figure's median (the
    /// machine's page-cache writes vary by 2× from one minute to the next).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Cold cache only (for inputs larger than the RAM, which cannot be warm).
    #[arg(long)]
    cold_only: bool,
    /// Delete the synthetic models afterwards.
    #[arg(long)]
    clean: bool,
    /// Write the synthetic models and stop.
    #[arg(long)]
    prepare_only: bool,
}

fn main() -> Result<()> {
    let bench = Bench::parse();
    // The chatvec binaries timed inherit CHATVEC_SIMD (`CHATVEC_SIMD=avx2` times the AVX2 kernels
    // on an AVX-512 machine); the line names the CPU and the tier they run at.
    chatvec_format::SimdTier::from_env()?;
    if !matches!(bench, Bench::Synth { .. }) {
        println!("CPU: {}", chatvec_format::simd::cpu_line());
    }
    match bench {
        Bench::Merge(b) => b.run(),
        Bench::Export { dir, types, chatvec, llama_cpp, python } => {
            let python = python.or_else(|| std::env::var_os("CHATVEC_PYTHON").map(PathBuf::from));
            bench_export(&dir, &types, &chatvec, &llama_cpp, &python.unwrap_or_else(|| "python3".into()))
        }
        Bench::Load { model, pairs, chatvec } => bench_load(&model, pairs, &chatvec),
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

/// Runs `cmd`, returning (wall seconds including a final sync, peak RSS bytes) from wait4's rusage.
fn timed(cmd: &mut Command) -> Result<(f64, u64)> {
    let start = Instant::now();
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let mut status = 0;
    // SAFETY: rusage is plain old data, filled by wait4 for the child we just spawned.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    // SAFETY: sync() has no preconditions.
    unsafe { libc::sync() };
    let wall = start.elapsed().as_secs_f64();
    if pid < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (status {status})");
    }
    Ok((wall, usage.ru_maxrss as u64 * 1024))
}

/// `chatvec-bench load`: prints, pair by pair, the cold read of `model`'s shards, the cold load
/// to the first token, their ratio and the load's peak RSS.
fn bench_load(model: &Path, pairs: u32, chatvec: &Path) -> Result<()> {
    if !model.join("config.json").is_file() {
        bail!("--model {}: no config.json there", model.display());
    }
    if !chatvec.is_file() {
        bail!("--chatvec {}: not found (cargo build --release -p chatvec)", chatvec.display());
    }
    for pair in 1..=pairs {
        if !drop_caches() {
            bail!("cannot drop the page cache (needs root): cold figures would be warm");
        }
        let start = Instant::now();
        read_model(model, None)?;
        let read = start.elapsed().as_secs_f64();
        drop_caches();
        let mut generate = Command::new(chatvec);
        generate.arg("generate").arg("--model").arg(model);
        generate.args(["--greedy", "--max-new-tokens", "1", "--json", "--no-memory-check", "--prompt", "hello"]);
        let (load, rss) = timed(&mut generate)?;
        let gib = rss as f64 / (1u64 << 30) as f64;
        println!(
            "pair {pair}: cold read {read:.1} s, load to first token {load:.1} s, {:.2}x, peak RSS {gib:.1} GiB",
            load / read
        );
    }
    Ok(())
}

/// The disk floor: every weight file of the three inputs read once, one thread per model so the
/// disk has as many reads in flight as the merge gives it, and a file as large as the target's
/// weights written (its bytes copied), as [`read_model`] does.
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

/// Reads every safetensors file of `model` once, asking the kernel for the next 32 MiB ahead
/// of each read (as the merge does); copies the bytes into one shard in `sink` when given, with
/// core's [`ShardWriter`] (the merge's write calls, writeback and sync).
fn read_model(model: &Path, sink: Option<&Path>) -> Result<()> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 16 << 20];
    let mut files: Vec<_> = std::fs::read_dir(model)?.flatten().map(|e| e.path()).collect();
    files.retain(|f| f.extension().is_some_and(|e| e == "safetensors"));
    files.sort();
    let total: u64 = files.iter().map(|f| f.metadata().map(|m| m.len()).unwrap_or(0)).sum();
    let mut out = match sink {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Some(ShardWriter::start(dir, vec![one_tensor_shard(total)])?)
        }
        None => None,
    };
    for f in &files {
        let mut r = File::open(f)?;
        let mut at = 0i64;
        loop {
            // SAFETY: posix_fadvise only reads its arguments.
            unsafe {
                libc::posix_fadvise(
                    r.as_raw_fd(),
                    at + buf.len() as i64,
                    2 * buf.len() as i64,
                    libc::POSIX_FADV_WILLNEED,
                )
            };
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            at += n as i64;
            if let Some(o) = out.as_mut() {
                o.push(buf[..n].to_vec())?;
            }
        }
    }
    if let Some(o) = out {
        o.finish()?;
    }
    Ok(())
}

/// A layout of one shard holding one U8 tensor of `bytes` bytes.
fn one_tensor_shard(bytes: u64) -> Shard {
    let spec = TensorSpec {
        name: "floor".into(),
        dtype: "U8".into(),
        shape: vec![bytes as usize],
        bytes: bytes as usize,
        index: 0,
    };
    plan_shards(vec![spec], u64::MAX, "floor").remove(0)
}

/// The write-only floor: `bytes` from memory into one shard with core's [`ShardWriter`] (the
/// merge's write calls, writeback and sync), in 16 MiB blocks, nothing computed or read.
fn write_floor(bytes: u64, out: &Path) -> Result<f64> {
    std::fs::create_dir_all(out)?;
    let shards = vec![one_tensor_shard(bytes)];
    let start = Instant::now();
    let mut writer = ShardWriter::start(out, shards)?;
    let mut left = bytes as usize;
    while left > 0 {
        let n = left.min(16 << 20);
        writer.push(writer.buffer(n))?;
        left -= n;
    }
    writer.finish()?;
    let t = start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(out)?;
    Ok(t)
}

/// Page-cache state before a measurement.
#[derive(Clone, Copy, PartialEq)]
enum Cache {
    /// Dropped: every input is read from disk.
    Cold,
    /// The three inputs read beforehand.
    Warm,
}

/// One line of the table: wall seconds (cold, warm) and peak RSS.
struct Row {
    name: String,
    cold: Option<f64>,
    warm: Option<f64>,
    rss: Option<u64>,
}

/// The three synthetic models of one scale and where outputs go.
struct Triple {
    root: PathBuf,
    target: PathBuf,
    base: PathBuf,
    chat: PathBuf,
}

impl Triple {
    fn prepare(dir: &Path, scale: usize) -> Result<Self> {
        let mut shape = LlamaShape::llama32_1b();
        shape.layers *= scale;
        let root = dir.join(format!("x{scale}"));
        let t = Triple { target: root.join("target"), base: root.join("base"), chat: root.join("chat"), root };
        for (i, m) in [&t.target, &t.base, &t.chat].into_iter().enumerate() {
            if !m.join("config.json").is_file() {
                eprintln!("writing synthetic {} ({} layers)...", m.display(), shape.layers);
                std::fs::create_dir_all(m)?;
                write_random_model(m, &shape, DType::BF16, 100 * scale as u64 + i as u64, 5_000_000_000)?;
            }
        }
        Ok(t)
    }

    fn models(&self) -> [PathBuf; 3] {
        [self.target.clone(), self.base.clone(), self.chat.clone()]
    }

    /// Brings the page cache to `cache`.
    fn set_cache(&self, cache: Cache) -> Result<()> {
        match cache {
            Cache::Cold => {
                if !drop_caches() {
                    bail!("cannot drop the page cache (needs root): cold figures would be warm");
                }
            }
            Cache::Warm => {
                for m in self.models() {
                    read_model(&m, None)?;
                }
            }
        }
        Ok(())
    }

    /// `chatvec merge` arguments for these models.
    fn merge_args(&self, bin: &Path, out: &Path, ratios: &str) -> Command {
        let mut c = Command::new(bin);
        c.args(["merge", "--quiet", "--force", "--ratio", ratios, "--target"])
            .arg(&self.target)
            .arg("--base")
            .arg(&self.base)
            .arg("--chat")
            .arg(&self.chat)
            .arg("-o")
            .arg(out);
        c
    }

    fn mergekit_recipe(&self) -> Result<PathBuf> {
        let path = self.root.join("mergekit-linear.yml");
        let model = |p: &Path, w: i32| format!("  - model: {}\n    parameters:\n      weight: {w}\n", p.display());
        let yaml = format!(
            "merge_method: linear\nparameters:\n  normalize: false\ndtype: bfloat16\nmodels:\n{}{}{}",
            model(&self.target, 1),
            model(&self.chat, 1),
            model(&self.base, -1)
        );
        std::fs::write(&path, yaml)?;
        Ok(path)
    }
}

/// Times `make()`'s command cold and warm (or cold only), removing `out` after each.
fn cold_and_warm(t: &Triple, out: &Path, warm: bool, make: &dyn Fn() -> Result<Command>) -> Result<Row> {
    let mut row = Row { name: String::new(), cold: None, warm: None, rss: None };
    let caches: &[Cache] = if warm { &[Cache::Cold, Cache::Warm] } else { &[Cache::Cold] };
    for &cache in caches {
        t.set_cache(cache)?;
        let (wall, rss) = timed(&mut make()?)?;
        let _ = std::fs::remove_dir_all(out);
        if cache == Cache::Cold {
            row.cold = Some(wall);
        } else {
            row.warm = Some(wall);
        }
        row.rss = Some(row.rss.unwrap_or(0).max(rss));
    }
    Ok(row)
}

impl MergeBench {
    fn run(&self) -> Result<()> {
        for bin in std::iter::once(&self.chatvec).chain(&self.baseline) {
            if !bin.is_file() {
                bail!("{}: build it first with `cargo build --release -p chatvec`", bin.display());
            }
        }
        for &scale in &self.scales {
            let t = Triple::prepare(&self.dir, scale)?;
            if self.prepare_only {
                continue;
            }
            let rounds = (0..self.rounds.max(1)).map(|_| self.measure(&t)).collect::<Result<Vec<_>>>()?;
            let rows = median_rows(rounds);
            let layers = LlamaShape::llama32_1b().layers * scale;
            print_table(
                &format!(
                    "1B ×{scale} ({layers} layers), {:.2} GB per model, median of {} round(s)",
                    dir_bytes(&t.target) as f64 / 1e9,
                    self.rounds.max(1)
                ),
                &rows,
            );
        }
        if self.clean {
            std::fs::remove_dir_all(&self.dir)?;
        }
        Ok(())
    }

    fn measure(&self, t: &Triple) -> Result<Vec<Row>> {
        let warm = !self.cold_only;
        let out = t.root.join("out");
        let mut rows = vec![];
        let floor_out = t.root.join("floor");
        t.set_cache(Cache::Cold)?;
        let floor = disk_floor(&t.models(), &floor_out)?;
        std::fs::remove_dir_all(&floor_out)?;
        let write = write_floor(dir_bytes(&t.target), &t.root.join("write-floor"))?;
        rows.push(Row {
            name: "disk floor: read 3 inputs + write 1 output (cold) / write only (warm)".into(),
            cold: Some(floor),
            warm: Some(write),
            rss: None,
        });
        let one = |bin: &Path, name: &str| -> Result<Row> {
            let row = cold_and_warm(t, &out, warm, &|| Ok(t.merge_args(bin, &out, "1")))?;
            Ok(Row { name: name.into(), ..row })
        };
        rows.push(one(&self.chatvec, "chatvec merge")?);
        if let Some(b) = &self.baseline {
            rows.push(one(b, "chatvec merge, baseline binary")?);
        }
        if let Some(mk) = &self.mergekit {
            let recipe = t.mergekit_recipe()?;
            let row = cold_and_warm(t, &out, warm, &|| {
                let mut c = Command::new(mk);
                c.arg(&recipe).arg(&out).args(["--quiet", "--no-cuda", "--no-copy-tokenizer"]);
                Ok(c)
            })?;
            rows.push(Row { name: "mergekit 0.1.5 linear".into(), ..row });
        }
        if let Some(py) = &self.notebook {
            let row = cold_and_warm(t, &out, warm, &|| {
                let mut c = Command::new(py);
                c.arg("benches/merge/notebook.py").arg(&t.base).arg(&t.chat).arg(&t.target).arg(&out);
                Ok(c)
            })?;
            rows.push(Row { name: "notebook approach (transformers)".into(), ..row });
        }
        rows.extend(self.ratio_rows(t)?);
        if warm {
            rows.extend(self.extract_inspect_rows(t)?);
        }
        Ok(rows)
    }

    /// One pass at every ratio against one merge per ratio, cold and warm. Every output is kept
    /// until all are written, as a user keeps them. Cold drops the page cache before each merge:
    /// what happens when the three inputs do not fit in the RAM, as with an 8B triple on a
    /// 32 GB machine.
    fn ratio_rows(&self, t: &Triple) -> Result<Vec<Row>> {
        let n = self.ratios.len();
        let list = self.ratios.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",");
        let template = t.root.join("sweep-{ratio}");
        let outs: Vec<PathBuf> = self.ratios.iter().map(|r| t.root.join(format!("sweep-{r}"))).collect();
        let remove = || outs.iter().for_each(|o| _ = std::fs::remove_dir_all(o));
        let mut one_pass = Row {
            name: format!("chatvec merge --ratio {list} (one pass, {n} outputs)"),
            cold: None,
            warm: None,
            rss: None,
        };
        let mut separate = Row { name: format!("{n} separate chatvec merges"), cold: None, warm: None, rss: None };
        let caches: &[Cache] = if self.cold_only { &[Cache::Cold] } else { &[Cache::Cold, Cache::Warm] };
        for &cache in caches {
            t.set_cache(cache)?;
            let (wall, rss) = timed(&mut t.merge_args(&self.chatvec, &template, &list))?;
            remove();
            let mut total = 0.0;
            for (r, o) in self.ratios.iter().zip(&outs) {
                t.set_cache(cache)?;
                total += timed(&mut t.merge_args(&self.chatvec, o, &r.to_string()))?.0;
            }
            remove();
            let (a, b) = match cache {
                Cache::Cold => (&mut one_pass.cold, &mut separate.cold),
                Cache::Warm => (&mut one_pass.warm, &mut separate.warm),
            };
            (*a, *b) = (Some(wall), Some(total));
            one_pass.rss = Some(one_pass.rss.unwrap_or(0).max(rss));
        }
        Ok(vec![one_pass, separate])
    }

    /// `extract` (to bf16, like the merge's output) and `inspect`, warm, for each binary.
    fn extract_inspect_rows(&self, t: &Triple) -> Result<Vec<Row>> {
        let mut rows = vec![];
        let out = t.root.join("vector");
        for (bin, label) in
            std::iter::once((&self.chatvec, "")).chain(self.baseline.iter().map(|b| (b, ", baseline binary")))
        {
            t.set_cache(Cache::Warm)?;
            let mut c = Command::new(bin);
            c.args(["extract", "--quiet", "--force", "--dtype", "bf16", "--base"])
                .arg(&t.base)
                .arg("--chat")
                .arg(&t.chat)
                .arg("-o")
                .arg(&out);
            let (wall, rss) = timed(&mut c)?;
            std::fs::remove_dir_all(&out)?;
            rows.push(Row { name: format!("chatvec extract{label}"), cold: None, warm: Some(wall), rss: Some(rss) });
            t.set_cache(Cache::Warm)?;
            let mut c = Command::new(bin);
            c.args(["inspect", "--quiet", "--base"]).arg(&t.base).arg("--chat").arg(&t.chat);
            let (wall, rss) = timed(&mut c)?;
            rows.push(Row { name: format!("chatvec inspect{label}"), cold: None, warm: Some(wall), rss: Some(rss) });
        }
        Ok(rows)
    }
}

/// One row per name with the median of each figure over the rounds (peak RSS: the largest).
fn median_rows(rounds: Vec<Vec<Row>>) -> Vec<Row> {
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| {
            if v.len() % 2 == 1 {
                v[v.len() / 2]
            } else {
                (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
            }
        })
    };
    let first = rounds.first().map(|r| r.len()).unwrap_or(0);
    (0..first)
        .map(|i| {
            let cells: Vec<&Row> = rounds.iter().map(|r| &r[i]).collect();
            Row {
                name: cells[0].name.clone(),
                cold: median(cells.iter().filter_map(|c| c.cold).collect()),
                warm: median(cells.iter().filter_map(|c| c.warm).collect()),
                rss: cells.iter().filter_map(|c| c.rss).max(),
            }
        })
        .collect()
}

fn print_table(title: &str, rows: &[Row]) {
    let floor = &rows[0];
    let ratio = |v: Option<f64>, base: Option<f64>| match (v, base) {
        (Some(v), Some(b)) => format!("{v:.1} ({:.2}×)", v / b),
        (Some(v), None) => format!("{v:.1}"),
        _ => "-".into(),
    };
    println!("| {title} | cold cache, s (× floor) | warm cache, s (× write only) | peak RSS |");
    println!("|---|---|---|---|");
    println!("| {} | {:.1} | {:.1} | |", floor.name, floor.cold.unwrap_or(f64::NAN), floor.warm.unwrap_or(f64::NAN));
    for r in &rows[1..] {
        let rss = r.rss.map_or(String::new(), |b| {
            if b >= 1 << 30 {
                format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
            } else {
                format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
            }
        });
        println!("| {} | {} | {} | {rss} |", r.name, ratio(r.cold, floor.cold), ratio(r.warm, floor.warm));
    }
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
    write_synced(out, out_bytes, &vec![0u8; 16 << 20])?;
    Ok(start.elapsed().as_secs_f64())
}

/// Writes `bytes` bytes into a new file `out` from `buf`, with the GGUF writer's write calls, then syncs it.
fn write_synced(out: &Path, bytes: u64, buf: &[u8]) -> Result<()> {
    let mut f = ChunkedWrite(File::create(out)?);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.0.sync_all()?;
    Ok(())
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
