//! Judging models served by any OpenAI-compatible server (`chatvec serve`, vLLM): the chat
//! evaluation and the perplexity of a local run, asked over HTTP. A user who outgrows one
//! machine serves the merges elsewhere and judges them with the same commands.
//!
//! - **Chat:** the same prompts, sampling and seed as a local run, each prompt one
//!   `POST /v1/chat/completions`, several in flight at once so a batching server batches them.
//!   A server says whether an answer stopped (`finish_reason`) and how many tokens it took
//!   (`usage`), not which stop token ended it, so `stop_token` and the end-of-turn probability
//!   stay empty.
//! - **Perplexity:** the text is tokenized by the server (`POST /tokenize`, vLLM's endpoint,
//!   with special tokens, as a local run encodes it), cut into the sliding windows of a local run
//!   ([`crate::perplexity::windows`]), and each window is sent as token ids to
//!   `POST /v1/completions` with `echo: true, logprobs: 1, max_tokens: 0`, as lm-eval's
//!   loglikelihood does. A window scores the tokens after the previous window's end (never its
//!   first token), with NLL = −`token_logprobs`; so the result is the local one on the same ids.
//!   A server without `/tokenize`, or one that refuses echo with logprobs, gives
//!   [`Scored::Unavailable`] with the reason, not an error.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::chat_eval::{summarize, ChatEval, ChatOptions, Prompt, PromptResult};
use crate::error::{EvalError, Result};
use crate::perplexity::{windows, Perplexity, Window};

/// An OpenAI-compatible server.
pub struct Endpoint {
    /// The API root, ending in `/v1`.
    base: String,
    api_key: Option<String>,
    agent: ureq::Agent,
}

/// A model a server lists at `/v1/models`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedModel {
    /// The name clients pass as `model`.
    pub id: String,
    /// Its context in tokens, when the server says (vLLM and chatvec serve do).
    pub max_model_len: Option<usize>,
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

    /// The server's root (the API root without `/v1`), where vLLM keeps `/tokenize`.
    fn root(&self) -> &str {
        self.base.strip_suffix("/v1").unwrap_or(&self.base)
    }

    /// Sends a request to `url` (POST with `body`, else GET) and returns the JSON answer; a
    /// 4xx/5xx becomes [`EvalError::HttpStatus`] with the server's message.
    fn call(&self, url: &str, body: Option<&Value>) -> Result<Value> {
        let unreachable = |e: ureq::Error| EvalError::Unreachable { url: url.to_string(), reason: e.to_string() };
        let auth = self.api_key.as_ref().map(|key| format!("Bearer {key}"));
        let response = match body {
            Some(body) => {
                let mut request = self.agent.post(url).header("Content-Type", "application/json");
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.send(body.to_string())
            }
            None => {
                let mut request = self.agent.get(url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.call()
            }
        };
        let mut response = response.map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(unreachable)?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status != 200 {
            // OpenAI nests the message in `error`; vLLM puts it at the top level, FastAPI in `detail`.
            let message = [&value["error"]["message"], &value["message"], &value["detail"]]
                .into_iter()
                .find_map(Value::as_str)
                .map_or(text, str::to_string);
            let message = message.escape_debug().to_string();
            return Err(EvalError::HttpStatus { url: url.to_string(), status, message });
        }
        if value.is_null() {
            return Err(EvalError::BadAnswer { url: url.to_string(), problem: "the answer is not JSON".into() });
        }
        Ok(value)
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(&format!("{}{path}", self.base), Some(body))
    }

    /// The models the server lists (`GET /v1/models`).
    pub fn models(&self) -> Result<Vec<ListedModel>> {
        let url = format!("{}/models", self.base);
        let answer = self.call(&url, None)?;
        let Some(data) = answer["data"].as_array() else {
            return Err(EvalError::BadAnswer { url, problem: "no `data` list in the answer".into() });
        };
        Ok(data
            .iter()
            .filter_map(|m| {
                let id = m["id"].as_str()?.to_string();
                Some(ListedModel { id, max_model_len: m["max_model_len"].as_u64().map(|n| n as usize) })
            })
            .collect())
    }

    /// The listed model called `name`, or an error naming the ones the server lists.
    pub fn model(&self, name: &str) -> Result<ListedModel> {
        let listed = self.models()?;
        listed.iter().find(|m| m.id == name).cloned().ok_or_else(|| {
            let names: Vec<&str> = listed.iter().map(|m| m.id.as_str()).collect();
            EvalError::BadAnswer {
                url: format!("{}/models", self.base),
                problem: format!("no model {name:?} is served; the server lists: {}", names.join(", ")),
            }
        })
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
            return Err(EvalError::BadAnswer {
                url: format!("{}/chat/completions", self.base),
                problem: "no choices[0].message.content in the answer".into(),
            });
        };
        let tokens = reply["usage"]["completion_tokens"].as_u64().unwrap_or_default() as usize;
        let stopped = choice["finish_reason"] == "stop";
        Ok(PromptResult::measure(p, raw, tokens, stopped, None, started.elapsed().as_secs_f64()))
    }

    /// The token ids of `text` by `model`'s tokenizer, special tokens added (`POST /tokenize`).
    pub fn tokenize(&self, model: &str, text: &str) -> Result<Vec<u32>> {
        let url = format!("{}/tokenize", self.root());
        let body = json!({"model": model, "prompt": text, "add_special_tokens": true});
        let answer = self.call(&url, Some(&body))?;
        answer["tokens"]
            .as_array()
            .and_then(|ids| ids.iter().map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok())).collect())
            .ok_or_else(|| EvalError::BadAnswer { url, problem: "no `tokens` list of token ids in the answer".into() })
    }

    /// The log-probability of each of `ids` given the ones before it (the first has none), by
    /// `model`: one `/v1/completions` with the ids as the prompt, echoed with logprobs.
    pub fn prompt_logprobs(&self, model: &str, ids: &[u32]) -> Result<Vec<Option<f64>>> {
        let body = json!({"model": model, "prompt": ids, "echo": true, "logprobs": 1, "max_tokens": 0,
                          "temperature": 0});
        let answer = self.post("/completions", &body)?;
        let bad = |problem: String| EvalError::BadAnswer { url: format!("{}/completions", self.base), problem };
        let Some(logprobs) = answer["choices"][0]["logprobs"]["token_logprobs"].as_array() else {
            return Err(bad("no choices[0].logprobs.token_logprobs in the answer to an echo request".into()));
        };
        if logprobs.len() < ids.len() {
            return Err(bad(format!("{} token logprobs echoed for a prompt of {} tokens", logprobs.len(), ids.len())));
        }
        Ok(logprobs[..ids.len()].iter().map(Value::as_f64).collect())
    }
}

/// Runs `work` on every item, at most `width` at a time, and returns the results in item order;
/// `on_done` sees each result as it arrives (on the calling thread). The first error stops
/// the rest (requests already sent finish) and is returned.
fn in_flight<T: Sync, R: Send>(
    items: &[T],
    width: usize,
    cancel: &AtomicBool,
    work: impl Fn(&T) -> Result<R> + Sync,
    on_done: &mut dyn FnMut(usize, &R),
) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..width.clamp(1, items.len().max(1)) {
            let (tx, next, stop, work) = (tx.clone(), &next, &stop, &work);
            s.spawn(move || loop {
                if stop.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                if tx.send((i, work(item))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut out: Vec<Option<R>> = items.iter().map(|_| None).collect();
        for (i, result) in rx {
            match result {
                Ok(r) => {
                    on_done(i, &r);
                    out[i] = Some(r);
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        out.into_iter().collect::<Option<Vec<R>>>().ok_or(EvalError::Interrupted)
    })
}

/// Runs every prompt against `model` on `endpoint`, `opts.batch_size` requests in flight;
/// `on_result` sees each result as it is made (in the order the answers end).
pub fn run_chat_eval_endpoint(
    endpoint: &Endpoint,
    model: &str,
    prompts: &[Prompt],
    opts: &ChatOptions,
    cancel: &AtomicBool,
    on_result: &mut dyn FnMut(usize, &PromptResult),
) -> Result<ChatEval> {
    let started = Instant::now();
    let answer = |p: &Prompt| {
        let mut r = endpoint.answer(model, p, opts).map_err(|e| e.in_prompt(&p.id))?;
        // Seconds from the start of the evaluation, as a local run counts them.
        r.seconds = started.elapsed().as_secs_f64();
        Ok(r)
    };
    let results = in_flight(prompts, opts.batch_size, cancel, answer, on_result)?;
    Ok(ChatEval {
        model: format!("{model} at {}", endpoint.base()),
        template_from: None,
        options: opts.clone(),
        summary: summarize(&results),
        results,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A perplexity, or why the server could not give one.
#[derive(Debug, Clone)]
pub enum Scored {
    /// Scored as a local run scores it.
    Perplexity(Perplexity),
    /// The server lacks what scoring needs (the reason, one line).
    Unavailable(String),
}

/// Whether `e` means the server does not offer what was asked (no such endpoint, or a refused
/// parameter), as opposed to a server that is down or failing.
fn refused(e: &EvalError) -> bool {
    match e {
        EvalError::HttpStatus { status, .. } => matches!(status, 400 | 404 | 405 | 422 | 501),
        EvalError::BadAnswer { .. } => true,
        _ => false,
    }
}

/// The perplexity of `text` by `model` on `endpoint` (see the module doc), the first
/// `max_tokens` tokens in windows `w`, `width` windows in flight. A server that is down or
/// failing is an error; one that cannot tokenize or echo logprobs gives [`Scored::Unavailable`].
pub fn perplexity_endpoint(
    endpoint: &Endpoint,
    model: &str,
    text: &str,
    max_tokens: Option<usize>,
    w: Window,
    width: usize,
    cancel: &AtomicBool,
) -> Result<Scored> {
    let unavailable = |why: &str, e: EvalError| Ok(Scored::Unavailable(format!("{why}: {e}")));
    let mut ids = match endpoint.tokenize(model, text) {
        Ok(ids) => ids,
        Err(e) if refused(&e) => return unavailable("the server cannot tokenize (POST /tokenize)", e),
        Err(e) => return Err(e),
    };
    if let Some(n) = max_tokens {
        ids.truncate(n);
    }
    if ids.len() < 2 {
        return Err(EvalError::Input(format!("the text has {} token(s); perplexity needs at least 2", ids.len())));
    }
    let plan = windows(ids.len(), w);
    let score = |&(begin, end, first): &(usize, usize, usize)| -> Result<Vec<f64>> {
        let logprobs = endpoint.prompt_logprobs(model, &ids[begin..end])?;
        (first..end)
            .map(|at| {
                logprobs[at - begin].map(|lp| -lp).ok_or_else(|| EvalError::BadAnswer {
                    url: format!("{}/completions", endpoint.base()),
                    problem: format!("token_logprobs[{}] is null; only the first may be", at - begin),
                })
            })
            .collect()
    };
    let nlls = match in_flight(&plan, width, cancel, score, &mut |_, _| {}) {
        Ok(nlls) => nlls,
        Err(e) if refused(&e) => return unavailable("the server refused echo with logprobs", e),
        Err(e) => return Err(e),
    };
    let (total, scored) = nlls.iter().flatten().fold((0.0, 0usize), |(t, n), nll| (t + nll, n + 1));
    let mean = total / scored as f64;
    Ok(Scored::Perplexity(Perplexity {
        tokens: ids.len(),
        scored,
        windows: plan.len(),
        window: w,
        mean_nll: mean,
        perplexity: mean.exp(),
    }))
}
