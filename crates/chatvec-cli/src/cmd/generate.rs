//! `chatvec generate`: answer prompts through the model's chat template, once per requested
//! temperature: one answer streams its text; several are generated together as one batch and
//! printed in order. Also holds what `chat` shares: model loading and sampling flags.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use chatvec_gen::batch::{Batch, SeqRequest};
use chatvec_gen::models::{is_gguf, read_config};
use chatvec_gen::{
    ChatModel, ChatTemplate, GenError, GenerationConfig, GenerationDefaults, GenerationOutput, LoadOptions,
    SamplingParams, StopReason,
};
use serde_json::json;

use super::common::{existing_file, ComputeArgs, HubArgs};

/// Generate arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System prompt (put before the messages).
    #[arg(long)]
    pub system: Option<String>,
    /// The user's message; repeat it to answer several prompts together.
    #[arg(long, required_unless_present = "messages", conflicts_with = "messages")]
    pub prompt: Vec<String>,
    /// A JSON file with a list of {"role", "content"} messages, instead of --prompt.
    #[arg(long, value_name = "FILE", value_parser = existing_file)]
    pub messages: Option<PathBuf>,
    /// Sampling temperature; a comma-separated list runs once per value (e.g. 0.6,0.1,1.0).
    /// Default: generation_config.json's (sampling only if it sets do_sample).
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "greedy")]
    pub temperature: Vec<f64>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// With several prompts or temperatures: how many answers are generated together (one
    /// forward pass per token for all of them; the answers do not depend on it).
    #[arg(long, value_name = "N", default_value_t = chatvec_eval::chat_eval::DEFAULT_BATCH_SIZE, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch_size: usize,
    /// Print one JSON record at the end instead of streaming text and statistics.
    #[arg(long)]
    pub json: bool,
}

/// The model path (a directory or a GGUF file) and the directory its tokenizer, chat template
/// and generation config are read from (None: a GGUF's own metadata); the config is checked
/// first so mistakes fail fast.
fn model_and_tokenizer_dir(args: &ModelArgs) -> Result<(PathBuf, Option<PathBuf>)> {
    let path = Path::new(&args.model);
    if !is_gguf(path) {
        let dir = args.hub.resolve(&args.model)?.path;
        read_config(&dir)?;
        return Ok((dir.clone(), Some(dir)));
    }
    let Some(dir) = &args.tokenizer else { return Ok((path.to_path_buf(), None)) };
    if !dir.join("tokenizer.json").is_file() {
        bail!("--tokenizer {}: no tokenizer.json there", dir.display());
    }
    Ok((path.to_path_buf(), Some(dir.clone())))
}

/// Which model to load, where, and how its prompts are built and ended.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Model directory, hub id (org/name[@revision]), or a llama.cpp GGUF file (llama, mistral, qwen2, gemma).
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// For a GGUF model: a directory with Hugging Face tokenizer files (tokenizer.json,
    /// tokenizer_config.json) to use instead of the tokenizer in the file's metadata.
    #[arg(long, value_name = "DIR")]
    pub tokenizer: Option<PathBuf>,
    /// A Jinja chat template to use instead of the model's.
    #[arg(long, value_name = "FILE", value_parser = existing_file)]
    pub chat_template: Option<PathBuf>,
    /// Another token that ends the answer, as written in the vocabulary (repeatable).
    #[arg(long = "stop", value_name = "TOKEN")]
    pub stop: Vec<String>,
    #[command(flatten)]
    pub compute: ComputeArgs,
    #[command(flatten)]
    pub hub: HubArgs,
}

/// Sampling flags shared by `generate` and `chat`; unset ones come from the model's
/// generation_config.json, then transformers' defaults.
#[derive(clap::Args, Debug)]
pub struct SamplingArgs {
    /// Most tokens to generate per answer.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Nucleus sampling mass in (0, 1].
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Keep only the k most likely tokens (0 disables; transformers' default is 50).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Penalise tokens already in the context (1 disables).
    #[arg(long)]
    pub repetition_penalty: Option<f64>,
    /// Random seed; the same seed and flags give the same answer (default: from the clock,
    /// reported at the end).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Always take the most likely token.
    #[arg(long)]
    pub greedy: bool,
    /// A prompt longer than the model's context: `error`, or `left` to drop its oldest tokens
    /// (with a warning).
    #[arg(long, value_enum, default_value_t = Truncate::Error)]
    pub truncate: Truncate,
}

/// What to do with a prompt that does not fit the context.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncate {
    /// Stop with an error.
    Error,
    /// Keep the newest tokens, leaving room for the answer.
    Left,
}

impl SamplingArgs {
    /// Parameters for one run: flags over generation_config.json over transformers' defaults.
    /// A given temperature turns sampling on, as users comparing temperatures expect.
    pub fn params(&self, defaults: &GenerationDefaults, temperature: Option<f64>, seed: u64) -> Result<SamplingParams> {
        let params = SamplingParams {
            temperature: temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            top_k: match self.top_k {
                Some(0) => None,
                Some(k) => Some(k),
                None => defaults.top_k,
            },
            repetition_penalty: self.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            greedy: self.greedy || (temperature.is_none() && !defaults.do_sample),
            seed,
        };
        params.validate()?;
        Ok(params)
    }

    /// The seed to use: the flag, else one from the clock.
    pub fn seed(&self) -> u64 {
        self.seed
            .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0))
    }
}

/// A loaded model with everything needed to turn messages into an answer, and the sampling
/// defaults of its `generation_config.json`.
pub struct Session {
    pub chat: ChatModel,
    pub defaults: GenerationDefaults,
    pub device_name: String,
    /// The longest token of the vocabulary in UTF-8 bytes: a text of N bytes has at least
    /// N / this many tokens, which bounds the work spent on a prompt too long for the context.
    pub longest_token: usize,
}

impl Session {
    /// Resolves and loads the model; cheap checks (config, tokenizer, template) come before the
    /// weights so mistakes fail fast.
    pub fn open(args: &ModelArgs) -> Result<Self> {
        Self::load(args, true)
    }

    /// As [`open`](Self::open); without `require_template` a model without a chat template
    /// loads too (`serve` answers completions with it).
    pub fn load(args: &ModelArgs, require_template: bool) -> Result<Self> {
        let (model_path, dir) = model_and_tokenizer_dir(args)?;
        let defaults = dir.as_deref().map(GenerationDefaults::for_model).transpose()?.unwrap_or_default();
        let (dtype, note) = args.compute.generation_dtype();
        if let Some(note) = note {
            eprintln!("note: {note}");
        }
        let opts = LoadOptions {
            model: args.compute.model_options(dtype),
            chat_template: args.chat_template.clone(),
            stop: args.stop.clone(),
            require_template,
        };
        let chat = match &dir {
            Some(dir) => ChatModel::load_from(&model_path, dir, &opts, None)?,
            None => ChatModel::load_gguf(&model_path, &opts)?,
        };
        let longest_token = chat.tokenizer.inner().get_vocab(true).keys().map(String::len).max().unwrap_or(1).max(1);
        Ok(Session { chat, defaults, device_name: args.compute.device.name.clone(), longest_token })
    }

    /// The chat template (loading refused models without one).
    pub fn template(&self) -> Result<&ChatTemplate> {
        Ok(self.chat.chat_template()?)
    }

    /// Generates an answer to `prompt` ids, writing text to `out` as it is made (when given),
    /// until a stop id, the length limit, or `interrupt`. Returns the result and the text.
    pub fn answer(
        &mut self,
        prompt: &[u32],
        config: &GenerationConfig,
        mut out: Option<&mut dyn Write>,
        interrupt: &AtomicBool,
    ) -> Result<(GenerationOutput, String)> {
        self.chat.answer::<anyhow::Error>(prompt, config, |chunk| {
            if let Some(w) = out.as_deref_mut() {
                w.write_all(chunk.as_bytes())?;
                w.flush()?;
            }
            Ok(if interrupt.swap(false, Ordering::SeqCst) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
        })
    }

    /// The token ids of the rendered prompt `text`, cut to the context as `--truncate` asks
    /// ([`fit_context`](Self::fit_context)). The work is bounded by the context first: a text
    /// of more bytes than the context can hold (positions × the longest token, doubled for
    /// normalizers that shrink text) is refused with `error`, and only its last that many
    /// bytes are tokenized with `left` (they hold more tokens than the context keeps).
    pub fn encode_prompt(&self, text: &str, truncate: Truncate, max_new_tokens: usize) -> Result<Vec<u32>> {
        let limit = self.chat.model.config().max_position_embeddings;
        let bound = limit.saturating_mul(self.longest_token).saturating_mul(2);
        let text = match (text.len() > bound, truncate) {
            (false, _) => text,
            (true, Truncate::Error) => bail!(
                "the prompt's {} bytes make at least {} tokens, which do not fit the model's context of \
                 {limit} positions; shorten it or pass --truncate left",
                text.len(),
                text.len() / (2 * self.longest_token)
            ),
            (true, Truncate::Left) => {
                let cut = (text.len() - bound..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
                &text[cut..]
            }
        };
        let prompt = self.chat.tokenizer.encode(text, false)?;
        Ok(self.fit_context(prompt, truncate, max_new_tokens))
    }

    /// `prompt` cut to the model's context as `--truncate` asks: unchanged when it fits or when
    /// truncation is off (generation then reports the overflow); with `left`, the newest tokens
    /// that leave room for `max_new_tokens` (at least half the context), with a warning.
    pub fn fit_context(&self, prompt: Vec<u32>, truncate: Truncate, max_new_tokens: usize) -> Vec<u32> {
        let limit = self.chat.model.config().max_position_embeddings;
        if prompt.len() <= limit || truncate == Truncate::Error {
            return prompt;
        }
        let keep = limit.saturating_sub(max_new_tokens).max(limit / 2).max(1);
        eprintln!(
            "warning: the prompt has {} tokens and the context {limit}; dropped its first {} (--truncate left)",
            prompt.len(),
            prompt.len() - keep
        );
        prompt[prompt.len() - keep..].to_vec()
    }

    /// The statistics line printed to stderr after an answer.
    pub fn stats_line(&self, out: &GenerationOutput, max_new_tokens: usize) -> String {
        let rate =
            out.decode_tokens_per_second().map(|r| format!("{r:.1} tokens/s")).unwrap_or_else(|| "n/a".to_string());
        format!(
            "prompt tokens {}, new tokens {}, stop {}, time to first token {:.3} s, decode {}",
            out.prompt_tokens,
            out.tokens.len(),
            self.chat.describe_stop(out.stop, max_new_tokens),
            out.time_to_first_token.as_secs_f64(),
            rate
        )
    }
}

/// Reads `--messages FILE`: a JSON list of objects with a string `role`.
fn read_messages(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let list = match value {
        serde_json::Value::Array(list) if list.iter().all(|m| m.get("role").and_then(|r| r.as_str()).is_some()) => list,
        _ => bail!("{}: expected a JSON list of {{\"role\", \"content\"}} messages", path.display()),
    };
    Ok(list)
}

/// One answer to produce: which prompt, at which temperature.
struct Run {
    prompt: usize,
    sampling: SamplingParams,
}

/// Runs `chatvec generate`.
pub fn run(a: Args) -> Result<ExitCode> {
    let mut conversations = Vec::new();
    match (a.prompt.as_slice(), &a.messages) {
        ([_, ..], None) => conversations.extend(a.prompt.iter().map(|p| vec![json!({"role": "user", "content": p})])),
        ([], Some(file)) => conversations.push(read_messages(file)?),
        _ => bail!("give exactly one of --prompt and --messages"),
    }
    if let Some(system) = &a.system {
        conversations.iter_mut().for_each(|c| c.insert(0, json!({"role": "system", "content": system})));
    }
    // Validate the sampling flags before the (slow) model load.
    let seed = a.sampling.seed();
    let temperatures: Vec<Option<f64>> =
        if a.temperature.is_empty() { vec![None] } else { a.temperature.iter().copied().map(Some).collect() };
    for t in &temperatures {
        a.sampling.params(&GenerationDefaults::default(), *t, seed)?;
    }

    let mut session = Session::open(&a.model)?;
    let mut prompts = Vec::with_capacity(conversations.len());
    for messages in conversations {
        let text = session.template()?.render_json(&serde_json::Value::Array(messages), true)?;
        let ids = session.encode_prompt(&text, a.sampling.truncate, a.sampling.max_new_tokens)?;
        prompts.push((text, ids));
    }
    let mut runs = Vec::new();
    for prompt in 0..prompts.len() {
        for t in &temperatures {
            runs.push(Run { prompt, sampling: a.sampling.params(&session.defaults, *t, seed)? });
        }
    }
    let interrupt = super::common::interrupt_flag();
    let outputs = if runs.len() == 1 {
        stream_one(&mut session, &prompts[0].1, &runs[0].sampling, &a, &interrupt)?
    } else {
        batched(&session, &prompts, &runs, &a, &interrupt)?
    };
    let records: Vec<serde_json::Value> = runs
        .iter()
        .zip(&outputs)
        .map(|(run, (out, text))| {
            let mut r = run_record(&session, &run.sampling, out, text);
            if prompts.len() > 1 {
                r["prompt_index"] = run.prompt.into();
            }
            r
        })
        .collect();
    if a.json {
        let mut record = json!({
            "model": session.chat.dir.display().to_string(),
            "architecture": session.chat.model.architecture().to_string(),
            "device": session.device_name,
            "dtype": format!("{:?}", session.chat.model.dtype()).to_lowercase(),
            "stop_ids": session.chat.stops.ids(),
            "runs": records,
        });
        if let [(text, ids)] = prompts.as_slice() {
            record["prompt_text"] = text.as_str().into();
            record["prompt_tokens"] = ids.len().into();
        } else {
            record["prompts"] =
                prompts.iter().map(|(t, ids)| json!({"prompt_text": t, "prompt_tokens": ids.len()})).collect();
        }
        println!("{}", serde_json::to_string_pretty(&record)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// One answer, its text streamed to stdout as it is made (unless --json).
fn stream_one(
    session: &mut Session,
    prompt: &[u32],
    sampling: &SamplingParams,
    a: &Args,
    interrupt: &AtomicBool,
) -> Result<Vec<(GenerationOutput, String)>> {
    let config = GenerationConfig { max_new_tokens: a.sampling.max_new_tokens, sampling: sampling.clone() };
    let (out, text) = if a.json {
        session.answer(prompt, &config, None, interrupt)?
    } else {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        let result = session.answer(prompt, &config, Some(&mut lock), interrupt)?;
        writeln!(lock)?;
        lock.flush()?;
        result
    };
    if !a.json {
        let seed = if sampling.is_greedy() { String::new() } else { format!(", seed {}", sampling.seed) };
        eprintln!("{}{seed}", super::common::terminal_safe(&session.stats_line(&out, config.max_new_tokens)));
    }
    Ok(vec![(out, text)])
}

/// Several answers generated together, `--batch-size` at a time; each is printed (unless
/// --json) once all are done, in order.
fn batched(
    session: &Session,
    prompts: &[(String, Vec<u32>)],
    runs: &[Run],
    a: &Args,
    interrupt: &AtomicBool,
) -> Result<Vec<(GenerationOutput, String)>> {
    let chat = &session.chat;
    let limit = chat.model.config().max_position_embeddings;
    let mut requests = Vec::with_capacity(runs.len());
    for run in runs {
        let ids = &prompts[run.prompt].1;
        if ids.len() > limit {
            return Err(GenError::ContextFull { tokens: ids.len(), limit }.into());
        }
        // An answer that reaches the end of the context stops there, as `generate` stops it.
        let max_new_tokens = a.sampling.max_new_tokens.min(limit - ids.len());
        requests.push(SeqRequest::new(ids.clone(), max_new_tokens, run.sampling.clone(), chat.stops.clone()));
    }
    let mut batch = Batch::new(&chat.model, a.batch_size);
    let outputs = batch.run(requests, &|| interrupt.load(Ordering::SeqCst), &mut |_, _| {})?;
    let mut done = Vec::with_capacity(outputs.len());
    for (i, (run, seq)) in runs.iter().zip(outputs).enumerate() {
        let mut out = seq.output;
        let ids = &prompts[run.prompt].1;
        if out.stop == StopReason::Length
            && out.tokens.len() < a.sampling.max_new_tokens
            && ids.len() + out.tokens.len() >= limit
        {
            out.stop = StopReason::Context;
        }
        let text = answer_text(chat, &out)?;
        if !a.json {
            eprintln!("[prompt {}, temperature {}]", run.prompt + 1, run.sampling.temperature);
            println!("{text}");
            let seed = if i == 0 && !run.sampling.is_greedy() {
                format!(", seed {}", run.sampling.seed)
            } else {
                String::new()
            };
            eprintln!("{}{seed}", super::common::terminal_safe(&session.stats_line(&out, a.sampling.max_new_tokens)));
        }
        done.push((out, text));
    }
    Ok(done)
}

/// The answer's text as [`ChatModel::answer`] streams it: every token but a final stop id.
fn answer_text(chat: &ChatModel, out: &GenerationOutput) -> Result<String> {
    let body = match out.stop {
        StopReason::StopToken { .. } => &out.tokens[..out.tokens.len() - 1],
        _ => &out.tokens[..],
    };
    let mut stream = chat.tokenizer.stream();
    let mut text = String::new();
    for &id in body {
        if let Some(chunk) = stream.step(id)? {
            text.push_str(&chunk);
        }
    }
    if let Some(rest) = stream.finish()? {
        text.push_str(&rest);
    }
    Ok(text)
}

fn run_record(session: &Session, sampling: &SamplingParams, out: &GenerationOutput, text: &str) -> serde_json::Value {
    let stop = match out.stop {
        StopReason::StopToken { id } => json!({
            "kind": "stop_token",
            "id": id,
            "token": session.chat.tokenizer.id_to_token(id),
        }),
        StopReason::Length => json!({"kind": "length"}),
        StopReason::Cancelled => json!({"kind": "cancelled"}),
        StopReason::Context => json!({"kind": "context"}),
    };
    json!({
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "repetition_penalty": sampling.repetition_penalty,
        "greedy": sampling.is_greedy(),
        "seed": sampling.seed,
        "text": text,
        "new_tokens": out.tokens.len(),
        "token_ids": out.tokens,
        "stop": stop,
        "reused_prompt_tokens": out.reused_prompt_tokens,
        "time_to_first_token_s": out.time_to_first_token.as_secs_f64(),
        "decode_tokens_per_second": out.decode_tokens_per_second(),
    })
}
