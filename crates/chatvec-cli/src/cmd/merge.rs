//! `chatvec merge`: TARGET + RATIO·(CHAT − BASE) in one streaming pass.

use std::process::ExitCode;

use anyhow::Result;
use chatvec_core::{ops, MergeJob};

use super::common::{check_ratio, interrupt_flag, Bar, HubArgs, OutputArgs, PairArgs, SelectArgs};

/// Merge arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub pair: PairArgs,
    /// The continually pre-trained model to give chat skills.
    #[arg(long, value_name = "MODEL")]
    pub target: String,
    /// How much of the chat vector to add (negative subtracts it).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub ratio: f64,
    /// chat-vector: T + r·(C − B); feature-porter: the vector damped where T moved far from B.
    #[arg(long, value_enum, default_value_t = Method::ChatVector)]
    pub method: Method,
    /// Feature-porter sigmoid steepness.
    #[arg(long, default_value_t = 12.0)]
    pub porter_steepness: f64,
    /// Feature-porter sigmoid shift.
    #[arg(long, default_value_t = 6.0)]
    pub porter_shift: f64,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Write the merged model as one GGUF file of this type (f32, f16, bf16, q8_0, q4_k_m, ...)
    /// at OUTPUT instead of a safetensors directory; an OUTPUT ending in .gguf implies it.
    #[arg(long, value_name = "TYPE")]
    pub gguf: Option<String>,
    #[command(flatten)]
    pub hub: HubArgs,
}

/// Merge methods.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The paper's rule.
    ChatVector,
    /// Element-wise damping by how far the target moved from the base.
    FeaturePorter,
}

/// Runs the merge.
pub fn run(a: Args) -> Result<ExitCode> {
    let hub = a.hub.quiet(a.out.quiet || a.out.json);
    check_ratio(a.ratio)?;
    let mut plan = a.select.plan_options()?;
    if a.method == Method::FeaturePorter {
        plan.porter = Some(ops::porter(a.porter_steepness, a.porter_shift));
    }
    let job = MergeJob {
        base: hub.resolve(&a.pair.base)?,
        chat: hub.resolve(&a.pair.chat)?,
        target: hub.resolve(&a.target)?,
        ratio: a.ratio,
        plan,
        output: a.out.options(),
    };
    let to_gguf = a.gguf.is_some() || a.out.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if to_gguf && !a.out.dry_run {
        return merge_to_gguf(&job, a.gguf.as_deref(), &a.out);
    }
    a.out.run_job(|bar, cancel| ops::merge(&job, bar, cancel), &format!(", ratio {}", a.ratio))
}

/// `merge --gguf`: the merged tensors go straight into one GGUF file.
fn merge_to_gguf(job: &MergeJob, ftype: Option<&str>, out: &OutputArgs) -> Result<ExitCode> {
    let ftype = super::export::file_type(ftype, &job.target.path)?;
    let cancel = interrupt_flag();
    let bar = Bar::new(out.quiet || out.json);
    let s = chatvec_gguf::sink::merge_to_gguf(job, &out.output, ftype, out.force, &bar, &cancel)?;
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "wrote {} ({} tensors, {:.1} MB; read {:.1} MB), ratio {}",
        out.output.display(),
        s.tensors,
        s.bytes as f64 / 1e6,
        s.bytes_read as f64 / 1e6,
        job.ratio
    );
    Ok(ExitCode::SUCCESS)
}
