//! Chat behaviour on a Korean prompt set: does the model stop, answer in Korean, avoid loops and
//! leaked chat headers, and how likely is its end-of-turn token after a good answer.
//!
//! Every prompt is answered with the same sampling settings and seed, so a run reproduces
//! exactly and models are compared on equal terms. The prompts are answered together,
//! `batch_size` at a time, by `chatvec_gen::batch`: each answer is the one the prompt would get
//! alone, from an empty cache. A prompt with a reference answer starts from the cache of its
//! end-of-turn pass, which has already read the prompt.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chatvec_gen::batch::{Batch, SeqOutput, SeqRequest};
use chatvec_gen::models::{KvCache, Logits, SeqInput};
use chatvec_gen::{GenError, Message, SamplingParams, StopReason};
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
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
        let at =
            |problem: String| EvalError::PromptFile { source_name: source.to_string(), line: Some(i + 1), problem };
        let p: Prompt = serde_json::from_str(line).map_err(|e| at(format!("not a prompt object: {e}")))?;
        if p.prompt.trim().is_empty() {
            return Err(at("empty prompt".into()));
        }
        out.push(p);
    }
    if out.is_empty() {
        let problem = "no prompts".to_string();
        return Err(EvalError::PromptFile { source_name: source.to_string(), line: None, problem });
    }
    Ok(out)
}

/// The bundled set.
pub fn bundled_prompts() -> Vec<Prompt> {
    parse_prompts(BUNDLED_PROMPTS, "bundled prompts").expect("the bundled prompt set parses")
}

/// Reads a JSON-lines prompt file.
pub fn load_prompts(path: &Path) -> Result<Vec<Prompt>> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, "read", e))?;
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
    /// Prompts answered together (one forward pass per token for all of them); the answers do
    /// not depend on it.
    #[serde(skip)]
    pub batch_size: usize,
}

/// Prompts answered together unless told otherwise. gen's q8_0 and bf16 kernels are a blocked
/// GEMM that reads each weight once for up to 64 input rows, so a decode step of many sequences
/// reads the weights once, as one of a single sequence does. (Before that GEMM, rows beyond four
/// widened every weight to f32 first: on a loaded 2-core EPYC, 1B shape at q8_0, `eval chat
/// --limit 8 --max-new-tokens 32` took 207 s one prompt at a time, 135 s at 4, 193 s at 8.)
/// 32 answers the 33 bundled prompts in two rounds (17 and 16, see `balanced_width`), where 16
/// took three (16, 16 and 1): at 8B every round costs 128 steps that each read 8.5 GB of q8_0
/// weights. The running sequences' caches take what 16 took.
pub const DEFAULT_BATCH_SIZE: usize = 32;

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            max_new_tokens: 256,
            temperature: 0.7,
            top_p: 0.9,
            top_k: 50,
            seed: 1234,
            batch_size: DEFAULT_BATCH_SIZE,
        }
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
    /// Seconds from the start of the evaluation to this answer's end (prompts are answered
    /// together).
    pub seconds: f64,
}

impl PromptResult {
    /// The metrics of one answer: `raw` is the answer as decoded with special tokens (so leaked
    /// headers count), `stopped` whether a stop ended it; end-of-turn fields start empty.
    pub fn measure(
        p: &Prompt,
        raw: &str,
        tokens: usize,
        stopped: bool,
        stop_token: Option<String>,
        seconds: f64,
    ) -> Self {
        let text = strip_markers(raw).trim().to_string();
        PromptResult {
            id: p.id.clone(),
            category: p.category.clone(),
            prompt: p.prompt.clone(),
            chars: text.chars().count(),
            korean_ratio: korean_ratio(&text),
            repetition: repetition(&text),
            header_leaks: header_leaks(raw),
            answer: text,
            tokens,
            stopped,
            stop_token,
            eot_probability: None,
            eot_token: None,
            seconds,
        }
    }
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

/// The conversation up to the end of `reference` as the assistant's turn, and the end-of-turn
/// token: the template renders the conversation with the reference answer, and the end-of-turn
/// token is the first stop id it writes after the answer. None when there is no template or
/// the template writes no stop id there.
fn eot_prefix(m: &ChatModel, p: &Prompt, reference: &str) -> Result<Option<(Vec<u32>, u32)>> {
    let Some(template) = &m.template else { return Ok(None) };
    let mut msgs = messages(p);
    msgs.push(Message::new("assistant", format!("{}{END_MARK}", reference.trim())));
    let text = template.render(&msgs, false)?;
    let Some(at) = text.find(END_MARK) else { return Ok(None) };
    let prefix = m.tokenizer.encode(&text[..at], false)?;
    let rest = m.tokenizer.encode(&text[at + END_MARK.len()..], false)?;
    let Some(&eot) = rest.iter().find(|id| m.stops.contains(**id)) else { return Ok(None) };
    Ok((!prefix.is_empty()).then_some((prefix, eot)))
}

/// P(end-of-turn) right after `reference` as the assistant's turn (see [`eot_probabilities`]).
/// Returns the probability and the token's text.
pub fn eot_probability(m: &ChatModel, p: &Prompt, reference: &str) -> Result<Option<(f64, String)>> {
    let one = [(p.clone(), reference.to_string())];
    Ok(eot_probabilities(m, one.iter().map(|(p, r)| (p, r.as_str())), 1)?.pop().flatten())
}

/// Prompt tokens per forward pass when the end-of-turn prefixes are read together.
const EOT_ROWS_PER_PASS: usize = 2048;

/// P(end-of-turn) after each `(prompt, reference)`: the model reads the conversation up to the
/// reference answer's end, several conversations per forward pass (`per_pass` at most), and
/// the probability of the end-of-turn token comes from the last position's logits.
pub fn eot_probabilities<'a>(
    m: &ChatModel,
    items: impl Iterator<Item = (&'a Prompt, &'a str)>,
    per_pass: usize,
) -> Result<Vec<Option<(f64, String)>>> {
    let prefixes = items.map(|(p, r)| eot_prefix(m, p, r)).collect::<Result<Vec<_>>>()?;
    Ok(eot_passes(m, &prefixes, per_pass)?.into_iter().map(|x| x.map(|(eot, _)| eot)).collect())
}

/// One conversation's end-of-turn probability and token text, and the cache that read it.
type EotPass = ((f64, String), KvCache);

/// Reads each `(prefix, end-of-turn id)`, several per forward pass, and gives the end-of-turn
/// probability and token text for each, with the cache that read its prefix.
fn eot_passes(m: &ChatModel, prefixes: &[Option<(Vec<u32>, u32)>], per_pass: usize) -> Result<Vec<Option<EotPass>>> {
    let mut out: Vec<Option<EotPass>> = prefixes.iter().map(|_| None).collect();
    let todo: Vec<(usize, &Vec<u32>, u32)> =
        prefixes.iter().enumerate().filter_map(|(i, x)| x.as_ref().map(|(p, e)| (i, p, *e))).collect();
    let mut rest = todo.as_slice();
    while !rest.is_empty() {
        let mut n = 1;
        let mut rows = rest[0].1.len();
        while n < rest.len() && n < per_pass.max(1) && rows + rest[n].1.len() <= EOT_ROWS_PER_PASS {
            rows += rest[n].1.len();
            n += 1;
        }
        let (group, tail) = rest.split_at(n);
        rest = tail;
        let mut caches: Vec<KvCache> = group.iter().map(|_| KvCache::new()).collect();
        let mut inputs: Vec<SeqInput> = group
            .iter()
            .zip(caches.iter_mut())
            .map(|((_, prefix, _), cache)| SeqInput { tokens: prefix, cache, logits: Logits::Last })
            .collect();
        let logits = m.model.forward_batch(&mut inputs)?;
        for ((&(i, _, eot), row), cache) in group.iter().zip(logits).zip(caches) {
            let row: Vec<f32> = row.expect("last-row logits were asked for").squeeze(0)?.to_vec1()?;
            let nll = crate::perplexity::token_nll(&row, eot);
            let text = m.tokenizer.id_to_token(eot).unwrap_or_else(|| eot.to_string());
            out[i] = Some((((-nll).exp(), text), cache));
        }
    }
    Ok(out)
}

/// How many of `prompt`'s positions a cache that read `read` can give a sequence that generates
/// after `prompt`: the tokens both start with, short of the prompt's last (which is read again
/// for the first token's logits).
fn shared_positions(prompt: &[u32], read: &[u32]) -> usize {
    let common = prompt.iter().zip(read).take_while(|(a, b)| a == b).count();
    common.min(prompt.len().saturating_sub(1))
}

/// How many sequences to run at once so that `total` are answered in as few rounds as
/// `most` at a time allows, in rounds of nearly equal size: 33 prompts at 16 run as 17 and 16,
/// not 16, 16 and 1 (whose lone round would read every weight for one sequence per token).
fn balanced_width(total: usize, most: usize) -> usize {
    let most = most.max(1);
    total.div_ceil(total.div_ceil(most).max(1)).clamp(1, most)
}

/// The request for prompt `p`: its templated tokens, with the answer's length cut to what the
/// context leaves (an answer that reaches it ends there, as `generate` ends it).
fn request(m: &ChatModel, p: &Prompt, opts: &ChatOptions) -> Result<SeqRequest> {
    let Some(template) = &m.template else {
        return Err(EvalError::Input(format!(
            "{} has no chat template; pass --chat-template FILE (or evaluate it in `chatvec report`, which borrows the merged model's)",
            m.dir.display()
        )));
    };
    let prompt_text = template.render(&messages(p), true)?;
    let ids = m.tokenizer.encode(&prompt_text, false)?;
    let limit = m.model.config().max_position_embeddings;
    if ids.is_empty() || ids.len() > limit {
        return Err(GenError::ContextFull { tokens: ids.len(), limit }.into());
    }
    let max_new_tokens = opts.max_new_tokens.min(limit - ids.len());
    Ok(SeqRequest::new(ids, max_new_tokens, opts.sampling(), m.stops.clone()))
}

/// The result for prompt `p` from its answer and its end-of-turn probability.
fn prompt_result(
    m: &ChatModel,
    p: &Prompt,
    out: &SeqOutput,
    eot: Option<(f64, String)>,
    seconds: f64,
) -> Result<PromptResult> {
    let tokens = &out.output.tokens;
    let (body, stop_token) = match out.output.stop {
        StopReason::StopToken { id } => {
            (&tokens[..tokens.len() - 1], Some(m.tokenizer.id_to_token(id).unwrap_or_else(|| id.to_string())))
        }
        _ => (&tokens[..], None),
    };
    // Decoded with special tokens, so leaked headers stay visible to the leak count.
    let raw = m.tokenizer.decode(body, false)?;
    let stopped = stop_token.is_some();
    let mut result = PromptResult::measure(p, &raw, tokens.len(), stopped, stop_token, seconds);
    (result.eot_probability, result.eot_token) = eot.map_or((None, None), |(p, t)| (Some(p), Some(t)));
    Ok(result)
}

/// Answers one prompt.
pub fn answer(m: &mut ChatModel, p: &Prompt, opts: &ChatOptions, cancel: &AtomicBool) -> Result<PromptResult> {
    let e = run_chat_eval(m, std::slice::from_ref(p), opts, cancel, &mut |_, _| {})?;
    Ok(e.results.into_iter().next().expect("one prompt, one result"))
}

/// Runs every prompt, `opts.batch_size` at a time; `on_result` sees each result as it is made
/// (in the order the answers end).
pub fn run_chat_eval(
    m: &mut ChatModel,
    prompts: &[Prompt],
    opts: &ChatOptions,
    cancel: &AtomicBool,
    on_result: &mut dyn FnMut(usize, &PromptResult),
) -> Result<ChatEval> {
    let started = Instant::now();
    let m = &*m;
    let requests =
        prompts.iter().map(|p| request(m, p, opts).map_err(|e| e.in_prompt(&p.id))).collect::<Result<Vec<_>>>()?;
    let prefixes = prompts
        .iter()
        .map(|p| p.reference.as_deref().map_or(Ok(None), |r| eot_prefix(m, p, r)))
        .collect::<Result<Vec<_>>>()?;
    // The end-of-turn pass reads each conversation up to the reference's end; its cache, cut
    // back to the start it shares with the prompt, saves the answer reading the prompt again.
    let passes = eot_passes(m, &prefixes, opts.batch_size)?;
    let mut eot = Vec::with_capacity(prompts.len());
    let mut cached = Vec::with_capacity(prompts.len());
    for ((req, pass), prefix) in requests.into_iter().zip(passes).zip(&prefixes) {
        let (p_eot, mut cache) = pass.map_or((None, KvCache::new()), |(e, c)| (Some(e), c));
        let shared = prefix.as_ref().map_or(0, |(read, _)| shared_positions(&req.prompt, read));
        cache.truncate(shared);
        eot.push(p_eot);
        cached.push((req, cache));
    }
    let mut results: Vec<Option<PromptResult>> = vec![None; prompts.len()];
    let mut failed = None;
    let mut batch = Batch::new(&m.model, balanced_width(prompts.len(), opts.batch_size));
    batch.run_cached(cached, &|| cancel.load(Ordering::Relaxed), &mut |i, out| {
        if out.output.stop == StopReason::Cancelled || failed.is_some() {
            return;
        }
        let seconds = started.elapsed().as_secs_f64();
        match prompt_result(m, &prompts[i], out, eot[i].take(), seconds) {
            Ok(r) => {
                on_result(i, &r);
                results[i] = Some(r);
            }
            Err(e) => failed = Some(e.in_prompt(&prompts[i].id)),
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let Some(results) = results.into_iter().collect::<Option<Vec<_>>>() else { return Err(EvalError::Interrupted) };
    Ok(ChatEval {
        model: m.dir.display().to_string(),
        template_from: m.template_from.clone(),
        options: opts.clone(),
        summary: summarize(&results),
        results,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_cache_stops_before_the_prompts_last_token_and_where_the_texts_part() {
        assert_eq!(shared_positions(&[1, 2, 3, 4], &[1, 2, 3, 4, 5, 6]), 3);
        assert_eq!(shared_positions(&[1, 2, 3, 4], &[1, 2, 9, 4, 5]), 2);
        assert_eq!(shared_positions(&[1, 2, 3], &[1, 2]), 2);
        assert_eq!(shared_positions(&[7, 2], &[1, 2, 3]), 0);
        assert_eq!(shared_positions(&[1], &[1, 2]), 0);
    }

    /// With a Llama-3 template, the end-of-turn pass's cache holds the whole prompt but the last
    /// token, so the answers read one prompt token each.
    #[test]
    fn the_end_of_turn_pass_reads_every_prompt_token_but_the_last() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/llama-tiny/chat");
        let m = ChatModel::load(Path::new(dir), &chatvec_gen::LoadOptions::default(), None).unwrap();
        let with_reference: Vec<Prompt> = bundled_prompts().into_iter().filter(|p| p.reference.is_some()).collect();
        assert!(with_reference.len() > 10);
        for p in &with_reference {
            let prompt = request(&m, p, &ChatOptions::default()).unwrap().prompt;
            let (read, _) = eot_prefix(&m, p, p.reference.as_deref().unwrap()).unwrap().unwrap();
            assert_eq!(shared_positions(&prompt, &read), prompt.len() - 1, "{}", p.id);
        }
    }

    #[test]
    fn prompts_run_in_as_few_rounds_as_the_width_allows_and_of_nearly_equal_size() {
        assert_eq!(balanced_width(33, 16), 11);
        assert_eq!(balanced_width(33, 32), 17);
        assert_eq!(balanced_width(32, 16), 16);
        assert_eq!(balanced_width(17, 16), 9);
        assert_eq!(balanced_width(8, 16), 8);
        assert_eq!(balanced_width(5, 1), 1);
        assert_eq!(balanced_width(0, 16), 1);
        for (total, most) in [(33, 16), (100, 7), (9, 4), (1, 3)] {
            let width = balanced_width(total, most);
            assert!(width <= most && total.div_ceil(width) == total.div_ceil(most), "{total} at {most}");
        }
    }
}
