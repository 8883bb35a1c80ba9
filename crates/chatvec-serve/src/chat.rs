//! `POST /v1/chat/completions`: messages through the model's chat template, answered whole or
//! streamed as `chat.completion.chunk` events, as vLLM answers.

use std::sync::Arc;

use axum::response::Response;
use serde_json::{json, Value};

use crate::answers::{Answers, Delta};
use crate::batch::{SeqRequest, TokenLogprob};
use crate::error::ApiError;
use crate::model::ServedModel;
use crate::request::{Body, Params};
use crate::routes::{into_sse, Meta, Reply};

/// Answers a chat request.
pub async fn handle(model: Arc<ServedModel>, body: Body) -> Result<Response, ApiError> {
    let params = body.params(&model.defaults)?;
    let top = body.chat_logprobs()?;
    let messages = flatten_content(
        body.messages.as_ref().ok_or_else(|| ApiError::bad_param("messages", "`messages` is required"))?,
    )?;
    let prompt = render(&model, messages).await?;
    let max_tokens = params.max_tokens.unwrap_or(model.context.saturating_sub(prompt.len()));
    model.check_fits(prompt.len(), max_tokens, "messages")?;
    if max_tokens == 0 {
        return Err(ApiError::bad_param("max_tokens", "max_tokens must be at least 1"));
    }
    let requests = seq_requests(&model, &prompt, &params, max_tokens, top);
    let meta = Meta::new("chatcmpl", &model.name);
    let answers = Answers::start(model, requests, &params.stop)?;
    if params.stream {
        let shape = StreamShape { n: params.n, include_usage: params.include_usage, logprobs: top.is_some() };
        let opening = (0..params.n).map(|i| role_chunk(&meta, i)).collect();
        return Ok(into_sse(answers, opening, move |delta, answers| chunk_events(&meta, delta, answers, shape)));
    }
    whole(answers, &meta, params.n, top.is_some()).await
}

/// One sequence per choice; choice `i` samples with `seed + i`.
fn seq_requests(
    model: &ServedModel,
    prompt: &[u32],
    p: &Params,
    max_tokens: usize,
    top: Option<usize>,
) -> Vec<SeqRequest> {
    (0..p.n)
        .map(|i| SeqRequest {
            seed: p.sampling.seed.wrapping_add(i as u64),
            top_logprobs: top.unwrap_or(0),
            ..SeqRequest::new(prompt.to_vec(), max_tokens, p.sampling.clone(), model.stops.clone())
        })
        .collect()
}

/// Checks the messages and turns content given as a list of text parts into one string, as
/// vLLM does for templates that expect strings.
fn flatten_content(messages: &Value) -> Result<Value, ApiError> {
    let list = match messages {
        Value::Array(list) if !list.is_empty() => list,
        _ => return Err(ApiError::bad_param("messages", "messages must be a non-empty list")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let mut m = m.clone();
        let param = format!("messages[{i}]");
        let Some(obj) = m.as_object_mut() else {
            return Err(ApiError::bad_param(param, "each message must be an object"));
        };
        if !obj.get("role").is_some_and(Value::is_string) {
            return Err(ApiError::bad_param(format!("{param}.role"), "each message needs a string `role`"));
        }
        if let Some(Value::Array(parts)) = obj.get("content") {
            let texts: Option<Vec<&str>> =
                parts.iter().map(|p| p.get("text").and_then(Value::as_str).filter(|_| p["type"] == "text")).collect();
            let texts = texts.ok_or_else(|| {
                ApiError::bad_param(format!("{param}.content"), "only text content parts are supported")
            })?;
            let joined = texts.join("\n");
            obj.insert("content".into(), Value::String(joined));
        }
        out.push(m);
    }
    Ok(Value::Array(out))
}

/// The prompt ids: the template rendered with the generation prompt, encoded without special
/// tokens (the template wrote them), as `chatvec generate` does.
async fn render(model: &Arc<ServedModel>, messages: Value) -> Result<Vec<u32>, ApiError> {
    let template_error =
        |why: &String| ApiError::bad_param("model", format!("{} has no chat template: {why}", model.name));
    model.template.as_ref().map_err(template_error)?;
    let m = model.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        let text = m.template.as_ref().expect("checked").render_json(&messages, true)?;
        m.tokenizer.encode(&text, false)
    })
    .await
    .map_err(|e| ApiError::bad_request(format!("rendering failed: {e}")))?;
    rendered.map_err(|e| ApiError::bad_param("messages", e.to_string()))
}

/// The whole answer as one `chat.completion`.
async fn whole(mut answers: Answers, meta: &Meta, n: usize, logprobs: bool) -> Result<Response, ApiError> {
    let mut texts = vec![String::new(); n];
    let mut lps: Vec<Vec<TokenLogprob>> = vec![Vec::new(); n];
    let mut finish = vec![None; n];
    while let Some(delta) = answers.next().await {
        let delta = delta?;
        texts[delta.choice].push_str(&delta.text);
        lps[delta.choice].extend(delta.logprobs);
        finish[delta.choice] = delta.finish.or(finish[delta.choice]);
    }
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "index": i,
                "message": {"role": "assistant", "content": texts[i]},
                "logprobs": logprobs.then(|| logprobs_json(answers.model(), &lps[i])),
                "finish_reason": finish[i],
            })
        })
        .collect();
    let body = json!({
        "id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
        "choices": choices, "usage": answers.usage(n),
    });
    Ok(Reply::json(body))
}

/// The SSE events of one delta: a role chunk before a choice's first text, then its text and
/// finish reason; after the last choice, the usage chunk when asked for.
/// What a stream holds besides the text.
#[derive(Clone, Copy)]
struct StreamShape {
    n: usize,
    include_usage: bool,
    logprobs: bool,
}

fn chunk_events(meta: &Meta, delta: Option<&Delta>, answers: &Answers, shape: StreamShape) -> Vec<Value> {
    let chunk = |choices: Value| json!({"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model, "choices": choices});
    let Some(d) = delta else {
        if !shape.include_usage {
            return Vec::new();
        }
        let mut last = chunk(json!([]));
        last["usage"] = answers.usage(shape.n);
        return vec![last];
    };
    let logprobs = (shape.logprobs && !d.logprobs.is_empty()).then(|| logprobs_json(answers.model(), &d.logprobs));
    let mut out = Vec::new();
    if !d.text.is_empty() || logprobs.is_some() {
        let delta = json!({"content": d.text});
        out.push(chunk(json!([{"index": d.choice, "delta": delta, "logprobs": logprobs, "finish_reason": null}])));
    }
    if let Some(reason) = d.finish {
        out.push(chunk(json!([{"index": d.choice, "delta": {}, "logprobs": null, "finish_reason": reason}])));
    }
    out
}

/// The first chunk of each choice: the assistant role.
fn role_chunk(meta: &Meta, choice: usize) -> Value {
    json!({"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
           "choices": [{"index": choice, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]})
}

/// Chat's `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
fn logprobs_json(model: &ServedModel, tokens: &[TokenLogprob]) -> Value {
    let entry = |id: u32, logprob: f32| {
        let token = model.tokenizer.decode(&[id], false).unwrap_or_default();
        json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()})
    };
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(t.token, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
            e
        })
        .collect();
    json!({"content": content})
}
