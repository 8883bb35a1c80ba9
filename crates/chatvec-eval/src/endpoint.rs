//! The chat evaluation through any OpenAI-compatible server (`chatvec serve`, vLLM, llama.cpp's
//! server): the same prompts, sampling and metrics as a local run, with the answers from
//! `POST {url}/chat/completions`. A user who outgrows one machine serves the merges elsewhere
//! and judges them with the same command.
//!
//! A server says whether an answer stopped (`finish_reason`) and how many tokens it took
//! (`usage`), not which stop token ended it, so `stop_token` and the end-of-turn probability
//! stay empty.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::chat_eval::{summarize, ChatEval, ChatOptions, Prompt, PromptResult};

/// An OpenAI-compatible server.
pub struct Endpoint {
    /// The API root, ending in `/v1`.
    base: String,
    api_key: Option<String>,
    agent: ureq::Agent,
}

impl Endpoint {
    /// The server at `url` (`http://host:port` or `http://host:port/v1`), sending `api_key` as
    /// a Bearer token when given.
    pub fn new(url: &str, api_key: Option<String>) -> Self {
        let url = url.trim_end_matches('/');
        let base = if url.ends_with("/v1") { url.to_string() } else { format!("{url}/v1") };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        Endpoint { base, api_key, agent }
    }

    /// The API root.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// POSTs `body` to `path` and returns the JSON answer; a 4xx/5xx becomes an error with the
    /// server's message.
    fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.post(&url).header("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let mut response = request.send(body.to_string()).with_context(|| format!("{url}: no answer"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().with_context(|| format!("{url}: unreadable answer"))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status != 200 {
            // OpenAI nests the message in `error`; vLLM puts it at the top level.
            let message = [&value["error"]["message"], &value["message"]]
                .into_iter()
                .find_map(Value::as_str)
                .map_or(text, str::to_string);
            bail!("{url}: HTTP {status}: {}", message.escape_debug());
        }
        if value.is_null() {
            bail!("{url}: the answer is not JSON");
        }
        Ok(value)
    }

    /// Answers one prompt with `model` and measures the answer as a local run does.
    pub fn answer(&self, model: &str, p: &Prompt, opts: &ChatOptions) -> Result<PromptResult> {
        let started = Instant::now();
        let mut messages = Vec::new();
        if let Some(s) = &p.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.push(json!({"role": "user", "content": p.prompt}));
        let mut body = json!({
            "model": model, "messages": messages, "max_tokens": opts.max_new_tokens,
            "temperature": opts.temperature, "top_p": opts.top_p, "seed": opts.seed,
        });
        if opts.top_k > 0 {
            body["top_k"] = json!(opts.top_k);
        }
        let reply = self.post("/chat/completions", &body)?;
        let choice = &reply["choices"][0];
        let Some(raw) = choice["message"]["content"].as_str() else {
            bail!("{}/chat/completions: no choices[0].message.content in the answer", self.base);
        };
        let tokens = reply["usage"]["completion_tokens"].as_u64().unwrap_or_default() as usize;
        let stopped = choice["finish_reason"] == "stop";
        Ok(PromptResult::measure(p, raw, tokens, stopped, None, started.elapsed().as_secs_f64()))
    }
}

/// Runs every prompt against `model` on `endpoint`; `on_result` sees each result as it is made.
pub fn run_chat_eval_endpoint(
    endpoint: &Endpoint,
    model: &str,
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
        let r = endpoint.answer(model, p, opts).with_context(|| format!("prompt {}", p.id))?;
        on_result(i, &r);
        results.push(r);
    }
    Ok(ChatEval {
        model: format!("{model} at {}", endpoint.base()),
        template_from: None,
        options: opts.clone(),
        summary: summarize(&results),
        results,
        seconds: started.elapsed().as_secs_f64(),
    })
}
