//! `chatvec extract`: the chat vector CHAT − BASE as a checkpoint plus a `chatvec.json` manifest.

use std::process::ExitCode;

use anyhow::Result;
use chatvec_format::DType;
use chatvec_merge::{ops, ExtractJob};

use super::common::{warn_if_swapped, HubArgs, OutputArgs, PairArgs, SelectArgs};

/// Extract arguments. The shared `--dtype` help speaks of a target; extract has none.
#[derive(clap::Args, Debug)]
#[command(mut_arg("dtype", |a| a.help("Vector dtype: bf16, f16, f32 (default: f32)")))]
pub struct Args {
    #[command(flatten)]
    pub pair: PairArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub hub: HubArgs,
}

/// Runs the extraction (float32 unless --dtype).
pub fn run(a: Args) -> Result<ExitCode> {
    let hub = a.hub.quiet(a.out.quiet || a.out.json);
    let mut plan = a.select.plan_options()?;
    plan.dtype = Some(plan.dtype.unwrap_or(DType::F32));
    let job = ExtractJob {
        base: hub.resolve(&a.pair.base)?,
        chat: hub.resolve(&a.pair.chat)?,
        plan,
        output: a.out.options(),
    };
    warn_if_swapped(&job.base, &job.chat);
    a.out.run_job(|bar, cancel| ops::extract(&job, bar, cancel), "")
}
