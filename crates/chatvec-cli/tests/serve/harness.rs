//! What the serve and endpoint tests share: a running `chatvec serve` on a free port, an HTTP
//! client that returns error statuses, and a stand-in for vLLM's OpenAI server.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running `chatvec serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Server {
    /// Starts `chatvec serve --port 0 ARGS` and waits for the address it prints.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatvec"))
            .args(["serve", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let started = Instant::now();
        let base = loop {
            let line = log.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| panic!("no address: {seen:?}"));
            if let Some(at) = line.find("http://") {
                break line[at..].split_whitespace().next().unwrap().to_string();
            }
            seen.push(line);
            assert!(started.elapsed() < Duration::from_secs(120), "{seen:?}");
        };
        Server { child, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `body` (raw bytes) and returns (status, parsed JSON body).
    pub fn post(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let mut resp = agent().post(self.url(path)).header("Content-Type", "application/json").send(body).unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post(path, body.to_string().as_bytes())
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut resp = agent().get(self.url(path)).call().unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap())
    }

    /// Sends `signal` and waits for the exit status (at most `within`).
    pub fn stop(mut self, signal: &str, within: Duration) -> Option<i32> {
        Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("still running {within:?} after SIG{signal}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that returns 4xx/5xx answers instead of failing on them.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// How the vLLM stand-in behaves.
#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    /// As vLLM: chat, `/tokenize`, and `/v1/completions` with echo and logprobs.
    Vllm,
    /// Echo with logprobs refused with 400, as servers that do not support it answer.
    NoEcho,
    /// Every API request fails with 500.
    Broken,
}

/// The stand-in's context (`max_model_len` in `/v1/models`).
pub const MOCK_CONTEXT: usize = 64;

/// A stand-in for vLLM's OpenAI server, answering in vLLM's shapes (extra fields `stop_reason`,
/// `prompt_logprobs`, `kv_transfer_params`; errors as a flat `{"object": "error", "message",
/// "type", "code"}`), every request (path and body) kept:
/// - `GET /v1/models` lists its one model with `max_model_len` [`MOCK_CONTEXT`];
/// - `POST /v1/chat/completions` repeats the user's message; prompts containing "길게" run to
///   the length limit;
/// - `POST /tokenize` gives [`mock_token_ids`];
/// - `POST /v1/completions` with echo gives each prompt token the log-probability
///   [`mock_logprob`] of its id (null for the first).
pub struct MockVllm {
    pub base: String,
    pub requests: Arc<Mutex<Vec<(String, Value)>>>,
    /// The most requests it held open at once.
    pub most_in_flight: Arc<AtomicUsize>,
}

/// The stand-in's tokenizer: BOS (1), then one id per character.
pub fn mock_token_ids(text: &str) -> Vec<u64> {
    std::iter::once(1).chain(text.chars().map(|c| c as u64 % 997 + 2)).collect()
}

/// The stand-in's log-probability of token `id`, whatever precedes it.
pub fn mock_logprob(id: u64) -> f64 {
    -((id % 13) as f64 + 1.0) / 4.0
}

impl MockVllm {
    pub fn start(model: &'static str, mode: Mode) -> MockVllm {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let (in_flight, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (now, peak) = (in_flight.clone(), most.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let (log, now, peak) = (log.clone(), now.clone(), peak.clone());
                let stream = stream.unwrap();
                // One thread per connection, as a server that batches: concurrent clients overlap.
                std::thread::spawn(move || {
                    let open = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(open, Ordering::SeqCst);
                    // Counted out before the answer is written: once the client has it, it may
                    // send its next request before this thread would get to run again.
                    Self::serve_one(stream, model, mode, &log, || {
                        now.fetch_sub(1, Ordering::SeqCst);
                    });
                });
            }
        });
        MockVllm { base, requests, most_in_flight: most }
    }

    /// Reads one request from `stream`, keeps it in `log` and answers it (a chat answer takes
    /// 50 ms, so that clients sending together overlap).
    fn serve_one(
        mut stream: std::net::TcpStream,
        model: &str,
        mode: Mode,
        log: &Mutex<Vec<(String, Value)>>,
        answering: impl FnOnce(),
    ) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let (mut length, mut request_line) = (0, String::new());
        reader.read_line(&mut request_line).unwrap();
        let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_string();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        log.lock().unwrap().push((path.clone(), request.clone()));
        if path == "/v1/chat/completions" {
            std::thread::sleep(Duration::from_millis(50));
        }
        let (status, answer) = Self::answer(model, mode, &path, &request);
        let text = answer.to_string();
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            text.len()
        );
        answering();
        stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(text.as_bytes())).unwrap();
    }

    /// The requests sent to `path`.
    pub fn sent(&self, path: &str) -> Vec<Value> {
        self.requests.lock().unwrap().iter().filter(|(p, _)| p == path).map(|(_, v)| v.clone()).collect()
    }

    fn error(status: &'static str, message: String) -> (&'static str, Value) {
        let code: u16 = status[..3].parse().unwrap();
        (status, json!({"object": "error", "message": message, "type": "BadRequestError", "param": null, "code": code}))
    }

    fn answer(model: &str, mode: Mode, path: &str, request: &Value) -> (&'static str, Value) {
        if mode == Mode::Broken {
            return Self::error("500 Internal Server Error", "EngineCore encountered an issue.".into());
        }
        if path == "/v1/models" {
            let data = json!([{"id": model, "object": "model", "owned_by": "vllm", "max_model_len": MOCK_CONTEXT}]);
            return ("200 OK", json!({"object": "list", "data": data}));
        }
        if request["model"] != model {
            let message = format!("The model `{}` does not exist.", request["model"].as_str().unwrap_or_default());
            return Self::error("404 Not Found", message);
        }
        match path {
            "/v1/chat/completions" => ("200 OK", Self::chat(model, request)),
            "/tokenize" => {
                let ids = mock_token_ids(request["prompt"].as_str().unwrap());
                ("200 OK", json!({"count": ids.len(), "max_model_len": MOCK_CONTEXT, "tokens": ids}))
            }
            "/v1/completions" if mode == Mode::NoEcho => {
                Self::error("400 Bad Request", "echo with logprobs is not supported".into())
            }
            "/v1/completions" => ("200 OK", Self::echo(model, request)),
            _ => ("404 Not Found", json!({"detail": "Not Found"})),
        }
    }

    fn chat(model: &str, request: &Value) -> Value {
        let user = request["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string();
        let (finish, tokens) =
            if user.contains("길게") { ("length", request["max_tokens"].clone()) } else { ("stop", json!(9)) };
        json!({
            "id": "chatcmpl-0c9b2e", "object": "chat.completion", "created": 1765000000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "reasoning_content": null,
                         "content": format!("네, {user}에 답합니다."), "tool_calls": []},
                         "logprobs": null, "finish_reason": finish, "stop_reason": null}],
            "usage": {"prompt_tokens": 21, "total_tokens": 30, "completion_tokens": tokens, "prompt_tokens_details": null},
            "prompt_logprobs": null, "kv_transfer_params": null,
        })
    }

    /// vLLM's answer to `echo` with `max_tokens: 0`: the prompt's tokens with their logprobs.
    fn echo(model: &str, request: &Value) -> Value {
        let ids: Vec<u64> = request["prompt"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!((request["echo"].as_bool(), request["max_tokens"].as_u64()), (Some(true), Some(0)));
        let logprobs: Vec<Value> =
            ids.iter().enumerate().map(|(i, &id)| if i == 0 { Value::Null } else { json!(mock_logprob(id)) }).collect();
        let tops: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| if i == 0 { Value::Null } else { json!({format!("t{id}"): mock_logprob(id)}) })
            .collect();
        json!({
            "id": "cmpl-5a1f", "object": "text_completion", "created": 1765000000, "model": model,
            "choices": [{"index": 0, "text": "", "finish_reason": "length", "stop_reason": null,
                         "prompt_logprobs": null,
                         "logprobs": {"text_offset": (0..ids.len()).collect::<Vec<_>>(),
                                      "token_logprobs": logprobs,
                                      "tokens": ids.iter().map(|id| format!("t{id}")).collect::<Vec<_>>(),
                                      "top_logprobs": tops}}],
            "usage": {"prompt_tokens": ids.len(), "total_tokens": ids.len(), "completion_tokens": 0},
            "kv_transfer_params": null,
        })
    }
}

/// A JSON-lines prompt file for the endpoint tests.
pub fn prompt_file(dir: &Path) -> PathBuf {
    let path = dir.join("prompts.jsonl");
    let lines = [
        json!({"id": "a", "category": "question", "prompt": "한국의 수도는?"}),
        json!({"id": "b", "category": "instruction", "prompt": "길게 설명해 주세요", "system": "친절하게"}),
    ];
    std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    path
}
