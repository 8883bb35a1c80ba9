//! `chatvec merge`: TARGET + RATIO·(CHAT − BASE) in one streaming pass, for one ratio or several.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use chatvec_merge::{ops, MergeJob, OutputOptions};

use super::common::{
    interrupt_flag, parse_gguf_type, parse_ratio, print_next_step, warn_if_swapped, Bar, HubArgs, OutputArgs, PairArgs,
    SelectArgs,
};

/// Merge arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub pair: PairArgs,
    /// The continually pre-trained model to give chat skills.
    #[arg(long, value_name = "MODEL")]
    pub target: String,
    /// How much of the chat vector to add. Several, comma-separated (0.3,0.5,1.0), write one
    /// model per ratio in one pass over the inputs: to OUTPUT-r0.3, OUTPUT-r0.5, ..., or where
    /// `{ratio}` stands in OUTPUT.
    #[arg(
        long,
        visible_alias = "ratios",
        default_value = "1.0",
        value_delimiter = ',',
        num_args = 1..,
        allow_negative_numbers = true,
        value_parser = parse_ratio
    )]
    pub ratio: Vec<f64>,
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
    #[arg(long, value_name = "TYPE", value_parser = parse_gguf_type)]
    pub gguf: Option<chatvec_gguf::FileType>,
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
    let mut plan = a.select.plan_options()?;
    if a.method == Method::FeaturePorter {
        plan.porter = Some(ops::porter(a.porter_steepness, a.porter_shift));
    }
    let job = MergeJob {
        base: hub.resolve(&a.pair.base)?,
        chat: hub.resolve(&a.pair.chat)?,
        target: hub.resolve(&a.target)?,
        ratio: a.ratio[0],
        plan,
        output: a.out.options(),
    };
    warn_if_swapped(&job.base, &job.chat);
    let to_gguf = a.gguf.is_some() || a.out.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if to_gguf && a.ratio.len() > 1 {
        bail!("--gguf writes one ratio; give a single --ratio");
    }
    if to_gguf && !a.out.dry_run {
        return merge_to_gguf(&job, a.gguf, &a.out);
    }
    if let [ratio] = a.ratio[..] {
        let code = a.out.run_job(|bar, cancel| ops::merge(&job, bar, cancel), &format!(", ratio {ratio}"))?;
        print_next_step(&a.out, &a.out.output);
        return Ok(code);
    }
    let outputs = a
        .ratio
        .iter()
        .map(|&r| Ok((r, OutputOptions { path: ratio_output(&a.out.output, r)?, ..a.out.options() })))
        .collect::<Result<Vec<_>>>()?;
    let extras: Vec<String> = a.ratio.iter().map(|r| format!(", ratio {r}")).collect();
    let code = a.out.run_jobs(|bar, cancel| ops::merge_ratios(&job, &outputs, bar, cancel), &extras)?;
    print_next_step(&a.out, &outputs[0].1.path);
    Ok(code)
}

/// The output directory of `ratio` in a several-ratio merge: `{ratio}` in `out` replaced by it, or
/// `-r<ratio>` appended to the directory name.
pub fn ratio_output(out: &Path, ratio: f64) -> Result<PathBuf> {
    let text = out.to_string_lossy();
    if text.contains("{ratio}") {
        return Ok(PathBuf::from(text.replace("{ratio}", &ratio.to_string())));
    }
    let Some(name) = out.file_name() else { bail!("{}: not a usable output path", out.display()) };
    Ok(out.with_file_name(format!("{}-r{ratio}", name.to_string_lossy())))
}

/// `merge --gguf`: the merged tensors go straight into one GGUF file.
fn merge_to_gguf(job: &MergeJob, ftype: Option<chatvec_gguf::FileType>, out: &OutputArgs) -> Result<ExitCode> {
    let ftype = super::export::file_type(ftype, &job.target.path)?;
    let cancel = interrupt_flag();
    let bar = Bar::new(out.quiet || out.json);
    let s = crate::merge_gguf::merge_to_gguf(job, &out.output, ftype, out.force, &bar, &cancel)?;
    for w in &s.warnings {
        eprintln!("warning: {}", super::common::terminal_safe(w));
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
