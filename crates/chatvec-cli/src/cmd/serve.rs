//! `chatvec serve`: one or more models behind an OpenAI-compatible API (chatvec-serve), loaded
//! with the options of `generate`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use chatvec_serve::{EngineOptions, ServeOptions, ServedModel};

use chatvec_gen::ChatTemplate;

use super::common::{existing_file, parse_size, ComputeArgs, HubArgs};
use super::generate::{ModelArgs, Session};

/// Serve arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model to serve: NAME=MODEL, or MODEL (named after its directory or hub id); MODEL is a
    /// directory, a hub id (org/name[@revision]) or a GGUF file. Repeat for several models.
    #[arg(long = "model", value_name = "[NAME=]MODEL", required = true)]
    pub models: Vec<String>,
    /// Address to listen on. Any address but a loopback one needs --api-key or --insecure-no-key.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/*.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Listen on a non-loopback address without an API key.
    #[arg(long)]
    pub insecure_no_key: bool,
    /// A Jinja chat template for the served models that have none (a continually pre-trained
    /// target), so they answer chat completions too; models with their own keep it.
    #[arg(long, value_name = "FILE", value_parser = existing_file)]
    pub chat_template: Option<PathBuf>,
    #[command(flatten)]
    pub compute: ComputeArgs,
    #[command(flatten)]
    pub hub: HubArgs,
    /// Sequences each model decodes at once (1 to 1024).
    #[arg(long, default_value_t = 16, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub max_seqs: usize,
    /// Sequences that may wait per model (1 to 65536); past that, requests get 429.
    #[arg(long, default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536))]
    pub queue: usize,
    /// Largest request body (e.g. 16MB); larger ones get 413.
    #[arg(long, default_value = "16MB", value_parser = parse_size)]
    pub max_body: u64,
    /// Seconds in-flight requests may run after SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 30.0)]
    pub grace: f64,
}

/// Runs `chatvec serve`; exits with 128 + the signal that stopped it.
pub fn run(a: Args) -> Result<ExitCode> {
    check_bind(&a)?;
    let specs: Vec<(String, String)> = a.models.iter().map(|s| name_and_model(s)).collect();
    if !(a.grace.is_finite() && a.grace >= 0.0) {
        bail!("--grace {}: expected seconds >= 0", a.grace);
    }
    let opts = ServeOptions {
        engine: EngineOptions { max_seqs: a.max_seqs, queue: a.queue },
        max_body_bytes: usize::try_from(a.max_body).unwrap_or(usize::MAX),
        api_key: a.api_key.clone(),
        grace: Duration::from_secs_f64(a.grace),
        page_prompts: chatvec_eval::chat_eval::bundled_prompts().into_iter().map(|p| p.prompt).collect(),
    };
    let mut served = Vec::new();
    for (name, model) in specs {
        let args = ModelArgs {
            model,
            tokenizer: None,
            chat_template: None,
            stop: Vec::new(),
            compute: a.compute.clone(),
            hub: a.hub.clone(),
        };
        let mut session = Session::load(&args, false)?;
        match (&session.chat.template, &a.chat_template) {
            (Some(_), _) => {}
            (None, Some(file)) => {
                let template = ChatTemplate::from_file(file, session.chat.tokenizer.config())?;
                session.chat.template = Some(template);
                session.chat.template_from = Some(file.display().to_string());
            }
            (None, None) => eprintln!("note: {name} has no chat template; it answers /v1/completions only"),
        }
        served.push(ServedModel::start(name, session.chat, session.defaults, opts.engine)?);
    }
    let names: Vec<String> = served.iter().map(|m| m.name.clone()).collect();
    let app = chatvec_serve::app(served, &opts)?;
    let addr = format!("{}:{}", bracket_v6(&a.host), a.port);
    let signal = chatvec_serve::run_until_signal(&addr, app, opts.grace, |bound| {
        eprintln!("serving {} on http://{bound} (page at /, API at /v1)", names.join(", "));
    })?;
    eprintln!("stopped by signal {signal}");
    Ok(ExitCode::from(128 + signal as u8))
}

/// `NAME=MODEL` split, or MODEL named after its last path component (a hub id keeps its
/// whole `org/name`, as vLLM names it).
fn name_and_model(spec: &str) -> (String, String) {
    if let Some((name, model)) = spec.split_once('=') {
        if !name.is_empty() && !name.contains('/') && !model.is_empty() {
            return (name.to_string(), model.to_string());
        }
    }
    let path = std::path::Path::new(spec);
    let name = match path.exists() {
        true => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| spec.to_string()),
        false => spec.to_string(),
    };
    (name, spec.to_string())
}

/// Refuses a non-loopback address without an API key (or --insecure-no-key).
fn check_bind(a: &Args) -> Result<()> {
    let loopback = a.host == "localhost" || a.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback && a.api_key.is_none() && !a.insecure_no_key {
        bail!(
            "--host {:?} is reachable from other machines: pass --api-key KEY, or --insecure-no-key to serve without one",
            a.host
        );
    }
    Ok(())
}

fn bracket_v6(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{host}]"),
        _ => host.to_string(),
    }
}
