//! The choices of one request as the engine's updates arrive: each update becomes a [`Delta`]
//! (new text, the log-probabilities that came with it, the finish reason once known), which the
//! endpoints either stream or add up.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::http::StatusCode;
use chatvec_gen::StopReason;

use crate::batch::{SeqRequest, TokenLogprob};
use crate::engine::{Submission, SubmitError, Update};
use crate::error::ApiError;
use crate::model::ServedModel;
use crate::text::AnswerText;

/// What one update added to one choice.
#[derive(Debug, Default)]
pub struct Delta {
    /// The choice.
    pub choice: usize,
    /// The prompt's log-probabilities (first delta of an echo).
    pub prompt: Option<Vec<TokenLogprob>>,
    /// New text.
    pub text: String,
    /// Log-probabilities of the generated tokens behind `text`.
    pub logprobs: Vec<TokenLogprob>,
    /// `stop` or `length` once the choice has ended.
    pub finish: Option<&'static str>,
}

/// One choice's progress.
struct Choice {
    text: AnswerText,
    prompt_tokens: usize,
    new_tokens: usize,
    done: bool,
}

/// The choices of a request, fed by its engine.
pub struct Answers {
    model: Arc<ServedModel>,
    submission: Submission,
    choices: Vec<Choice>,
}

impl Answers {
    /// Queues `requests` (one per choice) on the model's engine; 429 when the queue is full.
    pub fn start(model: Arc<ServedModel>, requests: Vec<SeqRequest>, stop: &[String]) -> Result<Self, ApiError> {
        let choices = requests
            .iter()
            .map(|r| Choice {
                text: AnswerText::new(model.tokenizer, stop.to_vec()),
                prompt_tokens: r.prompt.len(),
                new_tokens: 0,
                done: false,
            })
            .collect();
        let submission = model.engine.submit(requests).map_err(|e| match e {
            SubmitError::QueueFull => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!("the queue of {} is full; retry later", model.name),
            ),
            SubmitError::Stopped => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "engine_stopped", "the model's engine has stopped")
            }
        })?;
        Ok(Answers { model, submission, choices })
    }

    /// The next delta; `None` once every choice has ended.
    pub async fn next(&mut self) -> Option<Result<Delta, ApiError>> {
        while self.choices.iter().any(|c| !c.done) {
            let (choice, update) = match self.submission.updates.recv().await {
                Some(u) => u,
                None => return Some(Err(engine_failed("the engine stopped"))),
            };
            if self.choices[choice].done {
                continue;
            }
            match self.apply(choice, update) {
                Ok(Some(delta)) => return Some(Ok(delta)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }

    fn apply(&mut self, index: usize, update: Update) -> Result<Option<Delta>, ApiError> {
        let stops = &self.model.stops;
        let choice = &mut self.choices[index];
        let mut delta = Delta { choice: index, ..Delta::default() };
        let decode_failed = |e: chatvec_gen::GenError| engine_failed(&e.to_string());
        match update {
            Update::Prompt(logprobs) => delta.prompt = Some(logprobs),
            Update::Token(token) => {
                choice.new_tokens += 1;
                if !stops.contains(token.token) {
                    delta.text = choice.text.push(token.token).map_err(decode_failed)?;
                    delta.logprobs.push(token);
                }
                if choice.text.stopped {
                    self.submission.cancel[index].store(true, Ordering::Relaxed);
                    choice.done = true;
                    delta.finish = Some("stop");
                }
            }
            Update::Finished { reason, new_tokens, .. } => {
                delta.text = choice.text.finish().map_err(decode_failed)?;
                choice.new_tokens = new_tokens;
                choice.done = true;
                delta.finish = Some(match reason {
                    StopReason::StopToken { .. } | StopReason::Cancelled => "stop",
                    StopReason::Length | StopReason::Context => "length",
                });
            }
            Update::Failed(message) => return Err(engine_failed(&message)),
        }
        Ok(Some(delta))
    }

    /// `usage`: prompt tokens (each distinct prompt once, as `n` copies share it) and generated
    /// tokens.
    pub fn usage(&self, choices_per_prompt: usize) -> serde_json::Value {
        let prompt: usize = self.choices.iter().step_by(choices_per_prompt.max(1)).map(|c| c.prompt_tokens).sum();
        let completion: usize = self.choices.iter().map(|c| c.new_tokens).sum();
        serde_json::json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }

    /// Number of choices.
    pub fn choices(&self) -> usize {
        self.choices.len()
    }

    /// The model answering.
    pub fn model(&self) -> &ServedModel {
        &self.model
    }
}

fn engine_failed(message: &str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "generation_failed", message)
}
