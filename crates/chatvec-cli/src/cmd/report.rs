//! `chatvec report`: evaluate the target, the merge (and the chat and base models when given)
//! and write one self-contained `report.html` with `report.json`; the models are loaded here, or
//! asked on an OpenAI-compatible server (`--endpoint`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use chatvec_eval::endpoint::Endpoint;
use chatvec_eval::perplexity::BUNDLED_TEXT;
use chatvec_eval::report::{build_report, ModelSource, ReportJob, ReportModel};

use super::common::{existing_file, interrupt_flag, HubArgs};
use super::judging::{max_positions, progress_line, read_text, ChatGenArgs, DeviceArgs, WindowArgs};

/// Report arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The continually pre-trained target (with --endpoint, its served name).
    #[arg(long, value_name = "MODEL")]
    pub target: String,
    /// The merged model (with --endpoint, its served name).
    #[arg(long, value_name = "MODEL")]
    pub merged: String,
    /// The chat model (evaluated too; with --base the heatmap shows CHAT − BASE).
    #[arg(long, value_name = "MODEL")]
    pub chat: Option<String>,
    /// The base model (evaluated too).
    #[arg(long, value_name = "MODEL")]
    pub base: Option<String>,
    /// Judge models served by an OpenAI-compatible server (chatvec serve, vLLM) at URL
    /// (http://host:port[/v1]); --target, --merged, --chat and --base are then served names.
    /// Perplexity needs the server's POST /tokenize and echo with logprobs; the heatmap needs
    /// --weights.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Bearer token for --endpoint.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// With --endpoint: a local copy of a served model's weights, ROLE=MODEL (ROLE: target,
    /// merged, chat or base), to draw the heatmap (from chat and base, or merged and target).
    #[arg(long = "weights", value_name = "ROLE=MODEL", value_parser = parse_role_weights)]
    pub weights: Vec<(String, String)>,
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

/// The roles a report's models play, in column order.
const ROLES: [&str; 4] = ["target", "merged", "chat", "base"];

/// Parses `--weights ROLE=MODEL`.
fn parse_role_weights(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((role, model)) if ROLES.contains(&role) && !model.is_empty() => Ok((role.to_string(), model.to_string())),
        _ => Err(format!("expected ROLE=MODEL with ROLE one of {}, got {s:?}", ROLES.join(", "))),
    }
}

/// Refuses flag combinations that need --endpoint, or that --endpoint makes meaningless.
fn check_flags(a: &Args) -> Result<()> {
    match &a.endpoint {
        None if a.api_key.is_some() => bail!("--api-key is for --endpoint"),
        None if !a.weights.is_empty() => {
            bail!("--weights is for --endpoint (local models' weights are read from --target, --merged, ...)")
        }
        Some(_) => a.device.refuse_with_endpoint(),
        None => Ok(()),
    }?;
    if let Some((role, _)) = a.weights.iter().enumerate().find_map(|(i, w)| a.weights[..i].iter().find(|v| v.0 == w.0))
    {
        bail!("--weights {role}=... is given twice");
    }
    // The window's own rules (stride within context) before anything is read.
    a.window.window(usize::MAX)?;
    Ok(())
}

/// The served models, each checked against the server's list, and the fewest positions among
/// them (what the perplexity window may span).
fn served_models<'a>(
    a: &Args,
    endpoint: &'a Endpoint,
    names: &[(&'static str, &str)],
) -> Result<(Vec<ReportModel<'a>>, usize)> {
    let mut weights = Vec::new();
    for (role, model) in &a.weights {
        let role = ROLES.into_iter().find(|r| r == role).expect("parse_role_weights checked the role");
        weights.push((role, a.hub.resolve(model)?.path));
    }
    let listed = endpoint.models()?;
    let mut positions = usize::MAX;
    let mut models = Vec::new();
    for &(role, name) in names {
        let Some(m) = listed.iter().find(|m| m.id == name) else {
            let served: Vec<&str> = listed.iter().map(|m| m.id.as_str()).collect();
            bail!("--{role} {name:?}: {} serves no such model (it serves: {})", endpoint.base(), served.join(", "));
        };
        positions = positions.min(m.max_model_len.unwrap_or(usize::MAX));
        let local = weights.iter().find(|(r, _)| *r == role).map(|(_, p)| p.clone());
        models.push(ReportModel::served(role, endpoint, name, local));
    }
    // Weights of a role not judged (e.g. chat and base for the heatmap only) still draw it.
    for (role, path) in weights.into_iter().filter(|(r, _)| !names.iter().any(|(n, _)| n == r)) {
        models.push(ReportModel { role, source: ModelSource::WeightsOnly, weights: Some(path) });
    }
    Ok((models, positions))
}

/// Runs report.
pub fn run(a: Args) -> Result<ExitCode> {
    check_flags(&a)?;
    if a.output.join("report.html").exists() && !a.force {
        bail!("{}: already holds a report (use --force to replace it)", a.output.display());
    }
    let (text, text_name) = match &a.text {
        Some(f) => (read_text(f)?, f.display().to_string()),
        None => (BUNDLED_TEXT.to_string(), "bundled: opening of the Korean Constitution".to_string()),
    };
    let prompts = if a.no_chat { vec![] } else { a.gen.prompts(a.prompts.as_deref())? };
    let names: Vec<(&'static str, &str)> = [Some(&a.target), Some(&a.merged), a.chat.as_ref(), a.base.as_ref()]
        .into_iter()
        .zip(ROLES)
        .filter_map(|(name, role)| name.map(|n| (role, n.as_str())))
        .collect();
    let endpoint = a.endpoint.as_deref().map(|url| Endpoint::new(url, a.api_key.clone()));
    let (models, positions) = match &endpoint {
        Some(endpoint) => served_models(&a, endpoint, &names)?,
        None => {
            let models = names
                .iter()
                .map(|&(role, name)| Ok(ReportModel::local(role, a.hub.resolve(name)?.path)))
                .collect::<Result<Vec<_>>>()?;
            let dirs: Vec<&Path> = models.iter().filter_map(|m| m.weights.as_deref()).collect();
            let positions = max_positions(&dirs)?;
            (models, positions)
        }
    };
    let window = a.window.window(positions)?;
    let job = ReportJob {
        models,
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
            "{:<7} perplexity {:>10}  stop rate {:>6}  Korean {:>6}  repetition {:>6}  P(eot) {}",
            m.role,
            m.perplexity.as_ref().map_or_else(|| "-".into(), |p| format!("{:.3}", p.perplexity)),
            pct(s.map(|s| s.stop_rate)),
            pct(s.and_then(|s| s.korean_ratio)),
            pct(s.and_then(|s| s.repetition)),
            s.and_then(|s| s.eot_probability).map_or_else(|| "-".into(), |p| format!("{p:.4}"))
        );
    }
    println!("wrote {} and {}", a.output.join("report.html").display(), a.output.join("report.json").display());
    Ok(ExitCode::SUCCESS)
}
