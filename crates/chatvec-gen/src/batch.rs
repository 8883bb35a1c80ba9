//! Continuous batching: many sequences decoded together, one forward pass per step.
//!
//! A [`Batch`] holds the live sequences, each with its own KV cache, sampler and stops.
//! Sequences join ([`Batch::insert`]) and leave (finish or [`Batch::cancel`]) between steps.
//! Each [`Batch::step`] runs ONE forward over the rows of every live sequence: a chunk of the
//! prompts still being read (at most [`Batch::set_prefill_chunk`] tokens in all) and the last
//! sampled token of every sequence that is generating. The linear layers, most of the work, see
//! all those rows at once, so their weights are read once per step instead of once per sequence.
//!
//! A sequence's tokens follow from its own rows only: greedy output is what
//! [`crate::generate`] gives for it alone, up to the float rounding of the matrix products
//! (whose summation order may depend on the number of rows), and sampling draws from the
//! sequence's own seeded generator.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use candle_core::Tensor;

use crate::error::{GenError, Result};
use crate::generate::{GenerationOutput, StopReason};
use crate::models::{KvCache, Logits, Model, SeqInput};
use crate::sampling::{Sampler, SamplingParams};
use crate::stops::StopSet;

/// Most alternatives a position may list (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Prompt tokens read per step, over all sequences, unless [`Batch::set_prefill_chunk`] says
/// otherwise: large enough for the matrix products to run at full speed, small enough that the
/// sequences already generating are not held up long.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// Names a sequence of a [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// What to generate for one sequence.
#[derive(Debug, Clone)]
pub struct SeqRequest {
    /// Token ids, already templated and tokenized.
    pub prompt: Vec<u32>,
    /// Most tokens to generate (a final stop id counts); 0 only scores the prompt.
    pub max_new_tokens: usize,
    /// How each token is chosen (its `seed` is ignored: see `seed`).
    pub sampling: SamplingParams,
    /// The sequence's random generator: the same seed gives the same tokens.
    pub seed: u64,
    /// Ids that end the sequence.
    pub stops: StopSet,
    /// Report the log-probability of each prompt token given the tokens before it.
    pub prompt_logprobs: bool,
    /// Alternatives (most likely first) to list with each reported position, at most
    /// [`MAX_TOP_LOGPROBS`].
    pub top_logprobs: usize,
}

impl SeqRequest {
    /// A request for `prompt` with `sampling` (its seed included), no log-probabilities.
    pub fn new(prompt: Vec<u32>, max_new_tokens: usize, sampling: SamplingParams, stops: StopSet) -> Self {
        let seed = sampling.seed;
        SeqRequest { prompt, max_new_tokens, sampling, seed, stops, prompt_logprobs: false, top_logprobs: 0 }
    }
}

/// A token and its log-probability under the model's distribution (log-softmax of the raw
/// logits, before repetition penalty, temperature and truncation).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub token: u32,
    /// Its natural-log probability; NaN for the first prompt token, which nothing predicts.
    pub logprob: f32,
    /// The most likely tokens at this position and their log-probabilities, most likely first
    /// (ties by lower id).
    pub top: Vec<(u32, f32)>,
}

/// What a step reports for a sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum SeqEvent {
    /// The prompt's log-probabilities (only when asked for), once the prompt has been read.
    /// Entry 0 is the first prompt token, with a NaN log-probability.
    Prompt {
        /// The sequence.
        id: SeqId,
        /// One entry per prompt token.
        logprobs: Vec<TokenLogprob>,
    },
    /// A generated token (every one except a final stop id, as [`crate::generate`]'s callback).
    Token {
        /// The sequence.
        id: SeqId,
        /// The token.
        token: u32,
        /// Its log-probability and alternatives.
        logprob: TokenLogprob,
    },
    /// The sequence ended and left the batch.
    Finished {
        /// The sequence.
        id: SeqId,
        /// Why it ended.
        reason: StopReason,
        /// Tokens in its prompt.
        prompt_tokens: usize,
        /// Tokens it generated, a final stop id included.
        new_tokens: usize,
    },
}

/// A sequence [`Batch::run`] finished: what [`crate::generate`] returns for it, and its
/// prompt's log-probabilities when they were asked for.
#[derive(Debug, Clone)]
pub struct SeqOutput {
    /// Tokens (a final stop id included), stop reason and timings.
    pub output: GenerationOutput,
    /// The [`SeqEvent::Prompt`] entries (empty unless asked for).
    pub prompt_logprobs: Vec<TokenLogprob>,
}

impl SeqOutput {
    fn new(prompt_tokens: usize) -> Self {
        let output = GenerationOutput {
            prompt_tokens,
            reused_prompt_tokens: 0,
            tokens: Vec::new(),
            stop: StopReason::Cancelled,
            time_to_first_token: Duration::ZERO,
            decode_time: Duration::ZERO,
        };
        SeqOutput { output, prompt_logprobs: Vec::new() }
    }

    /// Records a token made `since` after the sequence was inserted.
    fn push(&mut self, token: u32, since: Duration) {
        if self.output.tokens.is_empty() {
            self.output.time_to_first_token = since;
        }
        self.output.decode_time = since - self.output.time_to_first_token;
        self.output.tokens.push(token);
    }
}

impl SeqEvent {
    /// The sequence the event is about.
    pub fn id(&self) -> SeqId {
        match self {
            SeqEvent::Prompt { id, .. } | SeqEvent::Token { id, .. } | SeqEvent::Finished { id, .. } => *id,
        }
    }
}

/// One live sequence.
struct Seq {
    id: SeqId,
    req: SeqRequest,
    sampler: Sampler,
    cache: KvCache,
    /// Prompt tokens in the cache.
    fed: usize,
    /// The prompt and the tokens generated so far; its last entry is fed on the next step once
    /// the prompt has been read.
    context: Vec<u32>,
    new_tokens: usize,
    prompt_logprobs: Vec<TokenLogprob>,
}

/// Sequences decoded together; see the module docs. `M` is the model or a reference to it.
pub struct Batch<M: Borrow<Model> = Model> {
    model: M,
    max_seqs: usize,
    prefill_chunk: usize,
    next_id: u64,
    /// Live sequences in the order they were inserted; the first `max_seqs` run, the rest wait.
    seqs: Vec<Seq>,
}

impl<M: Borrow<Model>> Batch<M> {
    /// An empty batch running at most `max_seqs` sequences at a time (at least 1); more may be
    /// inserted, and wait for a free place in insertion order.
    pub fn new(model: M, max_seqs: usize) -> Self {
        Batch { model, max_seqs: max_seqs.max(1), prefill_chunk: DEFAULT_PREFILL_CHUNK, next_id: 0, seqs: Vec::new() }
    }

    /// Sets how many prompt tokens one step reads, over all sequences (at least 1).
    pub fn set_prefill_chunk(&mut self, tokens: usize) {
        self.prefill_chunk = tokens.max(1);
    }

    /// The model.
    pub fn model(&self) -> &Model {
        self.model.borrow()
    }

    /// Gives the model back.
    pub fn into_model(self) -> M {
        self.model
    }

    /// Adds a sequence; it starts on the next step if a place is free. Refuses an empty prompt,
    /// ids outside the vocabulary, invalid sampling, more than [`MAX_TOP_LOGPROBS`] alternatives,
    /// and a prompt plus `max_new_tokens` longer than the model's context.
    pub fn insert(&mut self, req: SeqRequest) -> Result<SeqId> {
        self.insert_cached(req, KvCache::new())
    }

    /// [`Batch::insert`] for a sequence whose first `cache.len()` prompt tokens are already in
    /// `cache` (read by an earlier forward of a longer text with the same start, cut back with
    /// [`KvCache::truncate`]): only the rest of the prompt is read. The cache must be this model's
    /// and shorter than the prompt; prompt log-probabilities need the whole prompt read, so they
    /// are refused with a cache.
    pub fn insert_cached(&mut self, req: SeqRequest, cache: KvCache) -> Result<SeqId> {
        if !cache.is_empty() && (cache.len() >= req.prompt.len() || req.prompt_logprobs) {
            return Err(GenError::InvalidArgument(format!(
                "a cache of {} positions cannot start a prompt of {} tokens{}",
                cache.len(),
                req.prompt.len(),
                if req.prompt_logprobs { " whose log-probabilities are asked for" } else { "" }
            )));
        }
        let model = self.model.borrow();
        if req.prompt.is_empty() {
            return Err(GenError::InvalidArgument("the prompt has no tokens".into()));
        }
        model.check_tokens(&req.prompt)?;
        let limit = model.config().max_position_embeddings;
        if req.prompt.len() + req.max_new_tokens > limit {
            return Err(GenError::InvalidArgument(format!(
                "the prompt ({} tokens) and max_new_tokens ({}) together exceed the model's context of {limit} positions",
                req.prompt.len(),
                req.max_new_tokens
            )));
        }
        if req.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(GenError::InvalidArgument(format!(
                "top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {}",
                req.top_logprobs
            )));
        }
        let sampler = Sampler::new(SamplingParams { seed: req.seed, ..req.sampling.clone() })?;
        let id = SeqId(self.next_id);
        self.next_id += 1;
        let mut prompt_logprobs = Vec::new();
        if req.prompt_logprobs {
            prompt_logprobs.reserve(req.prompt.len());
            prompt_logprobs.push(TokenLogprob { token: req.prompt[0], logprob: f32::NAN, top: Vec::new() });
        }
        let context = req.prompt.clone();
        let fed = cache.len();
        self.seqs.push(Seq { id, req, sampler, cache, fed, context, new_tokens: 0, prompt_logprobs });
        Ok(id)
    }

    /// Removes a sequence and frees its cache at once; no event is reported for it. Unknown or
    /// finished ids are ignored.
    pub fn cancel(&mut self, id: SeqId) {
        self.seqs.retain(|s| s.id != id);
    }

    /// Whether no sequence is live (running or waiting).
    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Sequences running (reading their prompt or generating).
    pub fn running(&self) -> usize {
        self.seqs.len().min(self.max_seqs)
    }

    /// Sequences waiting for a place.
    pub fn waiting(&self) -> usize {
        self.seqs.len() - self.running()
    }

    /// Runs `requests` to their end, `max_seqs` at a time, and returns their outputs in request
    /// order. `on_finished(i, out)` sees request `i` as soon as it ends. `interrupted` is asked
    /// between steps; when it says yes, the requests not yet finished are cancelled and
    /// reported with [`StopReason::Cancelled`].
    pub fn run(
        &mut self,
        requests: Vec<SeqRequest>,
        interrupted: &dyn Fn() -> bool,
        on_finished: &mut dyn FnMut(usize, &SeqOutput),
    ) -> Result<Vec<SeqOutput>> {
        let requests = requests.into_iter().map(|r| (r, KvCache::new())).collect();
        self.run_cached(requests, interrupted, on_finished)
    }

    /// [`Batch::run`] for requests whose prompts may start in a cache (see
    /// [`Batch::insert_cached`]).
    pub fn run_cached(
        &mut self,
        requests: Vec<(SeqRequest, KvCache)>,
        interrupted: &dyn Fn() -> bool,
        on_finished: &mut dyn FnMut(usize, &SeqOutput),
    ) -> Result<Vec<SeqOutput>> {
        let started = Instant::now();
        let mut outputs: Vec<SeqOutput> = requests.iter().map(|(r, _)| SeqOutput::new(r.prompt.len())).collect();
        let mut index = HashMap::with_capacity(requests.len());
        for (i, (req, cache)) in requests.into_iter().enumerate() {
            index.insert(self.insert_cached(req, cache)?, i);
        }
        while !index.is_empty() {
            if interrupted() {
                index.keys().for_each(|&id| self.cancel(id));
                break;
            }
            for event in self.step()? {
                let (id, since) = (event.id(), started.elapsed());
                let Some(&i) = index.get(&id) else { continue };
                let out = &mut outputs[i];
                match event {
                    SeqEvent::Prompt { logprobs, .. } => out.prompt_logprobs = logprobs,
                    SeqEvent::Token { token, .. } => out.push(token, since),
                    SeqEvent::Finished { reason, .. } => {
                        if let StopReason::StopToken { id } = reason {
                            out.push(id, since);
                        }
                        out.output.stop = reason;
                        index.remove(&id);
                        on_finished(i, out);
                    }
                }
            }
        }
        Ok(outputs)
    }

    /// Reads the next prompt chunks and generates one token for every generating sequence, in
    /// one forward pass; returns what happened, in sequence order. Finished sequences leave.
    pub fn step(&mut self) -> Result<Vec<SeqEvent>> {
        let active = self.running();
        let mut budget = self.prefill_chunk;
        let mut chunks = Vec::with_capacity(active);
        for seq in &self.seqs[..active] {
            let chunk = if seq.fed < seq.req.prompt.len() {
                let n = (seq.req.prompt.len() - seq.fed).min(budget);
                budget -= n;
                n
            } else {
                1
            };
            chunks.push(chunk);
        }
        let logits = self.forward(&chunks)?;
        let mut events = Vec::new();
        for ((seq, chunk), logits) in self.seqs[..active].iter_mut().zip(chunks).zip(logits) {
            if chunk > 0 {
                seq.advance(chunk, logits, &mut events)?;
            }
        }
        let done: Vec<SeqId> = events
            .iter()
            .filter_map(|e| match e {
                SeqEvent::Finished { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        self.seqs.retain(|s| !done.contains(&s.id));
        Ok(events)
    }

    /// One forward over `chunks[i]` new tokens of each running sequence `i` (0: none this step).
    fn forward(&mut self, chunks: &[usize]) -> Result<Vec<Option<Tensor>>> {
        let mut inputs = Vec::with_capacity(chunks.len());
        let mut slots = Vec::with_capacity(chunks.len());
        for (i, (seq, &n)) in self.seqs.iter_mut().zip(chunks).enumerate() {
            if n == 0 {
                continue;
            }
            let Seq { req, cache, fed, context, .. } = seq;
            let prompt_len = req.prompt.len();
            let (tokens, logits) = if *fed < prompt_len {
                let completes = *fed + n == prompt_len;
                let logits = match (req.prompt_logprobs, completes && req.max_new_tokens > 0) {
                    (true, _) => Logits::All,
                    (false, true) => Logits::Last,
                    (false, false) => Logits::None,
                };
                (&req.prompt[*fed..*fed + n], logits)
            } else {
                (&context[context.len() - 1..], Logits::Last)
            };
            inputs.push(SeqInput { tokens, cache, logits });
            slots.push(i);
        }
        let mut out: Vec<Option<Tensor>> = vec![None; chunks.len()];
        if inputs.is_empty() {
            return Ok(out);
        }
        for (slot, logits) in slots.into_iter().zip(self.model.borrow().forward_batch(&mut inputs)?) {
            out[slot] = logits;
        }
        Ok(out)
    }
}

impl Seq {
    /// Takes in the result of a forward over `chunk` new tokens: prompt log-probabilities, and
    /// the next token once the prompt has been read.
    fn advance(&mut self, chunk: usize, logits: Option<Tensor>, events: &mut Vec<SeqEvent>) -> Result<()> {
        let prompt_len = self.req.prompt.len();
        if self.fed >= prompt_len {
            let row = logits.expect("a decode row asks for logits").squeeze(0)?.to_vec1::<f32>()?;
            return self.sample(row, events);
        }
        let rows = match logits {
            Some(l) => l.to_vec2::<f32>()?,
            None => Vec::new(),
        };
        if self.req.prompt_logprobs {
            for (j, row) in rows.iter().enumerate() {
                if let Some(&next) = self.req.prompt.get(self.fed + j + 1) {
                    self.prompt_logprobs.push(token_logprob(row, next, self.req.top_logprobs));
                }
            }
        }
        self.fed += chunk;
        if self.fed < prompt_len {
            return Ok(());
        }
        if self.req.prompt_logprobs {
            events.push(SeqEvent::Prompt { id: self.id, logprobs: std::mem::take(&mut self.prompt_logprobs) });
        }
        match rows.into_iter().last() {
            Some(row) if self.req.max_new_tokens > 0 => self.sample(row, events),
            _ => {
                events.push(self.finished(StopReason::Length));
                Ok(())
            }
        }
    }

    /// Chooses the next token from `logits` and reports it, and the end if it is one.
    fn sample(&mut self, mut logits: Vec<f32>, events: &mut Vec<SeqEvent>) -> Result<()> {
        let count = logits.iter().filter(|x| !x.is_finite()).count();
        if count > 0 {
            return Err(GenError::NonFiniteLogits { count, vocab: logits.len(), step: self.new_tokens });
        }
        let raw = log_softmax(&logits);
        let id = self.sampler.sample(&mut logits, &self.context);
        self.context.push(id);
        self.new_tokens += 1;
        if self.req.stops.contains(id) {
            events.push(self.finished(StopReason::StopToken { id }));
            return Ok(());
        }
        let logprob = TokenLogprob { token: id, logprob: raw[id as usize], top: top_k(&raw, self.req.top_logprobs) };
        events.push(SeqEvent::Token { id: self.id, token: id, logprob });
        if self.new_tokens >= self.req.max_new_tokens {
            events.push(self.finished(StopReason::Length));
        }
        Ok(())
    }

    fn finished(&self, reason: StopReason) -> SeqEvent {
        SeqEvent::Finished { id: self.id, reason, prompt_tokens: self.req.prompt.len(), new_tokens: self.new_tokens }
    }
}

/// `token`'s log-probability under `logits` and the `top` most likely alternatives.
fn token_logprob(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let raw = log_softmax(logits);
    TokenLogprob { token, logprob: raw[token as usize], top: top_k(&raw, top) }
}

/// Log-softmax in f64, rounded to f32 (what perplexity computes from the same logits).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    logits.iter().map(|&l| (l as f64 - log_z) as f32).collect()
}

/// The `k` largest entries of `logprobs` with their ids, largest first, ties by lower id.
fn top_k(logprobs: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let by_value = |a: &u32, b: &u32| logprobs[*b as usize].total_cmp(&logprobs[*a as usize]).then(a.cmp(b));
    let mut ids: Vec<u32> = (0..logprobs.len() as u32).collect();
    let k = k.min(ids.len());
    if k < ids.len() {
        ids.select_nth_unstable_by(k - 1, by_value);
        ids.truncate(k);
    }
    ids.sort_unstable_by(by_value);
    ids.into_iter().map(|i| (i, logprobs[i as usize])).collect()
}
