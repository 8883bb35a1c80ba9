//! The generation loop: prefill, then one token at a time until a stop id or the length limit,
//! handing each token to a callback as it is made.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::GenError;
use crate::models::Model;
use crate::sampling::{Sampler, SamplingParams};
use crate::stops::StopSet;

/// Limits and sampling for one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens to generate (the stop token counts).
    pub max_new_tokens: usize,
    /// How each token is chosen.
    pub sampling: SamplingParams,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig { max_new_tokens: 512, sampling: SamplingParams::default() }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopReason {
    /// A stop id was sampled.
    StopToken {
        /// The sampled stop id.
        id: u32,
    },
    /// `max_new_tokens` were generated.
    Length,
    /// The token callback asked to stop.
    Cancelled,
    /// The model's context (`max_position_embeddings`) is full.
    Context,
}

/// What one call to [`generate`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already cached (a chat's earlier turns).
    pub reused_prompt_tokens: usize,
    /// Generated ids, including the stop id if one ended generation.
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub stop: StopReason,
    /// From the call to the first sampled token (prefill included).
    pub time_to_first_token: Duration,
    /// From the first to the last sampled token.
    pub decode_time: Duration,
}

impl GenerationOutput {
    /// Decode speed in tokens per second (tokens after the first over the time they took).
    pub fn decode_tokens_per_second(&self) -> Option<f64> {
        let n = self.tokens.len().checked_sub(1)?;
        let secs = self.decode_time.as_secs_f64();
        (n > 0 && secs > 0.0).then(|| n as f64 / secs)
    }
}

/// Generates an answer to `prompt` (token ids, already templated).
///
/// `on_token` receives every generated id except a final stop id, as soon as it is sampled;
/// it returns `ControlFlow::Break` to end early. The model's KV cache is reused for the longest
/// prefix `prompt` shares with what is cached (multi-turn chat re-sends the history), and holds
/// the prompt and answer afterwards.
pub fn generate<E, F>(
    model: &mut Model,
    prompt: &[u32],
    config: &GenerationConfig,
    stops: &StopSet,
    mut on_token: F,
) -> Result<GenerationOutput, E>
where
    E: From<GenError>,
    F: FnMut(u32) -> Result<ControlFlow<()>, E>,
{
    let start = Instant::now();
    if prompt.is_empty() {
        return Err(GenError::InvalidArgument("the prompt has no tokens".into()).into());
    }
    let limit = model.config().max_position_embeddings;
    if prompt.len() > limit {
        return Err(GenError::ContextFull { tokens: prompt.len(), limit }.into());
    }
    let mut sampler = Sampler::new(config.sampling.clone())?;
    let shared = model.cached_tokens().iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
    model.truncate(shared)?;

    let mut output = GenerationOutput {
        prompt_tokens: prompt.len(),
        reused_prompt_tokens: shared,
        tokens: Vec::new(),
        stop: StopReason::Length,
        time_to_first_token: Duration::ZERO,
        decode_time: Duration::ZERO,
    };
    if config.max_new_tokens == 0 {
        return Ok(output);
    }
    let mut context = prompt.to_vec();
    let mut logits = finite_logits(model.forward_last(&prompt[shared..])?, 0)?;
    let mut first_at = None;
    loop {
        let id = sampler.sample(&mut logits, &context);
        let first = *first_at.get_or_insert_with(|| {
            output.time_to_first_token = start.elapsed();
            Instant::now()
        });
        output.tokens.push(id);
        context.push(id);
        output.decode_time = first.elapsed();
        if stops.contains(id) {
            output.stop = StopReason::StopToken { id };
            break;
        }
        if on_token(id)?.is_break() {
            output.stop = StopReason::Cancelled;
            break;
        }
        if output.tokens.len() >= config.max_new_tokens {
            output.stop = StopReason::Length;
            break;
        }
        if context.len() >= limit {
            output.stop = StopReason::Context;
            break;
        }
        logits = finite_logits(model.forward_last(&[id])?, output.tokens.len())?;
    }
    Ok(output)
}

/// The logits as a vector; NaN or infinite ones mean broken weights, and sampling from them
/// would print token 0 as if it were an answer. `step` is the number of tokens generated so far.
fn finite_logits(t: candle_core::Tensor, step: usize) -> Result<Vec<f32>, GenError> {
    let logits = t.to_vec1::<f32>()?;
    let count = logits.iter().filter(|x| !x.is_finite()).count();
    if count > 0 {
        return Err(GenError::NonFiniteLogits { count, vocab: logits.len(), step });
    }
    Ok(logits)
}
