//! `chatvec apply`: TARGET + Σ RATIO_i·VECTOR_i for vectors written by `chatvec extract`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use chatvec_merge::{ops, ApplyJob};

use super::common::{parse_ratio, print_next_step, HubArgs, OutputArgs, SelectArgs};

/// Apply arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model to add the vectors to.
    #[arg(long, value_name = "MODEL")]
    pub target: String,
    /// A vector directory from `chatvec extract`; repeat for several.
    #[arg(long, value_name = "DIR", required = true)]
    pub vector: Vec<String>,
    /// Ratio of each vector, in the order given (one ratio for all, or one per vector).
    #[arg(long, default_values_t = [1.0], allow_negative_numbers = true, value_parser = parse_ratio)]
    pub ratio: Vec<f64>,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub hub: HubArgs,
}

/// Runs the apply.
pub fn run(a: Args) -> Result<ExitCode> {
    let hub = a.hub.quiet(a.out.quiet || a.out.json);
    let ratios: Vec<f64> = match (a.ratio.len(), a.vector.len()) {
        (1, n) => vec![a.ratio[0]; n],
        (r, n) if r == n => a.ratio.clone(),
        (r, n) => bail!("{n} vectors but {r} ratios: give one ratio, or one per vector"),
    };
    let vectors = a.vector.iter().zip(&ratios).map(|(v, r)| Ok((hub.resolve(v)?, *r))).collect::<Result<Vec<_>>>()?;
    let job =
        ApplyJob { target: hub.resolve(&a.target)?, vectors, plan: a.select.plan_options()?, output: a.out.options() };
    let code = a.out.run_job(|bar, cancel| ops::apply(&job, bar, cancel), &format!(", ratios {ratios:?}"))?;
    print_next_step(&a.out, &a.out.output);
    Ok(code)
}
