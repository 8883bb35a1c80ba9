//! `chatvec sweep`: merge at several ratios, evaluate each, and mark the best by a stated rule.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use chatvec_eval::perplexity::BUNDLED_TEXT;
use chatvec_eval::plots::Size;
use chatvec_eval::sweep::{plot, run_sweep, to_csv, to_text, SweepEval, SweepMerge};

use super::common::{
    existing_file, interrupt_flag, parse_ratio, warn_if_swapped, ComputeArgs, HubArgs, PairArgs, SelectArgs,
};
use super::judging::{max_positions, read_text, ChatGenArgs, DeviceArgs, WindowArgs};

/// Sweep arguments.
#[derive(clap::Args, Debug)]
#[command(mut_arg("compute_dtype", |a| a.long("compute-dtype").help(
    "Compute dtype of the evaluations: f32, bf16 or f16 (default f32; --dtype is the merged models' dtype)"
)))]
pub struct Args {
    #[command(flatten)]
    pub pair: PairArgs,
    /// The target.
    #[arg(long, value_name = "MODEL")]
    pub target: String,
    /// Ratios to try, comma-separated.
    #[arg(
        long,
        visible_alias = "ratio",
        value_delimiter = ',',
        num_args = 1..,
        default_value = "0.3,0.5,0.7,1.0",
        allow_negative_numbers = true,
        value_parser = parse_ratio
    )]
    pub ratios: Vec<f64>,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Directory for sweep.json, sweep.csv and sweep.png/svg.
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
    /// Where merged models are written while evaluated: every ratio in one pass when its disk holds
    /// them all, else as many per pass as fit (default: OUTPUT).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Text for perplexity (default: the bundled opening of the Korean Constitution).
    #[arg(long, value_name = "FILE", value_parser = existing_file)]
    pub text: Option<PathBuf>,
    /// Prompt set (default: the bundled Korean prompts).
    #[arg(long, value_name = "FILE", value_parser = existing_file)]
    pub prompts: Option<PathBuf>,
    /// Perplexity only.
    #[arg(long)]
    pub no_chat: bool,
    /// Plot size in pixels.
    #[arg(long, default_value = "960x720", value_parser = Size::parse, value_name = "WxH")]
    pub plot_size: Size,
    #[command(flatten)]
    pub window: WindowArgs,
    #[command(flatten)]
    pub gen: ChatGenArgs,
    /// How the evaluations compute (`--compute-dtype` here: --dtype is the merged models' dtype).
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// A Jinja chat template for the evaluations (default: the chat model's).
    #[arg(long, value_name = "FILE", value_parser = existing_file)]
    pub chat_template: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub hub: HubArgs,
}

/// Runs sweep.
pub fn run(a: Args) -> Result<ExitCode> {
    std::fs::create_dir_all(&a.output).with_context(|| format!("{}: cannot create", a.output.display()))?;
    let text = match &a.text {
        Some(f) => read_text(f)?,
        None => BUNDLED_TEXT.to_string(),
    };
    let prompts = if a.no_chat { vec![] } else { a.gen.prompts(a.prompts.as_deref())? };
    let job = SweepMerge {
        base: a.hub.resolve(&a.pair.base)?,
        chat: a.hub.resolve(&a.pair.chat)?,
        target: a.hub.resolve(&a.target)?,
        ratios: a.ratios.clone(),
        plan: a.select.plan_options()?,
        work_dir: a.work_dir.clone().unwrap_or_else(|| a.output.clone()),
        at_once: None,
    };
    warn_if_swapped(&job.base, &job.chat);
    let eval = SweepEval {
        text: &text,
        window: a.window.window(max_positions(&[&job.target.path])?)?,
        max_tokens: a.window.max_tokens,
        prompts: &prompts,
        chat: a.gen.options(),
        load: DeviceArgs { compute: a.compute.clone(), chat_template: a.chat_template.clone() }.options()?,
    };
    let quiet = a.json;
    let result = run_sweep(&job, &eval, &interrupt_flag(), &mut |line| {
        if !quiet {
            eprintln!("{}", super::common::terminal_safe(line))
        }
    })?;
    let write = |name: &str, body: String| -> Result<()> {
        let p = a.output.join(name);
        std::fs::write(&p, body).with_context(|| format!("{}: cannot write", p.display()))
    };
    write("sweep.json", serde_json::to_string_pretty(&result)?)?;
    write("sweep.csv", to_csv(&result))?;
    plot(&result, &a.output.join("sweep"), a.plot_size)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", to_text(&result));
        println!("wrote sweep.json, sweep.csv, sweep.png, sweep.svg in {}", a.output.display());
    }
    Ok(ExitCode::SUCCESS)
}
