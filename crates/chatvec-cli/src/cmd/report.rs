//! `chatvec report`: evaluate the target, the merge (and the chat and base models when given)
//! and write one self-contained `report.html` with `report.json`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use chatvec_eval::perplexity::BUNDLED_TEXT;
use chatvec_eval::report::{build_report, ReportJob};

use super::common::{existing_file, interrupt_flag, HubArgs};
use super::eval::{max_positions, progress_line, read_text, ChatGenArgs, DeviceArgs, WindowArgs};

/// Report arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The continually pre-trained target.
    #[arg(long, value_name = "MODEL")]
    pub target: String,
    /// The merged model.
    #[arg(long, value_name = "MODEL")]
    pub merged: String,
    /// The chat model (evaluated too; with --base the heatmap shows CHAT − BASE).
    #[arg(long, value_name = "MODEL")]
    pub chat: Option<String>,
    /// The base model (evaluated too).
    #[arg(long, value_name = "MODEL")]
    pub base: Option<String>,
    /// Report directory (report.html, report.json, heatmap.png/svg).
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
    /// Text for perplexity (default: the bundled opening of the Korean Constitution).
    #[arg(long, value_name = "FILE", value_parser = existing_file)]
    pub text: Option<PathBuf>,
    /// Prompt set (default: the bundled Korean prompts).
    #[arg(long, value_name = "FILE", value_parser = existing_file)]
    pub prompts: Option<PathBuf>,
    /// Prompts whose answers are shown side by side.
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    /// Skip the chat evaluation (perplexity and vector only).
    #[arg(long)]
    pub no_chat: bool,
    #[command(flatten)]
    pub window: WindowArgs,
    #[command(flatten)]
    pub gen: ChatGenArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Replace an existing report in OUTPUT.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub hub: HubArgs,
}

/// Runs report.
pub fn run(a: Args) -> Result<ExitCode> {
    if a.output.join("report.html").exists() && !a.force {
        bail!("{}: already holds a report (use --force to replace it)", a.output.display());
    }
    let resolve = |s: &str| -> Result<PathBuf> { Ok(a.hub.resolve(s)?.path) };
    let (text, text_name) = match &a.text {
        Some(f) => (read_text(f)?, f.display().to_string()),
        None => (BUNDLED_TEXT.to_string(), "bundled: opening of the Korean Constitution".to_string()),
    };
    let prompts = if a.no_chat { vec![] } else { a.gen.prompts(a.prompts.as_deref())? };
    let (target, merged) = (resolve(&a.target)?, resolve(&a.merged)?);
    let (chat, base) = (a.chat.as_deref().map(resolve).transpose()?, a.base.as_deref().map(resolve).transpose()?);
    let models: Vec<&Path> = [Some(&target), Some(&merged), chat.as_ref(), base.as_ref()]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
        .collect();
    let window = a.window.window(max_positions(&models)?)?;
    let job = ReportJob {
        target,
        merged,
        chat,
        base,
        text: (&text, text_name),
        window,
        max_tokens: a.window.max_tokens,
        prompts: &prompts,
        chat_options: a.gen.options(),
        load: a.device.options()?,
        samples: a.samples,
    };
    let report = build_report(
        &job,
        &a.output,
        &interrupt_flag(),
        &mut |l| eprintln!("{}", super::common::terminal_safe(l)),
        &mut |i, n, r| progress_line(i, n, r),
    )?;
    let pct = |v: Option<f64>| v.map_or_else(|| "-".into(), |x| format!("{:.1}%", 100.0 * x));
    for m in &report.models {
        let s = m.chat.as_ref().map(|c| &c.summary);
        println!(
            "{:<7} perplexity {:>10.3}  stop rate {:>6}  Korean {:>6}  repetition {:>6}  P(eot) {}",
            m.role,
            m.perplexity.as_ref().map_or(f64::NAN, |p| p.perplexity),
            pct(s.map(|s| s.stop_rate)),
            pct(s.and_then(|s| s.korean_ratio)),
            pct(s.and_then(|s| s.repetition)),
            s.and_then(|s| s.eot_probability).map_or_else(|| "-".into(), |p| format!("{p:.4}"))
        );
    }
    println!("wrote {} and {}", a.output.join("report.html").display(), a.output.join("report.json").display());
    Ok(ExitCode::SUCCESS)
}
