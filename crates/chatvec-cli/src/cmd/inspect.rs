//! `chatvec inspect`: what a chat vector changes, per tensor, layer and module kind, as a table,
//! JSON, CSV and a heatmap.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use chatvec_eval::inspect::{inspect, to_csv, to_text, InspectInput, VectorInput, WeightsRef};
use chatvec_eval::plots::{write_heatmap, Size};
use chatvec_format::Checkpoint;

use super::common::{interrupt_flag, Bar, HubArgs};

/// Inspect arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base model (the vector is CHAT − BASE; with --vector, ‖W‖ is measured on it).
    #[arg(long, value_name = "MODEL")]
    pub base: Option<String>,
    /// The chat model (needs --base).
    #[arg(long, value_name = "MODEL", requires = "base", conflicts_with = "vector")]
    pub chat: Option<String>,
    /// A vector written by `chatvec extract`, instead of --chat.
    #[arg(long, value_name = "DIR")]
    pub vector: Option<String>,
    /// A second extracted vector: adds its cosine similarity per tensor and per layer.
    #[arg(long, value_name = "DIR", conflicts_with = "compare_chat")]
    pub compare: Option<String>,
    /// A second chat model: compares with COMPARE_CHAT − BASE.
    #[arg(long, value_name = "MODEL", requires = "base")]
    pub compare_chat: Option<String>,
    /// Print the full result as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write per-tensor statistics as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write the layer × module heatmap as PATH.png and PATH.svg (and PATH_cosine.* with a
    /// comparison).
    #[arg(long, value_name = "PATH")]
    pub heatmap: Option<PathBuf>,
    /// Heatmap size in pixels.
    #[arg(long, default_value = "960x720", value_parser = Size::parse, value_name = "WxH")]
    pub plot_size: Size,
    /// Largest tensors listed in the table.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub hub: HubArgs,
}

fn open(hub: &HubArgs, spec: &str) -> Result<Checkpoint> {
    Ok(Checkpoint::open(&hub.resolve(spec)?.path)?)
}

/// Runs inspect.
pub fn run(a: Args) -> Result<ExitCode> {
    let hub = a.hub.quiet(a.quiet || a.json);
    let base = || -> Result<Checkpoint> { open(&hub, a.base.as_deref().context("--base is required")?) };
    let (vector, weights) = match (&a.chat, &a.vector) {
        (Some(chat), None) => (VectorInput { plus: open(&hub, chat)?, minus: Some(base()?) }, WeightsRef::Minus),
        (None, Some(v)) => {
            let weights = if a.base.is_some() { WeightsRef::Model(base()?) } else { WeightsRef::None };
            (VectorInput { plus: open(&hub, v)?, minus: None }, weights)
        }
        _ => bail!("give --base and --chat, or --vector (with --base for relative norms)"),
    };
    let compare = match (&a.compare, &a.compare_chat) {
        (Some(v), _) => Some(VectorInput { plus: open(&hub, v)?, minus: None }),
        (None, Some(c)) => Some(VectorInput { plus: open(&hub, c)?, minus: Some(base()?) }),
        (None, None) => None,
    };
    let input = InspectInput { vector, weights, compare };
    let cancel = interrupt_flag();
    let bar = Bar::new(a.quiet || a.json);
    let report = inspect(&input, &bar, &cancel)?;
    if let Some(path) = &a.csv {
        std::fs::write(path, to_csv(&report)).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    if let Some(path) = &a.heatmap {
        write_heatmap(&report.heatmap(false), path, a.plot_size)?;
        let mut written = vec![path.with_extension("png"), path.with_extension("svg")];
        if report.compare.is_some() {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let cos = path.with_file_name(format!("{stem}_cosine"));
            write_heatmap(&report.heatmap(true), &cos, a.plot_size)?;
            written.extend([cos.with_extension("png"), cos.with_extension("svg")]);
        }
        if !a.json {
            let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
            eprintln!("heatmap: {}", super::common::terminal_safe(&names.join(", ")));
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", to_text(&report, a.top));
        eprintln!("{} tensors in {:.2} s", report.tensors.len(), report.seconds);
    }
    Ok(ExitCode::SUCCESS)
}
