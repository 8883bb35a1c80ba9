//! The `chatvec` binary: parses arguments and hands each subcommand to its module in `cmd/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod merge_gguf;

/// Give a language-adapted LLM chat skills by weight arithmetic (the chat-vector method).
#[derive(Parser)]
#[command(name = "chatvec", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write TARGET + RATIO·(CHAT − BASE) as a complete model, streaming tensor by tensor.
    Merge(cmd::merge::Args),
    /// Write the chat vector CHAT − BASE as a checkpoint with a chatvec.json manifest.
    Extract(cmd::extract::Args),
    /// Add one or more extracted vectors to a target model.
    Apply(cmd::apply::Args),
    /// Write a model in another format (GGUF for llama.cpp and ollama).
    Export(cmd::export::Args),
    /// Generate an answer with the model's chat template and sampling.
    Generate(cmd::generate::Args),
    /// Chat with a model in the terminal (or over piped stdin).
    ///
    /// Piped, each line is one message and each answer one line. A line that cannot be answered
    /// (longer than the model's context can hold, not UTF-8, refused by the chat template) is
    /// skipped with an error naming its number; the chat goes on, and exits with status 1.
    Chat(cmd::chat::Args),
    /// Show what a chat vector changes: per-tensor and per-layer norms, heatmap.
    Inspect(cmd::inspect::Args),
    /// Judge a model: perplexity on text, or chat behaviour on a prompt set.
    Eval(cmd::eval::Args),
    /// Evaluate target, merged (and chat/base) models into one HTML report.
    Report(cmd::report::Args),
    /// Serve models behind an OpenAI-compatible API, with a side-by-side page at /.
    Serve(cmd::serve::Args),
    /// Merge at several ratios and evaluate each, to pick the best setting.
    Sweep(cmd::sweep::Args),
    /// Fetch a hub model (org/name[@revision]) into the Hugging Face cache ahead of time.
    Download(cmd::download::Args),
    /// The miniature of the paper's experiment: train base/chat/target, merge, evaluate.
    Lab(cmd::lab::Args),
}

fn main() -> ExitCode {
    // Forward passes reuse their freed activation buffers (the allocator's limits, before any thread).
    chatvec_gen::alloc::reuse_freed_buffers();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    // A forced SIMD tier is checked before any work: a name that is not a tier, or one this
    // CPU lacks, is refused (the kernels would otherwise fall back without saying so).
    if let Err(e) = chatvec_format::SimdTier::from_env() {
        eprintln!("error: {}", cmd::common::terminal_safe(&e.to_string()));
        return ExitCode::FAILURE;
    }
    // An input truncated under a run ends it with one line, and its temporary output removed.
    chatvec_format::fault::install();
    let result = match cli.command {
        Command::Merge(a) => cmd::merge::run(a),
        Command::Extract(a) => cmd::extract::run(a),
        Command::Apply(a) => cmd::apply::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Sweep(a) => cmd::sweep::run(a),
        Command::Download(a) => cmd::download::run(a),
        Command::Lab(a) => cmd::lab::run(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", one_line(&err));
            if err.chain().any(is_interrupted) {
                return ExitCode::from(cmd::common::interrupted_exit_code());
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` says the user stopped the run (Ctrl-C), in any of the libraries' error types.
fn is_interrupted(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(e.downcast_ref(), Some(chatvec_format::Error::Interrupted))
        || e.downcast_ref::<chatvec_merge::Error>().is_some_and(chatvec_merge::Error::is_interrupted)
        || e.downcast_ref::<chatvec_hub::Error>().is_some_and(chatvec_hub::Error::is_interrupted)
        || matches!(e.downcast_ref(), Some(chatvec_eval::EvalError::Interrupted))
}

/// A value a flag's parser refused (`--quantize q9`, `--ratio nan`, a `--text` file that does
/// not exist) is one line, as every other bad input is: clap's own rendering adds a pointer to
/// `--help`. Other clap errors (a missing flag, `--help` itself) print as clap prints them.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if err.kind() != ErrorKind::ValueValidation {
        err.exit();
    }
    let text = err.to_string();
    eprintln!("{}", cmd::common::terminal_safe(text.lines().next().unwrap_or_default()));
    ExitCode::from(2)
}

/// The error and its causes on one line, each cause once: library errors often print their
/// source in their own message ("x (os error 2)"), which `{:#}` would repeat.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain().map(|c| c.to_string()) {
        if line.contains(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    cmd::common::terminal_safe(&line.replace('\n', " ")).into_owned()
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

#[cfg(test)]
mod tests;
