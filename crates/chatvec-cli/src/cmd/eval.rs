//! `chatvec eval ppl|chat`: perplexity on target-language text, and chat behaviour on a Korean
//! prompt set.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use chatvec_eval::chat_eval::{run_chat_eval, ChatEval};
use chatvec_eval::endpoint::{run_chat_eval_endpoint, Endpoint};
use chatvec_eval::perplexity::{perplexity_in_batches, Perplexity, DEFAULT_WINDOWS_PER_PASS};
use chatvec_gen::ChatModel;

use super::common::{existing_file, interrupt_flag, HubArgs};
use super::judging::{progress_line, read_text, ChatGenArgs, DeviceArgs, WindowArgs};

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

/// Chat-eval arguments.
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// Model directory or hub id; with --endpoint, the served model's name.
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// Ask an OpenAI-compatible server (chatvec serve, vLLM, llama.cpp) at URL instead of
    /// loading the model (http://host:port or http://host:port/v1).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Bearer token for --endpoint.
    #[arg(long, requires = "endpoint")]
    pub api_key: Option<String>,
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
    Ok(perplexity_in_batches(&m.model, &ids, window, per_pass, cancel)?)
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
            r.eot_probability.map_or_else(|| "-".into(), |p| format!("{p:.4}"))
        );
    }
    if e.results.iter().any(|r| r.eot_probability.is_none()) {
        println!("P(eot): the end-of-turn token's probability right after the prompt's reference answer; - where a prompt has no reference");
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
            let n = prompts.len();
            let quiet = a.json;
            let mut progress = |i, r: &_| {
                if !quiet {
                    progress_line(i, n, r)
                }
            };
            let e = match &a.endpoint {
                Some(url) => {
                    a.device.refuse_with_endpoint()?;
                    let endpoint = Endpoint::new(url, a.api_key.clone());
                    run_chat_eval_endpoint(
                        &endpoint,
                        &a.model,
                        &prompts,
                        &a.gen.options(),
                        &interrupt_flag(),
                        &mut progress,
                    )?
                }
                None => {
                    let dir = a.hub.resolve(&a.model)?.path;
                    let mut m = ChatModel::load(&dir, &a.device.options()?, None)?;
                    run_chat_eval(&mut m, &prompts, &a.gen.options(), &interrupt_flag(), &mut progress)?
                }
            };
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
