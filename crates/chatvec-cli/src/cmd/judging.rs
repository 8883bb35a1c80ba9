//! The flags and helpers every command that judges models shares (`eval`, `report`, `sweep`):
//! where models compute, the perplexity window, the chat-evaluation settings, reading the text,
//! and the progress line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chatvec_eval::chat_eval::{bundled_prompts, load_prompts, ChatOptions, Prompt, DEFAULT_BATCH_SIZE};
use chatvec_eval::perplexity::Window;
use chatvec_gen::LoadOptions;

use super::common::{existing_file, ComputeArgs};

/// Where and how models are computed.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// A Jinja chat template for models without one (or to override theirs).
    #[arg(long, value_name = "FILE", value_parser = existing_file)]
    pub chat_template: Option<PathBuf>,
}

impl DeviceArgs {
    /// Load options from the flags.
    pub fn options(&self) -> Result<LoadOptions> {
        Ok(LoadOptions {
            model: self.compute.model_options(self.compute.eval_dtype()),
            chat_template: self.chat_template.clone(),
            ..LoadOptions::default()
        })
    }
}

impl DeviceArgs {
    /// With `--endpoint` the server computes: the flags that only set how models load here are
    /// refused, naming the first one given.
    pub fn refuse_with_endpoint(&self) -> Result<()> {
        let c = &self.compute;
        let given = [
            (c.quantize.is_some(), "--quantize"),
            (c.compute_dtype.is_some(), "--dtype"),
            (c.device.name != "cpu", "--device"),
            (c.no_memory_check, "--no-memory-check"),
            (self.chat_template.is_some(), "--chat-template"),
        ];
        if let Some((_, flag)) = given.iter().find(|(on, _)| *on) {
            bail!(
                "{flag} sets how models load here, and --endpoint loads none: give it to the server \
                 (e.g. `chatvec serve {flag} ...`)"
            );
        }
        Ok(())
    }
}

/// The window when neither --context nor the model's positions say less.
const DEFAULT_CONTEXT: usize = 1024;

/// The fewest positions (`max_position_embeddings`) among `models`: the longest window all of
/// them can score. A config without the key does not limit it.
pub fn max_positions(models: &[&Path]) -> Result<usize> {
    models.iter().try_fold(usize::MAX, |least, dir| {
        let config = chatvec_format::ModelConfig::load(dir)?;
        Ok(least.min(config.max_position_embeddings().unwrap_or(usize::MAX)))
    })
}

/// Sliding-window settings.
#[derive(clap::Args, Debug, Clone)]
pub struct WindowArgs {
    /// Most tokens per forward pass (default: 1024, or the model's max_position_embeddings when
    /// it has fewer positions; more than it has is refused).
    #[arg(long)]
    pub context: Option<usize>,
    /// Tokens between window starts (default: half the context); each window scores only the
    /// tokens after the previous window's end (HF's perplexity guide).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Score only the first N tokens of the text.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
}

impl WindowArgs {
    /// The window from the flags.
    /// The window for models of `positions` positions (`max_position_embeddings`): a window
    /// longer than that would run the model past the positions it was trained on.
    pub fn window(&self, positions: usize) -> Result<Window> {
        let context = match self.context {
            Some(c) if c > positions => bail!(
                "--context {c} is beyond the model's {positions} positions (max_position_embeddings); \
                 give --context {positions} or less"
            ),
            Some(c) => c,
            None => DEFAULT_CONTEXT.min(positions),
        };
        Ok(Window::new(context, self.stride.unwrap_or((context / 2).max(1)))?)
    }
}

/// Generation settings of a chat evaluation.
#[derive(clap::Args, Debug, Clone)]
pub struct ChatGenArgs {
    /// Token limit per answer.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Nucleus mass.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Seed, the same for every prompt, so runs reproduce.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Only the first N prompts.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Prompts answered together, one forward pass per token for all of them (the answers do
    /// not depend on it); through an endpoint (eval chat, report), the requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH_SIZE, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch_size: usize,
}

impl ChatGenArgs {
    /// Options from the flags.
    pub fn options(&self) -> ChatOptions {
        ChatOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            batch_size: self.batch_size,
        }
    }

    /// The prompt set: FILE or the bundled one, cut to --limit.
    pub fn prompts(&self, file: Option<&Path>) -> Result<Vec<Prompt>> {
        let mut p = match file {
            Some(f) => load_prompts(f)?,
            None => bundled_prompts(),
        };
        if let Some(n) = self.limit {
            p.truncate(n.max(1));
        }
        Ok(p)
    }
}

/// Reads a text file as Python's `open()` would (CRLF → LF).
pub fn read_text(path: &Path) -> Result<String> {
    let t = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read as UTF-8 text", path.display()))?;
    Ok(t.replace("\r\n", "\n"))
}

/// One line per prompt, for people watching a run.
pub fn progress_line(i: usize, n: usize, r: &chatvec_eval::chat_eval::PromptResult) {
    eprintln!(
        "[{}/{n}] {:<4} {:>4} tokens {}  korean {}  {:.1}s",
        i + 1,
        r.id,
        r.tokens,
        if r.stopped { "stopped" } else { "at limit" },
        r.korean_ratio.map_or_else(|| "-".into(), |k| format!("{:.0}%", 100.0 * k)),
        r.seconds
    );
}
