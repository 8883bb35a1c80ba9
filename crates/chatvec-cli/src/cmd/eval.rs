//! `chatvec eval ppl|chat`: perplexity on target-language text, and chat behaviour on a Korean
//! prompt set.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};
use chatvec_eval::chat_eval::{
    bundled_prompts, load_prompts, run_chat_eval, ChatEval, ChatOptions, Prompt, DEFAULT_BATCH_SIZE,
};
use chatvec_eval::perplexity::{perplexity_in_batches, Perplexity, Window, DEFAULT_WINDOWS_PER_PASS};
use chatvec_gen::{ChatModel, LoadOptions};

use super::common::{existing_file, interrupt_flag, ComputeArgs, HubArgs};

/// Eval arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

/// What to evaluate.
#[derive(clap::Subcommand, Debug)]
pub enum What {
    /// Perplexity on a text file (sliding window, float32 by default).
    Ppl(PplArgs),
    /// Answers to a Korean prompt set: stop rate, Korean ratio, repetition, leaks, P(end of turn).
    Chat(ChatArgs),
}

/// Where and how models are computed.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// A Jinja chat template for models without one (or to override theirs).
    #[arg(long, value_name = "FILE", value_parser = existing_file)]
    pub chat_template: Option<PathBuf>,
}

impl DeviceArgs {
    /// Load options from the flags.
    pub fn options(&self) -> Result<LoadOptions> {
        Ok(LoadOptions {
            model: self.compute.model_options(self.compute.eval_dtype()),
            chat_template: self.chat_template.clone(),
            ..LoadOptions::default()
        })
    }
}

/// Perplexity arguments.
#[derive(clap::Args, Debug)]
pub struct PplArgs {
    /// Model directory or hub id.
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// UTF-8 text in the target language (CRLF read as LF, as Python does).
    #[arg(long, value_name = "FILE", value_parser = existing_file)]
    pub text: PathBuf,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Windows scored together in one forward pass (the result does not depend on it).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_WINDOWS_PER_PASS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch_size: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub hub: HubArgs,
}

/// The window when neither --context nor the model's positions say less.
const DEFAULT_CONTEXT: usize = 1024;

/// The fewest positions (`max_position_embeddings`) among `models`: the longest window all of
/// them can score. A config without the key does not limit it.
pub fn max_positions(models: &[&Path]) -> Result<usize> {
    models.iter().try_fold(usize::MAX, |least, dir| {
        let config = chatvec_format::ModelConfig::load(dir)?;
        Ok(least.min(config.max_position_embeddings().unwrap_or(usize::MAX)))
    })
}

/// Sliding-window settings.
#[derive(clap::Args, Debug, Clone)]
pub struct WindowArgs {
    /// Most tokens per forward pass (default: 1024, or the model's max_position_embeddings when
    /// it has fewer positions; more than it has is refused).
    #[arg(long)]
    pub context: Option<usize>,
    /// Tokens between window starts (default: half the context); each window scores only the
    /// tokens after the previous window's end (HF's perplexity guide).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Score only the first N tokens of the text.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
}

/// Chat-eval arguments.
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// Model directory or hub id.
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// A JSON-lines prompt set ({"id", "prompt", "category"?, "system"?, "reference"?} per line);
    /// default: the bundled 33 Korean prompts.
    #[arg(long, value_name = "FILE", value_parser = existing_file)]
    pub prompts: Option<PathBuf>,
    #[command(flatten)]
    pub gen: ChatGenArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Print the full result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write the full result as JSON to FILE.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub hub: HubArgs,
}

impl WindowArgs {
    /// The window from the flags.
    /// The window for models of `positions` positions (`max_position_embeddings`): a window
    /// longer than that would run the model past the positions it was trained on.
    pub fn window(&self, positions: usize) -> Result<Window> {
        let context = match self.context {
            Some(c) if c > positions => bail!(
                "--context {c} is beyond the model's {positions} positions (max_position_embeddings); \
                 give --context {positions} or less"
            ),
            Some(c) => c,
            None => DEFAULT_CONTEXT.min(positions),
        };
        Window::new(context, self.stride.unwrap_or((context / 2).max(1)))
    }
}

/// Generation settings of a chat evaluation.
#[derive(clap::Args, Debug, Clone)]
pub struct ChatGenArgs {
    /// Token limit per answer.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Nucleus mass.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Seed, the same for every prompt, so runs reproduce.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Only the first N prompts.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Prompts answered together, one forward pass per token for all of them (the answers do
    /// not depend on it).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH_SIZE, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch_size: usize,
}

impl ChatGenArgs {
    /// Options from the flags.
    pub fn options(&self) -> ChatOptions {
        ChatOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            batch_size: self.batch_size,
        }
    }

    /// The prompt set: FILE or the bundled one, cut to --limit.
    pub fn prompts(&self, file: Option<&Path>) -> Result<Vec<Prompt>> {
        let mut p = match file {
            Some(f) => load_prompts(f)?,
            None => bundled_prompts(),
        };
        if let Some(n) = self.limit {
            p.truncate(n.max(1));
        }
        Ok(p)
    }
}

/// Reads a text file as Python's `open()` would (CRLF → LF).
pub fn read_text(path: &Path) -> Result<String> {
    let t = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read as UTF-8 text", path.display()))?;
    Ok(t.replace("\r\n", "\n"))
}

/// Tokenizes `text` for `m` and scores it, `per_pass` windows per forward pass.
pub fn score_text(
    m: &ChatModel,
    text: &str,
    w: &WindowArgs,
    per_pass: usize,
    cancel: &AtomicBool,
) -> Result<Perplexity> {
    let window = w.window(m.model.config().max_position_embeddings)?;
    let mut ids = m.encode_text(text)?;
    if let Some(n) = w.max_tokens {
        ids.truncate(n);
    }
    perplexity_in_batches(&m.model, &ids, window, per_pass, cancel)
}

/// One line per prompt, for people watching a run.
pub fn progress_line(i: usize, n: usize, r: &chatvec_eval::chat_eval::PromptResult) {
    eprintln!(
        "[{}/{n}] {:<4} {:>4} tokens {}  korean {}  {:.1}s",
        i + 1,
        r.id,
        r.tokens,
        if r.stopped { "stopped" } else { "at limit" },
        r.korean_ratio.map_or_else(|| "-".into(), |k| format!("{:.0}%", 100.0 * k)),
        r.seconds
    );
}

/// The totals of a chat evaluation for people.
pub fn print_chat_summary(e: &ChatEval) {
    let s = &e.summary;
    let pct = |v: Option<f64>| v.map_or_else(|| "-".into(), |x| format!("{:.1}%", 100.0 * x));
    println!("model: {}", e.model);
    if let Some(t) = &e.template_from {
        println!("chat template: {t}");
    }
    println!(
        "{:<5} {:<12} {:>6} {:>8} {:>7} {:>6} {:>5} {:>9}",
        "id", "category", "tokens", "stopped", "korean", "rep", "leaks", "P(eot)"
    );
    for r in &e.results {
        println!(
            "{:<5} {:<12} {:>6} {:>8} {:>7} {:>6} {:>5} {:>9}",
            r.id,
            r.category,
            r.tokens,
            if r.stopped { "yes" } else { "no" },
            pct(r.korean_ratio),
            pct(r.repetition),
            r.header_leaks,
            r.eot_probability.map_or_else(|| "".into(), |p| format!("{p:.4}"))
        );
    }
    println!(
        "\n{} prompts: stop rate {}, Korean ratio {}, repetition {}, mean length {:.1} tokens / {:.0} chars, header leaks in {}, P({}) after references {}",
        s.prompts,
        pct(Some(s.stop_rate)),
        pct(s.korean_ratio),
        pct(s.repetition),
        s.mean_tokens,
        s.mean_chars,
        pct(Some(s.leak_rate)),
        s.eot_token.as_deref().unwrap_or("end of turn"),
        s.eot_probability.map_or_else(|| "-".into(), |p| format!("{p:.4}"))
    );
    println!(
        "settings: max_new_tokens {}, temperature {}, top_p {}, top_k {}, seed {}; {:.1} s",
        e.options.max_new_tokens, e.options.temperature, e.options.top_p, e.options.top_k, e.options.seed, e.seconds
    );
}

/// Runs eval.
pub fn run(a: Args) -> Result<ExitCode> {
    match a.what {
        What::Ppl(a) => {
            let text = read_text(&a.text)?;
            let dir = a.hub.resolve(&a.model)?.path;
            let m = ChatModel::load(&dir, &a.device.options()?, None)?;
            let r = score_text(&m, &text, &a.window, a.batch_size, &interrupt_flag())?;
            if a.json {
                let mut v = serde_json::to_value(&r)?;
                v["model"] = dir.display().to_string().into();
                v["text"] = a.text.display().to_string().into();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "perplexity {:.4} (mean NLL {:.6} nats) over {} scored tokens of {}, {} window(s) of ≤{} tokens, stride {}",
                    r.perplexity, r.mean_nll, r.scored, r.tokens, r.windows, r.window.context, r.window.stride
                );
            }
        }
        What::Chat(a) => {
            let prompts = a.gen.prompts(a.prompts.as_deref())?;
            let dir = a.hub.resolve(&a.model)?.path;
            let mut m = ChatModel::load(&dir, &a.device.options()?, None)?;
            let n = prompts.len();
            let quiet = a.json;
            let e = run_chat_eval(&mut m, &prompts, &a.gen.options(), &interrupt_flag(), &mut |i, r| {
                if !quiet {
                    progress_line(i, n, r)
                }
            })?;
            if let Some(path) = &a.output {
                std::fs::write(path, serde_json::to_string_pretty(&e)?)
                    .with_context(|| format!("{}: cannot write", path.display()))?;
            }
            if a.json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print_chat_summary(&e);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
