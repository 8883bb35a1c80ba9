//! The decode loop the engine drives, as a trait with the shape of `chatvec_gen::batch::Batch`
//! (sequences join and leave between steps), and [`OneAtATime`], an implementation over the
//! single-sequence model API that runs the sequences one after another.

use std::collections::VecDeque;

use chatvec_gen::sampling::Sampler;
use chatvec_gen::{GenError, Model, SamplingParams, StopReason, StopSet};

use crate::logprobs::{log_softmax, token_logprob};

/// Names one sequence in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqId(pub u64);

/// One sequence to run.
#[derive(Debug, Clone)]
pub struct SeqRequest {
    /// Token ids (already templated and tokenized).
    pub prompt: Vec<u32>,
    /// Most tokens to generate (0: score the prompt only).
    pub max_new_tokens: usize,
    /// How tokens are chosen.
    pub sampling: SamplingParams,
    /// Ids that end the sequence.
    pub stops: StopSet,
    /// Whether to report the log-probability of each prompt token given its prefix.
    pub prompt_logprobs: bool,
    /// Alternatives reported per position (0..=20).
    pub top_logprobs: usize,
}

/// A token with its log-probability under the model and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub token: u32,
    /// Its log-probability (NaN for the first prompt token, which has no prefix).
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What a step produced for one sequence.
#[derive(Debug, Clone)]
pub enum SeqEvent {
    /// Prompt log-probabilities (only when asked for).
    Prompt {
        /// The sequence.
        id: SeqId,
        /// One entry per prompt token.
        logprobs: Vec<TokenLogprob>,
    },
    /// A generated token.
    Token {
        /// The sequence.
        id: SeqId,
        /// The token, with its log-probability.
        logprob: TokenLogprob,
    },
    /// The sequence ended and left the batch.
    Finished {
        /// The sequence.
        id: SeqId,
        /// Why.
        reason: StopReason,
        /// Tokens in its prompt.
        prompt_tokens: usize,
        /// Tokens generated.
        new_tokens: usize,
    },
}

/// A decode loop over many sequences.
pub trait SequenceBatch: Send + 'static {
    /// Adds a sequence; it joins at the next step.
    fn insert(&mut self, request: SeqRequest) -> Result<SeqId, GenError>;
    /// Removes a sequence at once.
    fn cancel(&mut self, id: SeqId);
    /// Runs one step and returns what it produced.
    fn step(&mut self) -> Result<Vec<SeqEvent>, GenError>;
}

/// Runs sequences one after another on one model: the stopgap until batched decoding lands.
pub struct OneAtATime {
    model: Model,
    next_id: u64,
    waiting: VecDeque<(SeqId, SeqRequest)>,
    current: Option<Running>,
}

/// The sequence being decoded.
struct Running {
    id: SeqId,
    request: SeqRequest,
    sampler: Sampler,
    context: Vec<u32>,
    new_tokens: usize,
    /// The last sampled token, not yet fed to the model.
    pending: Option<u32>,
}

impl OneAtATime {
    /// A loop over `model`.
    pub fn new(model: Model) -> Self {
        OneAtATime { model, next_id: 0, waiting: VecDeque::new(), current: None }
    }

    /// Prefills the next waiting sequence; returns its logits at the last prompt position.
    fn start_next(&mut self, events: &mut Vec<SeqEvent>) -> Result<Option<Vec<f32>>, GenError> {
        let Some((id, request)) = self.waiting.pop_front() else { return Ok(None) };
        let sampler = Sampler::new(request.sampling.clone())?;
        self.model.reset();
        let logits = if request.prompt_logprobs {
            let all = self.model.forward_all(&request.prompt)?.to_vec2::<f32>()?;
            events
                .push(SeqEvent::Prompt { id, logprobs: prompt_logprobs(&request.prompt, &all, request.top_logprobs) });
            all.into_iter().last().unwrap_or_default()
        } else {
            self.model.forward_last(&request.prompt)?.to_vec1::<f32>()?
        };
        let context = request.prompt.clone();
        self.current = Some(Running { id, request, sampler, context, new_tokens: 0, pending: None });
        Ok(Some(logits))
    }
}

/// Log-probabilities of each prompt token under the logits of the position before it.
pub fn prompt_logprobs(prompt: &[u32], logits: &[Vec<f32>], top: usize) -> Vec<TokenLogprob> {
    let mut out = vec![TokenLogprob { token: prompt[0], logprob: f32::NAN, top: Vec::new() }];
    for (row, &token) in logits.iter().zip(&prompt[1..]) {
        out.push(token_logprob(&log_softmax(row), token, top));
    }
    out
}

impl SequenceBatch for OneAtATime {
    fn insert(&mut self, request: SeqRequest) -> Result<SeqId, GenError> {
        let limit = self.model.config().max_position_embeddings;
        if request.prompt.is_empty() {
            return Err(GenError::InvalidArgument("the prompt has no tokens".into()));
        }
        if request.prompt.len() + request.max_new_tokens > limit {
            return Err(GenError::ContextFull { tokens: request.prompt.len() + request.max_new_tokens, limit });
        }
        request.sampling.validate()?;
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.waiting.push_back((id, request));
        Ok(id)
    }

    fn cancel(&mut self, id: SeqId) {
        self.waiting.retain(|(w, _)| *w != id);
        if self.current.as_ref().is_some_and(|c| c.id == id) {
            self.current = None;
        }
    }

    fn step(&mut self) -> Result<Vec<SeqEvent>, GenError> {
        let mut events = Vec::new();
        let logits = match self.current.as_mut().and_then(|c| c.pending.take()) {
            Some(token) => self.model.forward_last(&[token])?.to_vec1::<f32>()?,
            None => match self.start_next(&mut events)? {
                Some(logits) => logits,
                None => return Ok(events),
            },
        };
        let run = self.current.as_mut().expect("a sequence is running");
        if run.request.max_new_tokens == 0 {
            events.push(finished(run, StopReason::Length));
            self.current = None;
            return Ok(events);
        }
        let log_probs = log_softmax(&logits);
        let token = run.sampler.sample(&mut logits.clone(), &run.context);
        let logprob = token_logprob(&log_probs, token, run.request.top_logprobs);
        run.context.push(token);
        run.new_tokens += 1;
        events.push(SeqEvent::Token { id: run.id, logprob });
        let limit = self.model.config().max_position_embeddings;
        let stop = match () {
            _ if run.request.stops.contains(token) => Some(StopReason::StopToken { id: token }),
            _ if run.new_tokens >= run.request.max_new_tokens => Some(StopReason::Length),
            _ if run.context.len() >= limit => Some(StopReason::Context),
            _ => None,
        };
        match stop {
            Some(reason) => {
                events.push(finished(run, reason));
                self.current = None;
            }
            None => run.pending = Some(token),
        }
        Ok(events)
    }
}

fn finished(run: &Running, reason: StopReason) -> SeqEvent {
    SeqEvent::Finished { id: run.id, reason, prompt_tokens: run.request.prompt.len(), new_tokens: run.new_tokens }
}
