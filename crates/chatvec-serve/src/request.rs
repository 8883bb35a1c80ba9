//! The request body of both endpoints, parsed and checked into typed values before any work:
//! malformed JSON and each bad field get a 400 that names the field.

use chatvec_gen::{GenerationDefaults, SamplingParams};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// Most choices per request (`n`).
pub const MAX_N: u64 = 16;
/// Most alternatives per position (`top_logprobs`, legacy `logprobs`).
pub const MAX_TOP_LOGPROBS: u64 = 20;

/// The fields of `/v1/chat/completions` and `/v1/completions` (unknown ones are ignored, as
/// vLLM does).
#[derive(Debug, Default, Deserialize)]
pub struct Body {
    /// Served model name.
    pub model: Option<String>,
    /// Chat messages.
    pub messages: Option<Value>,
    /// Completion prompt(s).
    pub prompt: Option<Value>,
    /// Softmax temperature; 0 is greedy (default: the model's generation config, else 1).
    pub temperature: Option<f64>,
    /// Nucleus mass in (0, 1].
    pub top_p: Option<f64>,
    /// Keep the k most likely tokens (-1 or 0: off); a vLLM extension.
    pub top_k: Option<i64>,
    /// transformers' repetition penalty; a vLLM extension.
    pub repetition_penalty: Option<f64>,
    /// Not supported beyond 0.
    pub presence_penalty: Option<f64>,
    /// Not supported beyond 0.
    pub frequency_penalty: Option<f64>,
    /// Most tokens to generate.
    pub max_tokens: Option<u64>,
    /// Chat's newer name for `max_tokens` (wins over it).
    pub max_completion_tokens: Option<u64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Seed of choice 0 (choice i uses seed + i).
    pub seed: Option<i64>,
    /// Choices per prompt.
    pub n: Option<u64>,
    /// Answer as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Chat: a boolean; completions: the number of alternatives (legacy).
    pub logprobs: Option<Value>,
    /// Chat: alternatives per position.
    pub top_logprobs: Option<u64>,
    /// Completions: put the prompt before the answer (with its logprobs).
    pub echo: Option<bool>,
    /// `/tokenize`: add the tokenizer's special tokens (BOS); default true, as vLLM.
    pub add_special_tokens: Option<bool>,
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// A single stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    /// Send a last chunk with `usage`.
    pub include_usage: bool,
}

/// Parses `bytes` as a request body: 400 for malformed JSON, 400 naming the field of a value of
/// the wrong type.
pub fn parse(bytes: &[u8]) -> Result<Body, ApiError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let param = e.path().to_string();
        ApiError::bad_param(param.clone(), format!("{param}: {}", e.inner()))
    })
}

/// What a request asks of the sampler and of each answer, checked.
#[derive(Debug, Clone)]
pub struct Params {
    /// How tokens are chosen.
    pub sampling: SamplingParams,
    /// `max_tokens`/`max_completion_tokens` if given.
    pub max_tokens: Option<usize>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Choices per prompt.
    pub n: usize,
    /// Answer as server-sent events.
    pub stream: bool,
    /// Send a last chunk with `usage`.
    pub include_usage: bool,
}

impl Body {
    /// Checks the fields both endpoints share; `defaults` are the model's generation config.
    pub fn params(&self, defaults: &GenerationDefaults) -> Result<Params, ApiError> {
        let temperature = self.temperature.unwrap_or(defaults.temperature);
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(ApiError::bad_param("temperature", format!("temperature must be >= 0, got {temperature}")));
        }
        let top_p = self.top_p.unwrap_or(defaults.top_p);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad_param("top_p", format!("top_p must be in (0, 1], got {top_p}")));
        }
        let top_k = match self.top_k {
            None => None,
            Some(k) if k == -1 || k == 0 => None,
            Some(k) if k > 0 => Some(k as usize),
            Some(k) => return Err(ApiError::bad_param("top_k", format!("top_k must be -1 (off) or >= 1, got {k}"))),
        };
        let repetition_penalty = self.repetition_penalty.unwrap_or(defaults.repetition_penalty);
        if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
            return Err(ApiError::bad_param(
                "repetition_penalty",
                format!("repetition_penalty must be > 0, got {repetition_penalty}"),
            ));
        }
        for (name, value) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::bad_param(name, format!("{name} is not supported; use repetition_penalty")));
            }
        }
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::bad_param("n", format!("n must be in 1..={MAX_N}, got {n}")));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::bad_param("stop", "stop strings must not be empty"));
        }
        let seed = self.seed.map(|s| s as u64).unwrap_or_else(clock_seed);
        let sampling =
            SamplingParams { temperature, top_p, top_k, repetition_penalty, greedy: temperature == 0.0, seed };
        Ok(Params {
            sampling,
            max_tokens: self.max_completion_tokens.or(self.max_tokens).map(|m| m as usize),
            stop,
            n: n as usize,
            stream: self.stream.unwrap_or(false),
            include_usage: self.stream_options.as_ref().is_some_and(|o| o.include_usage),
        })
    }

    /// The model name (400 when missing).
    pub fn model(&self) -> Result<&str, ApiError> {
        self.model.as_deref().ok_or_else(|| ApiError::bad_param("model", "`model` is required"))
    }

    /// Chat's `logprobs` (bool) and `top_logprobs`: alternatives per position, if asked.
    pub fn chat_logprobs(&self) -> Result<Option<usize>, ApiError> {
        let on = match &self.logprobs {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(ApiError::bad_param("logprobs", format!("logprobs must be a boolean, got {other}")))
            }
        };
        match (on, self.top_logprobs) {
            (_, Some(k)) if k > MAX_TOP_LOGPROBS => Err(ApiError::bad_param(
                "top_logprobs",
                format!("top_logprobs must be in 0..={MAX_TOP_LOGPROBS}, got {k}"),
            )),
            (false, Some(k)) if k > 0 => Err(ApiError::bad_param("top_logprobs", "top_logprobs needs logprobs: true")),
            (true, k) => Ok(Some(k.unwrap_or(0) as usize)),
            (false, _) => Ok(None),
        }
    }

    /// Completions' legacy `logprobs` (an integer): alternatives per position, if asked.
    pub fn completion_logprobs(&self) -> Result<Option<usize>, ApiError> {
        match &self.logprobs {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(k)) if k.as_u64().is_some_and(|k| k <= MAX_TOP_LOGPROBS) => {
                Ok(k.as_u64().map(|k| k as usize))
            }
            Some(other) => Err(ApiError::bad_param(
                "logprobs",
                format!("logprobs must be an integer in 0..={MAX_TOP_LOGPROBS}, got {other}"),
            )),
        }
    }
}

/// A seed from the clock, for requests without one.
fn clock_seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(body: &str) -> Option<String> {
        match parse(body.as_bytes()).and_then(|b| b.params(&GenerationDefaults::default()).map(|_| b)) {
            Ok(_) => None,
            Err(e) => Some(e.param.unwrap_or_default()),
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(param_of(r#"{"temperature": "hot"}"#).as_deref(), Some("temperature"));
        assert_eq!(param_of(r#"{"temperature": -1}"#).as_deref(), Some("temperature"));
        assert_eq!(param_of(r#"{"top_p": 0}"#).as_deref(), Some("top_p"));
        assert_eq!(param_of(r#"{"n": 0}"#).as_deref(), Some("n"));
        assert_eq!(param_of(r#"{"max_tokens": -3}"#).as_deref(), Some("max_tokens"));
        assert_eq!(param_of(r#"{"stop": [1]}"#).as_deref(), Some("stop"));
        assert_eq!(
            param_of(r#"{"stream_options": {"include_usage": 1}}"#).as_deref(),
            Some("stream_options.include_usage")
        );
        assert_eq!(param_of(r#"{"model": "m", "temperature": 0.5, "stop": "x"}"#), None);
    }

    #[test]
    fn malformed_json_and_non_objects_are_refused() {
        assert!(parse(b"{\"model\": ").unwrap_err().message.contains("not valid JSON"));
        assert!(parse(b"[1, 2]").unwrap_err().message.contains("JSON object"));
    }

    #[test]
    fn temperature_zero_is_greedy_and_max_completion_tokens_wins() {
        let b = parse(br#"{"temperature": 0, "max_tokens": 5, "max_completion_tokens": 7, "seed": 3}"#).unwrap();
        let p = b.params(&GenerationDefaults::default()).unwrap();
        assert!(p.sampling.is_greedy());
        assert_eq!((p.max_tokens, p.sampling.seed), (Some(7), 3));
    }
}
