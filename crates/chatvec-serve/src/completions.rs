//! `POST /v1/completions`: text completion of one or more prompts (strings or token ids), with
//! `echo` and the legacy `logprobs` object that loglikelihood harnesses read.

use std::sync::Arc;

use axum::response::Response;
use serde_json::{json, Map, Value};

use crate::answers::{Answers, Delta};
use crate::batch::{SeqRequest, TokenLogprob};
use crate::error::ApiError;
use crate::model::ServedModel;
use crate::request::{Body, Params};
use crate::routes::{into_sse, Meta, Reply};

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: usize = 16;

/// Most prompts in one request: each becomes queued sequences, so a body of a million tiny
/// prompts is refused before it is tokenized.
pub const MAX_PROMPTS: usize = 1024;

/// One prompt: its ids and the text echoed for it.
struct Prompt {
    ids: Vec<u32>,
    text: String,
}

/// Answers a completion request.
pub async fn handle(model: Arc<ServedModel>, body: Body) -> Result<Response, ApiError> {
    let params = body.params(&model.defaults)?;
    let top = body.completion_logprobs()?;
    let echo = body.echo.unwrap_or(false);
    let prompts = prompts(&model, body.prompt.as_ref())?;
    let max_tokens = params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    for p in &prompts {
        model.check_fits(p.ids.len(), max_tokens, "prompt")?;
    }
    let requests: Vec<SeqRequest> = prompts
        .iter()
        .flat_map(|p| (0..params.n).map(move |i| (p, i)))
        .map(|(p, i)| seq_request(&model, &p.ids, &params, i, max_tokens, echo && top.is_some(), top))
        .collect();
    let echoes: Vec<String> =
        prompts.iter().flat_map(|p| std::iter::repeat_n(p.text.clone(), params.n)).filter(|_| echo).collect();
    let meta = Meta::new("cmpl", &model.name);
    let answers = Answers::start(model, requests, &params.stop)?;
    let n = params.n;
    if params.stream {
        let include_usage = params.include_usage;
        let opening = echoes
            .iter()
            .enumerate()
            .filter(|_| top.is_none())
            .map(|(i, text)| chunk(&meta, i, text, None, None))
            .collect();
        return Ok(into_sse(answers, opening, move |delta, answers| {
            stream_events(&meta, delta, answers, n, &echoes, include_usage, top.is_some())
        }));
    }
    whole(answers, &meta, n, echoes, top.is_some()).await
}

fn seq_request(
    model: &ServedModel,
    ids: &[u32],
    p: &Params,
    choice: usize,
    max_tokens: usize,
    prompt_logprobs: bool,
    top: Option<usize>,
) -> SeqRequest {
    SeqRequest {
        seed: p.sampling.seed.wrapping_add(choice as u64),
        prompt_logprobs,
        top_logprobs: top.unwrap_or(0),
        ..SeqRequest::new(ids.to_vec(), max_tokens, p.sampling.clone(), model.stops.clone())
    }
}

/// `prompt` as a string, a list of strings, a list of token ids, or a list of those lists.
/// Text is encoded with the tokenizer's special tokens (BOS), as vLLM does.
fn prompts(model: &ServedModel, prompt: Option<&Value>) -> Result<Vec<Prompt>, ApiError> {
    let bad = |m: String| ApiError::bad_param("prompt", m);
    let from_text = |s: &str| -> Result<Prompt, ApiError> {
        let ids = model.tokenizer.encode(s, true).map_err(|e| bad(e.to_string()))?;
        Ok(Prompt { ids, text: s.to_string() })
    };
    let from_ids = |v: &[Value]| -> Result<Prompt, ApiError> {
        let ids = v
            .iter()
            .map(|x| x.as_u64().filter(|&id| id < model.vocab as u64).map(|id| id as u32))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| bad(format!("token ids must be integers in 0..{}", model.vocab)))?;
        let text = model.tokenizer.decode(&ids, false).map_err(|e| bad(e.to_string()))?;
        Ok(Prompt { ids, text })
    };
    let out = match prompt {
        None => return Err(bad("`prompt` is required".into())),
        Some(Value::String(s)) => vec![from_text(s)?],
        Some(Value::Array(list)) if !list.is_empty() && list.iter().all(Value::is_number) => vec![from_ids(list)?],
        Some(Value::Array(list)) if list.len() > MAX_PROMPTS => {
            return Err(bad(format!("at most {MAX_PROMPTS} prompts per request, got {}", list.len())))
        }
        Some(Value::Array(list)) if !list.is_empty() => list
            .iter()
            .map(|item| match item {
                Value::String(s) => from_text(s),
                Value::Array(ids) => from_ids(ids),
                _ => Err(bad("a list prompt holds strings or lists of token ids".into())),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("prompt must be a string, a list of strings, or token ids".into())),
    };
    if out.iter().any(|p| p.ids.is_empty()) {
        return Err(bad("a prompt has no tokens".into()));
    }
    Ok(out)
}

/// The whole answer as one `text_completion`.
async fn whole(
    mut answers: Answers,
    meta: &Meta,
    n: usize,
    echoes: Vec<String>,
    logprobs: bool,
) -> Result<Response, ApiError> {
    let count = answers.choices();
    let mut texts: Vec<String> = (0..count).map(|i| echoes.get(i).cloned().unwrap_or_default()).collect();
    let mut tokens: Vec<Vec<TokenLogprob>> = vec![Vec::new(); count];
    let mut finish = vec![None; count];
    while let Some(delta) = answers.next().await {
        let d = delta?;
        if let Some(prompt) = d.prompt {
            tokens[d.choice].splice(0..0, prompt);
        }
        texts[d.choice].push_str(&d.text);
        tokens[d.choice].extend(d.logprobs);
        finish[d.choice] = d.finish.or(finish[d.choice]);
    }
    let choices: Vec<Value> = (0..count)
        .map(|i| {
            json!({"index": i, "text": texts[i], "logprobs": logprobs.then(|| legacy_logprobs(answers.model(), &tokens[i])),
                   "finish_reason": finish[i]})
        })
        .collect();
    let body = json!({"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model,
                      "choices": choices, "usage": answers.usage(n)});
    Ok(Reply::json(body))
}

fn chunk(meta: &Meta, index: usize, text: &str, logprobs: Option<Value>, finish: Option<&str>) -> Value {
    json!({"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model,
           "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]})
}

/// The SSE events of one delta (the echo comes with the prompt's log-probabilities when they
/// were asked for, else in the opening events).
fn stream_events(
    meta: &Meta,
    delta: Option<&Delta>,
    answers: &Answers,
    n: usize,
    echoes: &[String],
    include_usage: bool,
    logprobs: bool,
) -> Vec<Value> {
    let Some(d) = delta else {
        if !include_usage {
            return Vec::new();
        }
        let mut last = json!({"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model, "choices": []});
        last["usage"] = answers.usage(n);
        return vec![last];
    };
    let mut out = Vec::new();
    if let Some(prompt) = &d.prompt {
        let echo = echoes.get(d.choice).map(String::as_str).unwrap_or_default();
        out.push(chunk(meta, d.choice, echo, Some(legacy_logprobs(answers.model(), prompt)), None));
    }
    if !d.text.is_empty() || !d.logprobs.is_empty() || d.finish.is_some() {
        let logprobs = (logprobs && !d.logprobs.is_empty()).then(|| legacy_logprobs(answers.model(), &d.logprobs));
        out.push(chunk(meta, d.choice, &d.text, logprobs, d.finish));
    }
    out
}

/// The legacy `logprobs` object: `tokens`, `token_logprobs`, `top_logprobs` (a token → logprob
/// map holding the alternatives and the token itself) and `text_offset` (characters from the
/// start of the choice's text, summed over the token strings as vLLM does).
fn legacy_logprobs(model: &ServedModel, tokens: &[TokenLogprob]) -> Value {
    let text = |id: u32| model.tokenizer.decode(&[id], false).unwrap_or_default();
    let mut offset = 0;
    let (mut strings, mut logprobs, mut tops, mut offsets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in tokens {
        let s = text(t.token);
        offsets.push(offset);
        offset += s.chars().count();
        if t.logprob.is_nan() {
            logprobs.push(Value::Null);
            tops.push(Value::Null);
        } else {
            logprobs.push(json!(t.logprob));
            let mut top = Map::new();
            for &(id, lp) in &t.top {
                top.entry(text(id)).or_insert(json!(lp));
            }
            top.entry(s.clone()).or_insert(json!(t.logprob));
            tops.push(Value::Object(top));
        }
        strings.push(s);
    }
    json!({"tokens": strings, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets})
}
