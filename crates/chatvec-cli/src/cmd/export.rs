//! `chatvec export gguf`: a model as one GGUF file for llama.cpp, ollama or LM Studio.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use chatvec_gguf::FileType;

use super::common::{interrupt_flag, parse_gguf_type, Bar, HubArgs};

/// Export arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub format: Format,
}

/// Export formats.
#[derive(clap::Subcommand, Debug)]
pub enum Format {
    /// One GGUF file with the bytes llama.cpp's convert_hf_to_gguf.py writes (f32/f16/bf16/q8_0),
    /// or llama-quantize's k-quant mixes (q4_k_m, q5_k_m, q6_k), streamed tensor by tensor.
    Gguf(GgufArgs),
}

/// `export gguf` arguments.
#[derive(clap::Args, Debug)]
pub struct GgufArgs {
    /// The model: a directory or a hub id in the HF cache (Llama, Mistral, Qwen2, Gemma).
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// The GGUF file to write (written beside it and renamed into place when complete).
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// Element type: f32, f16, bf16, q8_0, q4_k_m, q5_k_m, q6_k. Default: the model's own
    /// float type (bf16 stays bf16, anything else f16), as the converter's `auto`.
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_gguf_type)]
    pub ftype: Option<FileType>,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub hub: HubArgs,
}

/// Runs the export.
pub fn run(a: Args) -> Result<ExitCode> {
    let Format::Gguf(a) = a.format;
    let model = a.hub.resolve(&a.model)?;
    let ftype = file_type(a.ftype, &model.path)?;
    let cancel = interrupt_flag();
    let bar = Bar::new(a.quiet);
    let s = chatvec_gguf::export(&model.path, &a.output, ftype, a.force, &bar, &cancel)?;
    eprintln!("wrote {} ({} tensors, {}, {:.1} MB)", a.output.display(), s.tensors, s.arch, s.bytes as f64 / 1e6);
    Ok(ExitCode::SUCCESS)
}

/// `--type`, or the converter's `auto` choice from the model's config dtype.
pub fn file_type(given: Option<FileType>, model_dir: &Path) -> Result<FileType> {
    if let Some(t) = given {
        return Ok(t);
    }
    // A missing or broken config is reported by the export itself, naming the file.
    let dtype = chatvec_format::ModelConfig::load(model_dir).ok().and_then(|c| c.dtype());
    Ok(if dtype == Some(chatvec_format::DType::BF16) { FileType::BF16 } else { FileType::F16 })
}
