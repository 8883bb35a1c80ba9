//! Flags and output shared by the weight-arithmetic subcommands: model resolution, selection,
//! output options, the progress bar, Ctrl-C, and the summary for people or for programs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use chatvec_format::{DType, ResolvedModel};
use chatvec_merge::{OutputOptions, PlanOptions, Selection, Summary};
use indicatif::{ProgressBar, ProgressStyle};

/// Where hub ids are looked up, and whether they may be downloaded.
#[derive(clap::Args, Debug, Clone)]
pub struct HubArgs {
    /// Hugging Face cache directory for hub ids (default: $HF_HUB_CACHE, $HF_HOME/hub,
    /// ~/.cache/huggingface/hub).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Use only models already in the cache; never touch the network (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// No download progress bar (set from the command's own --quiet).
    #[arg(skip)]
    pub quiet: bool,
}

impl HubArgs {
    /// The same settings with the download bar hidden when `quiet`.
    pub fn quiet(&self, quiet: bool) -> HubArgs {
        HubArgs { quiet: self.quiet || quiet, ..self.clone() }
    }

    /// The hub settings: these flags over the HF_* environment variables.
    pub fn hub(&self) -> chatvec_hub::Hub {
        chatvec_hub::Hub::from_env(self.cache_dir.as_deref(), self.offline)
    }

    /// Resolves a model argument (directory or `org/name[@revision]`), downloading what the cache
    /// lacks with a progress bar by bytes. Every command resolves its models here.
    pub fn resolve(&self, spec: &str) -> Result<ResolvedModel> {
        let bar = DownloadBar { bar: Bar::new(self.quiet), label: terminal_safe(spec).into_owned() };
        Ok(self.hub().resolve(spec, &bar, &interrupt_flag())?)
    }
}

/// A [`Bar`] that names the model being downloaded; drawn only once a download begins.
pub struct DownloadBar {
    /// The bar.
    pub bar: Bar,
    /// What is downloaded (the hub id).
    pub label: String,
}

impl chatvec_format::Progress for DownloadBar {
    fn begin(&self, total: u64) {
        self.bar.0.set_message(format!("downloading {}", self.label));
        self.bar.0.set_length(total);
    }
    fn advance(&self, bytes: u64) {
        self.bar.0.inc(bytes);
    }
    fn finish(&self) {
        self.bar.0.finish_and_clear();
    }
}

/// Where and how a loaded model computes: shared by generate, chat, eval, report, sweep and
/// serve (`#[command(flatten)]`). Every value is parsed into its type by clap, so a mistake
/// fails before any model is resolved or downloaded.
#[derive(clap::Args, Debug, Clone)]
pub struct ComputeArgs {
    /// cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu", value_parser = parse_device, value_name = "DEVICE")]
    pub device: DeviceArg,
    /// Compute dtype: f32, bf16 or f16. Default: f32 (eval, report, sweep: the perplexity oracle's);
    /// generate, chat and serve use bf16 on CUDA. bf16 on CPU runs as f32 in generate and chat
    /// because candle has no fast bf16 matmul there.
    #[arg(long = "dtype", id = "compute_dtype", value_parser = parse_compute_dtype, value_name = "DTYPE")]
    pub compute_dtype: Option<chatvec_gen::DType>,
    /// Linear weights in memory: q8_0, q4_k, q4_0, bf16, f16, or none (dense in the compute
    /// dtype: f32 on CPU, exact but 4 bytes a weight). Default: q8_0 on CPU (an 8B model in
    /// about 9 GB), none on CUDA (bf16).
    #[arg(long, value_parser = parse_weight_format, value_name = "FORMAT")]
    pub quantize: Option<chatvec_gen::WeightFormat>,
    /// Load even when the memory estimate exceeds the memory available.
    #[arg(long)]
    pub no_memory_check: bool,
}

impl ComputeArgs {
    /// Model options computing in `dtype`.
    pub fn model_options(&self, dtype: chatvec_gen::DType) -> chatvec_gen::ModelOptions {
        let device = &self.device.device;
        chatvec_gen::ModelOptions {
            device: device.clone(),
            dtype,
            weights: self.quantize.unwrap_or_else(|| chatvec_gen::WeightFormat::default_for(device)),
            check_memory: !self.no_memory_check,
        }
    }

    /// The compute dtype of generation: `--dtype`, else f32 on CPU and bf16 on CUDA; bf16 on CPU
    /// becomes f32 with a note to print.
    pub fn generation_dtype(&self) -> (chatvec_gen::DType, Option<String>) {
        chatvec_gen::resolve_dtype(self.compute_dtype, &self.device.device)
    }

    /// The compute dtype of evaluations: `--dtype`, else f32.
    pub fn eval_dtype(&self) -> chatvec_gen::DType {
        self.compute_dtype.unwrap_or(chatvec_gen::DType::F32)
    }
}

/// A parsed `--device`: the device and the name it was given as.
#[derive(Debug, Clone)]
pub struct DeviceArg {
    /// As written: cpu, cuda, cuda:1.
    pub name: String,
    /// The device (for CUDA, already opened, so a missing GPU fails here).
    pub device: chatvec_gen::Device,
}

/// Parses `--device` for clap.
pub fn parse_device(s: &str) -> Result<DeviceArg, String> {
    let device = chatvec_gen::parse_device(s).map_err(|e| e.to_string())?;
    Ok(DeviceArg { name: s.to_string(), device })
}

/// Parses the compute dtype for clap.
pub fn parse_compute_dtype(s: &str) -> Result<chatvec_gen::DType, String> {
    chatvec_gen::parse_dtype(s).map_err(|_| "expected f32, bf16 or f16".to_string())
}

/// Parses `--quantize` for clap.
pub fn parse_weight_format(s: &str) -> Result<chatvec_gen::WeightFormat, String> {
    chatvec_gen::WeightFormat::parse(s).map_err(|_| format!("expected one of {}", chatvec_gen::device::WEIGHT_FORMATS))
}

/// Parses a merge ratio for clap (`merge --ratio`, `sweep --ratios`): a finite number.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() => Ok(r),
        Ok(_) => Err("a ratio must be a finite number".to_string()),
        Err(_) => Err("expected a number like 0.5".to_string()),
    }
}

/// Parses a GGUF element type (`export gguf --type`, `merge --gguf`) for clap.
pub fn parse_gguf_type(s: &str) -> Result<chatvec_gguf::FileType, String> {
    chatvec_gguf::FileType::parse(s).map_err(|e| e.to_string())
}

/// Checks for clap that a file given as input exists, so that a typo fails before a download.
pub fn existing_file(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => Ok(p),
        Ok(_) => Err("not a file".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The two models whose difference is the chat vector.
#[derive(clap::Args, Debug, Clone)]
pub struct PairArgs {
    /// The base model the chat model was tuned from (directory or org/name[@revision]).
    #[arg(long, value_name = "MODEL")]
    pub base: String,
    /// The instruction-tuned (chat) model.
    #[arg(long, value_name = "MODEL")]
    pub chat: String,
}

/// Which tensors take part, and in which dtype.
#[derive(clap::Args, Debug, Clone)]
pub struct SelectArgs {
    /// Only tensors whose name matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub include: Option<String>,
    /// Leave out tensors whose name matches this regex (e.g. 'embed_tokens|lm_head|norm').
    #[arg(long, value_name = "REGEX")]
    pub exclude: Option<String>,
    /// Output dtype: bf16, f16, f32 (default: the target's).
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<DType>,
    /// When embeddings are left out, do not take the chat model's rows for special tokens that
    /// are untrained in the base (like Llama-3's <|eot_id|>).
    #[arg(long)]
    pub no_special_rows: bool,
    /// A base row is untrained when its norm is below this share of the median row norm.
    #[arg(long, default_value_t = 1e-3, value_name = "SHARE")]
    pub untrained_threshold: f64,
    /// Write NaN and infinite values (with a warning) instead of refusing the tensor that has
    /// them (from an input, or from a result that overflows the output dtype).
    #[arg(long)]
    pub allow_nonfinite: bool,
}

impl SelectArgs {
    /// Plan options from the flags.
    pub fn plan_options(&self) -> Result<PlanOptions> {
        Ok(PlanOptions {
            selection: Selection::new(self.include.as_deref(), self.exclude.as_deref())?,
            dtype: self.dtype,
            porter: None,
            special_rows: !self.no_special_rows,
            untrained_threshold: self.untrained_threshold,
            allow_nonfinite: self.allow_nonfinite,
        })
    }
}

/// Where the output goes and how the run reports.
#[derive(clap::Args, Debug, Clone)]
pub struct OutputArgs {
    /// Output directory (written beside it and renamed into place when complete).
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// Largest shard, e.g. 5GB, 500MB, 2GiB.
    #[arg(long, default_value = "5GB", value_parser = parse_size)]
    pub shard_size: u64,
    /// Print the plan (tensors, bytes, memory) and stop without writing.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl OutputArgs {
    /// Runs a weight job with a progress bar and Ctrl-C handling, then prints its summary.
    pub fn run_job(
        &self,
        job: impl FnOnce(&Bar, &AtomicBool) -> chatvec_merge::Result<Summary>,
        extra: &str,
    ) -> Result<std::process::ExitCode> {
        self.run_jobs(|bar, cancel| job(bar, cancel).map(|s| vec![s]), &[extra.to_string()])
    }

    /// As [`run_job`](Self::run_job) for a job with several outputs; `extras[i]` annotates the
    /// summary of output `i`.
    pub fn run_jobs(
        &self,
        job: impl FnOnce(&Bar, &AtomicBool) -> chatvec_merge::Result<Vec<Summary>>,
        extras: &[String],
    ) -> Result<std::process::ExitCode> {
        let cancel = interrupt_flag();
        let bar = Bar::new(self.quiet || self.json || self.dry_run);
        let summaries = job(&bar, &cancel)?;
        for (summary, extra) in summaries.iter().zip(extras) {
            report(summary, self.json, extra)?;
        }
        Ok(std::process::ExitCode::SUCCESS)
    }

    /// Core output options.
    pub fn options(&self) -> OutputOptions {
        OutputOptions {
            path: self.output.clone(),
            force: self.force,
            shard_size: self.shard_size,
            dry_run: self.dry_run,
        }
    }
}

/// Parses `bf16`, `float16`, ... for clap.
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    match DType::parse(s) {
        Some(DType::F64) | None => Err(format!("{s}: expected bf16, f16 or f32")),
        Some(d) => Ok(d),
    }
}

/// Parses sizes like `5GB`, `500MB`, `2GiB`, `1000` with bytesize (GB = 10^9 bytes, as
/// transformers' `max_shard_size` counts; GiB = 2^30).
pub fn parse_size(s: &str) -> Result<u64, String> {
    match s.trim().parse::<bytesize::ByteSize>() {
        Ok(size) if size.as_u64() > 0 => Ok(size.as_u64()),
        Ok(_) => Err(format!("{s}: must be positive")),
        Err(_) => Err(format!("{s}: expected a size like 5GB, 500MB or 2GiB")),
    }
}

/// The signal (SIGINT, SIGTERM or SIGHUP) that stopped the run; 0 while none came.
static STOP_SIGNAL: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// The flag Ctrl-C, SIGTERM and SIGHUP set, one per process and shared by every step of a
/// command: the core stops between blocks and removes its temporary output, a download keeps its
/// partial file, generation ends its answer; the process then exits with 128 + the signal's
/// number. A second signal while the first is handled ends the process at once.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let flag = Arc::new(AtomicBool::new(false));
        let which = STOP_SIGNAL.get_or_init(|| Arc::new(AtomicUsize::new(0))).clone();
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            // Registered first, so it sees the flag as the previous signal left it.
            let _ = signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, flag.clone());
            let _ = signal_hook::flag::register_usize(sig, which.clone(), sig as usize);
            let _ = signal_hook::flag::register(sig, flag.clone());
        }
        flag
    })
    .clone()
}

/// Runs `on_interrupt` on a thread of its own at each Ctrl-C (instead of the default, which ends
/// the process): for `chat`, where Ctrl-C ends the answer being written, or the chat at the
/// prompt.
pub fn on_ctrl_c(mut on_interrupt: impl FnMut() + Send + 'static) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT])
        .context("cannot install the Ctrl-C handler")?;
    std::thread::spawn(move || signals.forever().for_each(|_| on_interrupt()));
    Ok(())
}

/// The exit status of a run that was interrupted: 128 + the signal that stopped it (130 for
/// Ctrl-C, 143 for SIGTERM, 129 for SIGHUP).
pub fn interrupted_exit_code() -> u8 {
    let sig = STOP_SIGNAL.get().map(|s| s.load(Ordering::SeqCst)).unwrap_or(0);
    if sig == 0 {
        130
    } else {
        128 + sig as u8
    }
}

/// An indicatif bar by bytes written, with throughput and ETA.
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar, hidden when `quiet`.
    pub fn new(quiet: bool) -> Self {
        let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template"),
        );
        Bar(bar)
    }
}

impl chatvec_format::Progress for Bar {
    fn begin(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn gb(b: u64) -> String {
    chatvec_merge::ops::human_bytes(b)
}

fn ids(v: &[usize]) -> String {
    match (v.first(), v.last()) {
        (Some(a), Some(b)) if v.len() > 2 && b - a + 1 == v.len() => format!("{a}..={b}"),
        _ => format!("{v:?}"),
    }
}

/// Prints the summary as JSON (stdout) or for people (stderr, so stdout stays clean).
pub fn report(s: &Summary, json: bool, extra: &str) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s).context("summary as JSON")?);
        return Ok(());
    }
    let verb = if s.dry_run { "would write" } else { "wrote" };
    eprintln!(
        "{} {verb} {} tensors to {}: {} with the vector, {} row-adjusted, {} copied ({}{extra})",
        s.command,
        s.tensors,
        s.output.display(),
        s.merged,
        s.row_adjusted,
        s.copied,
        s.method
    );
    eprintln!(
        "  read {}, write {} in {} shard(s); peak memory ≈ {}",
        gb(s.bytes_read),
        gb(s.bytes_written),
        s.shards,
        gb(s.peak_memory_estimate)
    );
    if !s.dry_run {
        eprintln!(
            "  {:.2} s, {:.2} GB/s read+written",
            s.seconds,
            (s.bytes_read + s.bytes_written) as f64 / 1e9 / s.seconds.max(1e-9)
        );
    }
    if !s.not_selected.is_empty() {
        eprintln!("  not selected (copied from the target): {}", s.not_selected.len());
    }
    for (t, rows) in &s.special_rows {
        eprintln!("  special-token rows from the chat model: {} ids {}", terminal_safe(t), ids(rows));
    }
    if !s.only_in_target.is_empty() {
        eprintln!("  only in the target (copied): {}", terminal_safe(&s.only_in_target.join(", ")));
    }
    if !s.missing_from_target.is_empty() {
        eprintln!("  missing from the target (not written): {}", terminal_safe(&s.missing_from_target.join(", ")));
    }
    if let Some(from) = &s.chat_template_from {
        eprintln!("  chat template carried over from the {from}");
    }
    if !s.eos_token_ids.is_empty() {
        eprintln!("  stop ids (generation_config.json): {:?}", s.eos_token_ids);
    }
    if s.inexact_elements > 0 {
        eprintln!(
            "  note: {} elements are not exact in this dtype; `apply` will differ from `merge` by up to an ulp there",
            s.inexact_elements
        );
    }
    for w in &s.warnings {
        eprintln!("  warning: {}", terminal_safe(w));
    }
    Ok(())
}

/// Warns on stderr when `--base` and `--chat` look swapped (see [`chatvec_format::swapped`]).
pub fn warn_if_swapped(base: &ResolvedModel, chat: &ResolvedModel) {
    if let Some(w) = chatvec_format::swapped::swapped_pair_warning(&base.path, &chat.path) {
        eprintln!("warning: {}", terminal_safe(&w));
    }
}

/// Tells people what to do with the model just written (not with --json or --dry-run).
pub fn print_next_step(out: &OutputArgs, model: &std::path::Path) {
    if !out.json && !out.dry_run {
        eprintln!("next: chatvec generate --model {} --prompt \"...\"", model.display());
    }
}

/// `text` safe to print on a terminal: every control character (C0, DEL, C1) and every
/// bidirectional override escaped as Rust's `escape_debug` writes it (`\n`, `\u{1b}`), so that
/// text from models, files or the hub (a GGUF's architecture name, a commit value, a shard name,
/// a vocabulary token) cannot move the cursor, recolour or rewrite what is shown. Everything
/// else (Korean, quotes, backslashes) is kept as it is. Every message with such text in it goes
/// through here (errors in `main`, warnings, progress labels, the chat).
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}
