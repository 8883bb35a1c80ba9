//! `chatvec lab`: the paper's experiment in miniature, trained and judged on CPU.
//!
//! `lab data` writes the corpora and dialog sets, `lab train` trains base, chat and target for
//! one seed, `lab eval` merges each run at ratios 0.5 and 1.0 (and feature-porter), scores every
//! model and writes the results table and plot.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use chatvec_lab::eval::{evaluate_run, EvalSet, RunScores};
use chatvec_lab::model::LabConfig;
use chatvec_lab::train::{load_tokenizer, train_family, LabPaths, Recipe};
use chatvec_lab::{data, report};

/// Lab arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: LabCommand,
}

/// The lab's steps.
#[derive(clap::Subcommand, Debug)]
pub enum LabCommand {
    /// Write the English corpus and the dialog sets (deterministic) into --out.
    Data {
        /// Korean text folder (its held-out files give the Korean dialog content).
        #[arg(long, default_value = "data/korean")]
        korean: PathBuf,
        /// Output folder (required: the bundled data/lab is the project's own, never overwritten by default).
        #[arg(long)]
        out: PathBuf,
    },
    /// Train base (English), chat (English dialogs) and target (Korean) for one seed.
    Train(TrainArgs),
    /// Merge every run, score all models and write results.md, results.json and ratio.png.
    Eval(EvalArgs),
}

/// Where the lab's inputs are.
#[derive(clap::Args, Debug)]
pub struct PathArgs {
    /// The lab data folder (from `chatvec lab data`).
    #[arg(long, default_value = "data/lab")]
    pub data: PathBuf,
    /// Korean text folder.
    #[arg(long, default_value = "data/korean")]
    pub korean: PathBuf,
    /// Tokenizer folder shared by all lab models.
    #[arg(long, default_value = "fixtures/llama-tiny/tokenizer")]
    pub tokenizer: PathBuf,
}

impl PathArgs {
    fn paths(&self) -> LabPaths {
        LabPaths { data: self.data.clone(), korean: self.korean.clone(), tokenizer: self.tokenizer.clone() }
    }
}

/// `lab train` arguments.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub paths: PathArgs,
    /// Model seed (initial weights and batch order).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder: gets base/, chat/ and target/.
    #[arg(long)]
    pub out: PathBuf,
    /// Only these stages (base, chat, target); later stages read <out>/base.
    #[arg(long, value_delimiter = ',')]
    pub stage: Vec<String>,
    /// CPU threads for candle's kernels. One by default: on a shared machine a single thread is
    /// both faster and the setting the bundled models were trained with (bit-for-bit rebuilds
    /// need the same thread count).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Override the number of base pre-training steps.
    #[arg(long)]
    pub base_steps: Option<usize>,
    /// Override the number of chat fine-tuning steps.
    #[arg(long)]
    pub chat_steps: Option<usize>,
    /// Override the number of Korean continual pre-training steps.
    #[arg(long)]
    pub target_steps: Option<usize>,
}

/// `lab eval` arguments.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub paths: PathArgs,
    /// Run folders (each with base/, chat/, target/), one per seed.
    #[arg(long, required = true, num_args = 1.., value_delimiter = ',')]
    pub run: Vec<PathBuf>,
    /// Where results.md, results.json and ratio.png go (required: the bundled docs/lab is the
    /// project's own, never overwritten by default).
    #[arg(long)]
    pub out: PathBuf,
    /// Read a run's scores from its lab_scores.json (written by an earlier `lab eval`) instead of
    /// scoring it again: runs scored in parallel processes, then tabulated together.
    #[arg(long)]
    pub reuse_scores: bool,
}

/// Runs a lab step.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        LabCommand::Data { korean, out } => {
            data::write_data(&korean, &out)?;
            eprintln!("wrote {}", out.display());
        }
        LabCommand::Train(a) => {
            // Before any candle op: candle and rayon read it when their thread pools start.
            std::env::set_var("RAYON_NUM_THREADS", a.threads.max(1).to_string());
            chatvec_lab::train::keep_freed_buffers();
            let mut recipe = Recipe::default();
            if let Some(n) = a.base_steps {
                recipe.base.steps = n;
            }
            if let Some(n) = a.chat_steps {
                recipe.chat.steps = n;
            }
            if let Some(n) = a.target_steps {
                recipe.target.steps = n;
            }
            let logs = train_family(&a.paths.paths(), LabConfig::default(), &recipe, a.seed, &a.out, &a.stage, |l| {
                eprintln!("{l}")
            })?;
            for l in logs {
                eprintln!("{} (seed {}): final loss {:.4} in {:.0}s", l.stage, l.seed, l.final_loss, l.seconds);
            }
        }
        LabCommand::Eval(a) => {
            chatvec_lab::train::keep_freed_buffers();
            eval(a)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn eval(a: EvalArgs) -> Result<()> {
    let start = Instant::now();
    let tok = load_tokenizer(&a.paths.tokenizer)?;
    let set = EvalSet::load(&a.paths.data, &a.paths.korean, &tok)?;
    let mut runs: Vec<RunScores> = Vec::new();
    for r in &a.run {
        runs.push(evaluate_run(r, &tok, &set, a.reuse_scores, |l| eprintln!("{l}"))?);
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    std::fs::write(a.out.join("results.json"), serde_json::to_string_pretty(&runs)? + "\n")?;
    report::plot(&runs, &a.out.join("ratio.png"))?;
    let mut training = String::new();
    for r in &a.run {
        for stage in ["base", "chat", "target"] {
            let p = r.join(stage).join("lab.json");
            if let Ok(text) = std::fs::read_to_string(&p) {
                let v: serde_json::Value = serde_json::from_str(&text)?;
                training.push_str(&format!(
                    "| {} | {stage} | {} | {:.3} | {:.0} |\n",
                    r.display(),
                    v["options"]["steps"],
                    v["final_loss"].as_f64().unwrap_or(f64::NAN),
                    std::fs::read_to_string(r.join(format!("{stage}_seconds.txt")))
                        .ok()
                        .and_then(|s| s.trim().parse::<f64>().ok())
                        .unwrap_or(f64::NAN)
                ));
            }
        }
    }
    let command: Vec<String> = std::env::args().collect();
    let md = format!(
        "# Lab results\n\nProduced by `{}` in {:.0} s over {} run(s).\n\n{}\n\
         Korean-content accuracy per task (%):\n\n{}\n\
         Training:\n\n| run | stage | steps | final loss | seconds |\n|---|---|---|---|---|\n{training}",
        command.join(" "),
        start.elapsed().as_secs_f64(),
        runs.len(),
        report::table(&runs),
        report::task_table(&runs),
    );
    std::fs::write(a.out.join("results_table.md"), &md)?;
    eprintln!("{md}");
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
