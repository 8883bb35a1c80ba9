//! Chat behaviour on a Korean prompt set: does the model stop, answer in Korean, avoid loops and
//! leaked chat headers, and how likely is its end-of-turn token after a good answer.
//!
//! Every prompt is answered from an empty cache with the same sampling settings and seed, so a
//! run reproduces exactly and models are compared on equal terms.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use chatvec_gen::{generate, GenerationConfig, Message, SamplingParams, StopReason};
use serde::{Deserialize, Serialize};

use crate::metrics::{header_leaks, korean_ratio, repetition, strip_markers};
use chatvec_gen::ChatModel;

/// The bundled prompt set (JSON lines).
pub const BUNDLED_PROMPTS: &str = include_str!("../data/prompts_ko.jsonl");

/// One prompt of a prompt set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    /// Short identifier.
    pub id: String,
    /// question, instruction, coding, multi, ...
    #[serde(default)]
    pub category: String,
    /// The user's message.
    pub prompt: String,
    /// An optional system message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// An optional good answer, for the end-of-turn probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Parses JSON lines (blank lines and `#` comments skipped); errors name `source` and the line.
pub fn parse_prompts(text: &str, source: &str) -> Result<Vec<Prompt>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let p: Prompt =
            serde_json::from_str(line).with_context(|| format!("{source}:{}: not a prompt object", i + 1))?;
        if p.prompt.trim().is_empty() {
            bail!("{source}:{}: empty prompt", i + 1);
        }
        out.push(p);
    }
    if out.is_empty() {
        bail!("{source}: no prompts");
    }
    Ok(out)
}

/// The bundled set.
pub fn bundled_prompts() -> Vec<Prompt> {
    parse_prompts(BUNDLED_PROMPTS, "bundled prompts").expect("the bundled prompt set parses")
}

/// Reads a JSON-lines prompt file.
pub fn load_prompts(path: &Path) -> Result<Vec<Prompt>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse_prompts(&text, &path.display().to_string())
}

/// Settings of a chat evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct ChatOptions {
    /// Token limit per answer (the stop token counts).
    pub max_new_tokens: usize,
    /// Temperature (0 = greedy).
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: f64,
    /// Top-k (0 = off).
    pub top_k: usize,
    /// Seed, the same for every prompt.
    pub seed: u64,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions { max_new_tokens: 256, temperature: 0.7, top_p: 0.9, top_k: 50, seed: 1234 }
    }
}

impl ChatOptions {
    fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: (self.top_k > 0).then_some(self.top_k),
            repetition_penalty: 1.0,
            greedy: self.temperature == 0.0,
            seed: self.seed,
        }
    }
}

/// One answered prompt.
#[derive(Debug, Clone, Serialize)]
pub struct PromptResult {
    /// Prompt id.
    pub id: String,
    /// Prompt category.
    pub category: String,
    /// The prompt.
    pub prompt: String,
    /// The answer, special-token markers removed.
    pub answer: String,
    /// Generated tokens (the stop token included).
    pub tokens: usize,
    /// Characters in the answer.
    pub chars: usize,
    /// Ended by a stop id before the limit.
    pub stopped: bool,
    /// The stop token, when one ended the answer.
    pub stop_token: Option<String>,
    /// Hangul share of the letters outside code.
    pub korean_ratio: Option<f64>,
    /// Share of repeated word 3-grams.
    pub repetition: Option<f64>,
    /// Chat-header leaks in the answer.
    pub header_leaks: usize,
    /// P(end-of-turn token) right after the reference answer.
    pub eot_probability: Option<f64>,
    /// The end-of-turn token measured.
    pub eot_token: Option<String>,
    /// Seconds for this prompt.
    pub seconds: f64,
}

/// Totals over a prompt set.
#[derive(Debug, Clone, Serialize)]
pub struct ChatSummary {
    /// Prompts answered.
    pub prompts: usize,
    /// Share of answers ended by a stop id.
    pub stop_rate: f64,
    /// Mean Korean ratio over answers with letters.
    pub korean_ratio: Option<f64>,
    /// Mean repetition over answers of three words or more.
    pub repetition: Option<f64>,
    /// Mean generated tokens.
    pub mean_tokens: f64,
    /// Mean answer length in characters.
    pub mean_chars: f64,
    /// Share of answers with at least one header leak.
    pub leak_rate: f64,
    /// Mean end-of-turn probability over prompts with a reference.
    pub eot_probability: Option<f64>,
    /// The end-of-turn token measured.
    pub eot_token: Option<String>,
}

/// A chat evaluation of one model.
#[derive(Debug, Clone, Serialize)]
pub struct ChatEval {
    /// The model directory.
    pub model: String,
    /// Where its chat template came from.
    pub template_from: Option<String>,
    /// Settings.
    pub options: ChatOptions,
    /// Totals.
    pub summary: ChatSummary,
    /// Per prompt.
    pub results: Vec<PromptResult>,
    /// Wall time.
    pub seconds: f64,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// Summarises per-prompt results.
pub fn summarize(results: &[PromptResult]) -> ChatSummary {
    let n = results.len().max(1) as f64;
    ChatSummary {
        prompts: results.len(),
        stop_rate: results.iter().filter(|r| r.stopped).count() as f64 / n,
        korean_ratio: mean(results.iter().filter_map(|r| r.korean_ratio)),
        repetition: mean(results.iter().filter_map(|r| r.repetition)),
        mean_tokens: results.iter().map(|r| r.tokens as f64).sum::<f64>() / n,
        mean_chars: results.iter().map(|r| r.chars as f64).sum::<f64>() / n,
        leak_rate: results.iter().filter(|r| r.header_leaks > 0).count() as f64 / n,
        eot_probability: mean(results.iter().filter_map(|r| r.eot_probability)),
        eot_token: results.iter().find_map(|r| r.eot_token.clone()),
    }
}

fn messages(p: &Prompt) -> Vec<Message> {
    let mut m = Vec::new();
    if let Some(s) = &p.system {
        m.push(Message::new("system", s.clone()));
    }
    m.push(Message::new("user", p.prompt.clone()));
    m
}

/// Marks where the reference answer ends in the rendered conversation (a private-use character
/// no template or tokenizer treats specially).
const END_MARK: &str = "\u{F8FF}END\u{F8FF}";

/// P(end-of-turn) right after `reference` as the assistant's turn: the template renders the
/// conversation with the reference answer; the model reads it up to the answer's end; the
/// end-of-turn token is the first stop id the template writes after the answer.
/// Returns the probability and the token's text.
pub fn eot_probability(m: &mut ChatModel, p: &Prompt, reference: &str) -> Result<Option<(f64, String)>> {
    let Some(template) = &m.template else { return Ok(None) };
    let mut msgs = messages(p);
    msgs.push(Message::new("assistant", format!("{}{END_MARK}", reference.trim())));
    let text = template.render(&msgs, false)?;
    let Some(at) = text.find(END_MARK) else { return Ok(None) };
    let prefix = m.tokenizer.encode(&text[..at], false)?;
    let rest = m.tokenizer.encode(&text[at + END_MARK.len()..], false)?;
    let Some(&eot) = rest.iter().find(|id| m.stops.contains(**id)) else { return Ok(None) };
    if prefix.is_empty() {
        return Ok(None);
    }
    m.model.reset();
    let logits: Vec<f32> = m.model.forward_last(&prefix)?.to_vec1()?;
    m.model.reset();
    let nll = crate::perplexity::token_nll(&logits, eot);
    Ok(Some(((-nll).exp(), m.tokenizer.id_to_token(eot).unwrap_or_else(|| eot.to_string()))))
}

/// Answers one prompt.
pub fn answer(m: &mut ChatModel, p: &Prompt, opts: &ChatOptions, cancel: &AtomicBool) -> Result<PromptResult> {
    let started = Instant::now();
    let Some(template) = &m.template else {
        bail!(
            "{} has no chat template; pass --chat-template FILE (or evaluate it in `chatvec report`, which borrows the merged model's)",
            m.dir.display()
        )
    };
    let prompt_text = template.render(&messages(p), true)?;
    let ids = m.tokenizer.encode(&prompt_text, false)?;
    let config = GenerationConfig { max_new_tokens: opts.max_new_tokens, sampling: opts.sampling() };
    m.model.reset();
    let out = generate::<anyhow::Error, _>(&mut m.model, &ids, &config, &m.stops, |_| {
        Ok(if cancel.load(Ordering::Relaxed) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
    })?;
    m.model.reset();
    if out.stop == StopReason::Cancelled {
        bail!("interrupted");
    }
    let (body, stop_token) = match out.stop {
        StopReason::StopToken { id } => {
            (&out.tokens[..out.tokens.len() - 1], Some(m.tokenizer.id_to_token(id).unwrap_or_else(|| id.to_string())))
        }
        _ => (&out.tokens[..], None),
    };
    // Decoded with special tokens, so leaked headers stay visible to the leak count.
    let raw = m.tokenizer.decode(body, false)?;
    let text = strip_markers(&raw).trim().to_string();
    let eot = match &p.reference {
        Some(r) => eot_probability(m, p, r)?,
        None => None,
    };
    Ok(PromptResult {
        id: p.id.clone(),
        category: p.category.clone(),
        prompt: p.prompt.clone(),
        chars: text.chars().count(),
        korean_ratio: korean_ratio(&text),
        repetition: repetition(&text),
        header_leaks: header_leaks(&raw),
        answer: text,
        tokens: out.tokens.len(),
        stopped: stop_token.is_some(),
        stop_token,
        eot_probability: eot.as_ref().map(|e| e.0),
        eot_token: eot.map(|e| e.1),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs every prompt; `on_result` sees each result as it is made.
pub fn run_chat_eval(
    m: &mut ChatModel,
    prompts: &[Prompt],
    opts: &ChatOptions,
    cancel: &AtomicBool,
    on_result: &mut dyn FnMut(usize, &PromptResult),
) -> Result<ChatEval> {
    let started = Instant::now();
    let mut results = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let r = answer(m, p, opts, cancel).with_context(|| format!("prompt {}", p.id))?;
        on_result(i, &r);
        results.push(r);
    }
    Ok(ChatEval {
        model: m.dir.display().to_string(),
        template_from: m.template_from.clone(),
        options: opts.clone(),
        summary: summarize(&results),
        results,
        seconds: started.elapsed().as_secs_f64(),
    })
}
