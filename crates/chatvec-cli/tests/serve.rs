//! `chatvec serve` end to end: the built binary on 127.0.0.1 (a free port), judged by the real
//! clients — the `openai` package and lm-evaluation-harness 0.4.13 (Python via CHATVEC_PYTHON),
//! headless Chromium for the page — and by raw HTTP for the error statuses. A check whose tool
//! is missing is listed as ignored, by name (chatvec-testkit); under `CI` it runs and fails.

mod common;
#[path = "serve/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{agent, prompt_file, MockVllm, Mode, Server};

use common::fixture;
use serde_json::{json, Value};

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/serve");

/// Runs `script` with `args` and parses the JSON record it prints last.
fn run_script(py: &str, script: &str, args: &[&str]) -> Value {
    let o = Command::new(py).arg(Path::new(SCRIPTS).join(script)).args(args).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{script} failed:\n{out}\n{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(out.trim().lines().last().unwrap_or_default()).unwrap()
}

/// `chatvec generate --greedy --json` on `model` with `prompt`.
fn generate_greedy(model: &Path, prompt: &str, max_new_tokens: usize) -> Value {
    let max = max_new_tokens.to_string();
    let args =
        ["generate", "--model", model.to_str().unwrap(), "--prompt", prompt, "--greedy", "--max-new-tokens", &max];
    let o =
        Command::new(env!("CARGO_BIN_EXE_chatvec")).args(args).args(["--quantize", "none", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn chat_model() -> PathBuf {
    fixture("chat")
}

#[test]
#[cfg_attr(not(have_py_openai), ignore = "needs Python with openai (CHATVEC_PYTHON)")]
fn openai_client_greedy_chat_is_the_text_of_generate_greedy() {
    let py = chatvec_testkit::python();
    let prompt = "안녕하세요! 자기소개를 해 주세요.";
    let reference = generate_greedy(&chat_model(), prompt, 48);
    let run = &reference["runs"][0];
    let text = run["text"].as_str().unwrap();
    assert!(text.chars().count() > 12, "the fixture's greedy answer is too short to test stops: {text:?}");
    let stop: String = text.chars().skip(8).take(3).collect();
    let server = Server::start(&["--model", &format!("tiny={}", chat_model().display()), "--quantize", "none"]);
    let got = run_script(&py, "openai_chat.py", &[&server.url("/v1"), "tiny", prompt, "48", &stop]);

    assert_eq!(got["whole"], text, "non-streaming");
    assert_eq!(got["streamed"], text, "streaming");
    assert!(got["streamed_chunks"].as_u64().unwrap() > 1, "the answer came in one chunk");
    let finish = if run["stop"]["kind"] == "length" { "length" } else { "stop" };
    assert_eq!((got["whole_finish"].as_str(), got["streamed_finish"].as_str()), (Some(finish), Some(finish)));
    for usage in [&got["whole_usage"], &got["streamed_usage"]] {
        assert_eq!(usage["prompt_tokens"], reference["prompt_tokens"]);
        assert_eq!(usage["completion_tokens"], run["new_tokens"]);
    }
    // Greedy: every token is its position's most likely one.
    for lp in got["logprobs"].as_array().unwrap() {
        let top = &lp["top"][0];
        assert_eq!((lp["token"].as_str(), lp["logprob"].as_f64()), (top[0].as_str(), top[1].as_f64()), "{lp}");
    }
    let before_stop = &text[..text.find(&stop).unwrap()];
    assert_eq!((got["stopped"].as_str(), got["stopped_finish"].as_str()), (Some(before_stop), Some("stop")));
    assert_eq!(got["stopped_streamed"].as_str(), Some(before_stop));
}

#[test]
#[cfg_attr(
    not(all(have_py_lm_eval, have_py_transformers, have_py_torch)),
    ignore = "needs Python with lm-eval 0.4.13, transformers and torch (CHATVEC_PYTHON)"
)]
fn lm_eval_loglikelihoods_match_transformers_on_the_ids_sent() {
    let py = chatvec_testkit::python();
    let server = Server::start(&["--model", &format!("tiny={}", chat_model().display()), "--quantize", "none"]);
    let out = tempfile::tempdir().unwrap();
    let model = chat_model();
    let args = ["loglikelihood", &server.url("/v1"), "tiny", model.to_str().unwrap(), out.path().to_str().unwrap()];
    let got = run_script(&py, "lm_eval_check.py", &args);
    eprintln!("lm-eval local-completions: {got}");
    assert_eq!((got["docs"].as_u64(), got["items"].as_u64()), (Some(8), Some(32)));
    assert!(got["worst_position"].as_f64().unwrap() < 1e-4, "{got}");
    assert!(got["worst_item"].as_f64().unwrap() < 1e-4, "{got}");
    assert_eq!(got["acc_lm_eval"], got["acc_transformers"]);
    assert_eq!(got["acc_lm_eval"].as_f64(), Some(0.125), "the one item the fixture gets right");
}

#[test]
#[cfg_attr(not(have_py_lm_eval), ignore = "needs Python with lm-eval 0.4.13 (CHATVEC_PYTHON)")]
fn lm_eval_chat_completions_runs_a_generate_until_task() {
    let py = chatvec_testkit::python();
    let server = Server::start(&["--model", &format!("tiny={}", chat_model().display()), "--quantize", "none"]);
    let out = tempfile::tempdir().unwrap();
    let model = chat_model();
    let args = ["generate", &server.url("/v1"), "tiny", model.to_str().unwrap(), out.path().to_str().unwrap()];
    let got = run_script(&py, "lm_eval_check.py", &args);
    assert!(got["results"]["exact_match,none"].is_number(), "{got}");
    let answers: Vec<&str> = got["answers"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let responses = got["responses"].as_array().unwrap();
    assert_eq!((responses.len(), answers.len()), (8, 8));
    for r in responses {
        let r = r[0].as_str().unwrap();
        assert!(answers.iter().any(|a| a.starts_with(r) || *a == r), "{r:?} is not a server answer");
    }
}

#[test]
#[cfg_attr(not(have_py_openai), ignore = "needs Python with openai (CHATVEC_PYTHON)")]
fn sixteen_concurrent_streams_get_the_answers_of_sequential_requests() {
    let py = chatvec_testkit::python();
    let server = Server::start(&["--model", &format!("tiny={}", chat_model().display()), "--quantize", "none"]);
    let got = run_script(&py, "many_clients.py", &[&server.url("/v1"), "tiny", "64"]);
    let (together, alone) = (got["concurrent"].as_array().unwrap(), got["sequential"].as_array().unwrap());
    assert_eq!((together.len(), alone.len()), (16, 16));
    for (t, a) in together.iter().zip(alone) {
        assert_eq!(t, a);
        assert!(!t[0].as_str().unwrap().is_empty() && t[1].is_string() && t[2].as_u64() > Some(0), "{t}");
    }
    let (together_s, alone_s) = (got["concurrent_s"].as_f64().unwrap(), got["sequential_s"].as_f64().unwrap());
    let tokens = got["tokens"].as_f64().unwrap();
    assert!(tokens >= 16.0, "{got}");
    eprintln!(
        "16 streaming clients ({tokens} tokens): {together_s:.2} s together ({:.0} tokens/s), {alone_s:.2} s one after \
         another ({:.0} tokens/s); {}",
        tokens / together_s,
        tokens / alone_s,
        cpu_name()
    );
}

fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default()
}

/// The status and the `error` object of each bad request, and a good request afterwards.
#[test]
fn bad_requests_get_openai_errors_and_the_server_stays_up() {
    let server = Server::start(&["--model", &format!("tiny={}", chat_model().display()), "--max-body", "64KB"]);
    let chat = |extra: Value| {
        let mut body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        server.post_json("/v1/chat/completions", &body)
    };
    let error_of = |(status, body): (u16, Value)| (status, body["error"].clone());

    let (status, e) = error_of(chat(json!({"model": "nope"})));
    assert_eq!((status, e["code"].as_str()), (404, Some("model_not_found")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("tiny"), "{e}");
    for (field, value) in [("temperature", json!("hot")), ("top_p", json!(2)), ("n", json!(0)), ("logprobs", json!(3))]
    {
        let (status, e) = error_of(chat(json!({ field: value })));
        assert_eq!(
            (status, e["param"].as_str(), e["type"].as_str()),
            (400, Some(field), Some("invalid_request_error"))
        );
    }
    let (status, e) = error_of(chat(json!({"max_tokens": 1000})));
    let message = e["message"].as_str().unwrap();
    assert_eq!((status, e["code"].as_str()), (400, Some("context_length_exceeded")), "{e}");
    assert!(message.contains("256") && message.contains("1000 in the completion"), "{message}");
    let (status, e) = error_of(server.post("/v1/completions", br#"{"model": "tiny", "prompt": "#));
    assert!(status == 400 && e["message"].as_str().unwrap().contains("not valid JSON"), "{e}");
    let big = json!({"model": "tiny", "prompt": "가".repeat(40_000)});
    let (status, e) = error_of(server.post_json("/v1/completions", &big));
    assert_eq!(status, 413, "{e}");
    assert!(e["message"].is_string(), "{e}");
    let (status, e) = error_of(server.post_json("/v1/completions", &json!({"model": "tiny", "prompt": [1, 99999]})));
    assert_eq!((status, e["param"].as_str()), (400, Some("prompt")), "{e}");
    let many = json!({"model": "tiny", "prompt": vec![vec![1]; 1025]});
    let (status, e) = error_of(server.post_json("/v1/completions", &many));
    assert!(status == 400 && e["message"].as_str().unwrap().contains("at most 1024 prompts"), "{e}");

    let (status, body) = chat(json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(server.get("/health").0, 200);
    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&models).unwrap()["data"][0]["id"], "tiny");
}

#[test]
fn a_full_queue_answers_429_and_later_requests_succeed() {
    let server =
        Server::start(&["--model", &format!("tiny={}", chat_model().display()), "--max-seqs", "1", "--queue", "1"]);
    let body = json!({"model": "tiny", "prompt": "하나 둘 셋", "max_tokens": 200, "n": 16, "temperature": 1.0});
    let (status, e) = server.post_json("/v1/completions", &body);
    assert_eq!((status, e["error"]["code"].as_str()), (429, Some("queue_full")), "{e}");
    // The refused request's sequences leave the queue at the engine's next step.
    let started = Instant::now();
    loop {
        let (status, ok) =
            server.post_json("/v1/completions", &json!({"model": "tiny", "prompt": "하나", "max_tokens": 3}));
        if status == 200 {
            break;
        }
        assert!(status == 429 && started.elapsed() < Duration::from_secs(10), "{status} {ok}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Completions: a list of token-id prompts with echo and logprobs (lm-eval's request), and
/// `max_tokens: 0` with echo.
#[test]
fn completions_echo_the_prompt_with_legacy_logprobs() {
    let server = Server::start(&["--model", &format!("tiny={}", chat_model().display()), "--quantize", "none"]);
    let body = json!({"model": "tiny", "prompt": [[2000, 300, 301, 302], [2000, 400]], "echo": true, "logprobs": 2,
                      "max_tokens": 1, "temperature": 0});
    let (status, got) = server.post_json("/v1/completions", &body);
    assert_eq!(status, 200, "{got}");
    let choices = got["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (choice, len) in choices.iter().zip([4, 2]) {
        let lp = &choice["logprobs"];
        assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), len + 1, "{lp}");
        assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());
        let offsets: Vec<u64> = lp["text_offset"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]) && offsets[0] == 0, "{offsets:?}");
        let tokens: String = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(choice["text"].as_str(), Some(tokens.as_str()));
        // Greedy: the generated token's logprob is its position's best.
        let last = lp["top_logprobs"][len].as_object().unwrap();
        let best = last.values().map(|v| v.as_f64().unwrap()).fold(f64::MIN, f64::max);
        assert_eq!(lp["token_logprobs"][len].as_f64(), Some(best));
    }
    assert_eq!(got["usage"]["prompt_tokens"], 6);
    let body = json!({"model": "tiny", "prompt": "안녕", "echo": true, "max_tokens": 0, "logprobs": 0});
    let (status, got) = server.post_json("/v1/completions", &body);
    assert_eq!((status, got["choices"][0]["text"].as_str()), (200, Some("안녕")), "{got}");
    assert_eq!(got["usage"]["completion_tokens"], 0);
}

#[test]
fn sigterm_lets_the_answer_in_flight_finish_and_exits_143() {
    let server = Server::start(&["--model", &format!("tiny={}", chat_model().display()), "--grace", "30"]);
    let url = server.url("/v1/completions");
    let body = json!({"model": "tiny", "prompt": "하나 둘 셋", "max_tokens": 200, "temperature": 0, "stream": true});
    let in_flight = std::thread::spawn(move || {
        let mut resp = agent().post(url).header("Content-Type", "application/json").send(body.to_string()).unwrap();
        resp.body_mut().read_to_string().unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let base = server.base.clone();
    assert_eq!(server.stop("TERM", Duration::from_secs(60)), Some(143));
    let streamed = in_flight.join().unwrap();
    assert!(streamed.trim_end().ends_with("data: [DONE]"), "{streamed}");
    assert!(agent().get(format!("{base}/health")).call().is_err(), "still accepting after SIGTERM");
}

#[test]
fn other_addresses_need_a_key_and_the_key_is_checked() {
    let o = common::chatvec(&["serve", "--model", chat_model().to_str().unwrap(), "--host", "0.0.0.0"]);
    common::fails_with_one_line(&o, &["--api-key", "--insecure-no-key"]);
    let server = Server::start(&["--model", &format!("tiny={}", chat_model().display()), "--api-key", "s3cret"]);
    assert_eq!(server.get("/v1/models").0, 401);
    let mut resp = agent().get(server.url("/v1/models")).header("Authorization", "Bearer s3cret").call().unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.body_mut().read_to_string().unwrap());
    assert_eq!(server.get("/health").0, 200);
}

#[test]
#[cfg_attr(not(have_chromium), ignore = "needs Chromium on PATH")]
fn the_page_streams_two_models_side_by_side_in_chromium() {
    let prompt = "안녕하세요";
    let tmp = tempfile::tempdir().unwrap();
    let (chat, merge) = (chat_model(), common::oracle_model(tmp.path()));
    let server = Server::start(&[
        "--model",
        &format!("chat={}", chat.display()),
        "--model",
        &format!("merge={}", merge.display()),
        "--quantize",
        "none",
    ]);
    let (_, page) = server.get("/");
    assert!(page.contains("김치를 오래 맛있게"), "the bundled prompts are missing");
    assert!(!page.contains("http://") && !page.contains("https://"), "the page loads something from elsewhere");

    let url = format!("{}/?models=chat,merge&prompt={prompt}&temperature=0&max_tokens=24&run=1", server.base);
    let mut browser = Browser::open(&tmp.path().join("profile"));
    browser.call("Page.navigate", json!({ "url": url }));
    let started = Instant::now();
    while browser.eval("document.body.dataset.done") != "1" {
        assert!(started.elapsed() < Duration::from_secs(120), "the page did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let columns: Value = serde_json::from_str(browser.eval(COLUMNS_JS).as_str().unwrap()).unwrap();
    let columns = columns.as_array().unwrap();
    assert_eq!(columns.len(), 2, "{columns:?}");
    let (left, right) = (&columns[0], &columns[1]);
    assert!(left["top"] == right["top"] && left["x"].as_f64() < right["x"].as_f64(), "not side by side: {columns:?}");
    for (column, model) in columns.iter().zip([&chat, &merge]) {
        let reference = &generate_greedy(model, prompt, 24)["runs"][0];
        assert_eq!(column["text"], reference["text"], "{column}");
        let finish = if reference["stop"]["kind"] == "length" { "length" } else { "stop" };
        assert_eq!(
            (column["finish"].as_str(), column["tokens"].as_str()),
            (Some(finish), Some(reference["new_tokens"].to_string().as_str()))
        );
        assert!(column["stats"].as_str().unwrap().contains("tok/s"), "{column}");
    }
}

/// Each answer column: model, text, stats, finish reason, token count and position.
const COLUMNS_JS: &str = "JSON.stringify([...document.querySelectorAll('.column')].map(c => ({model: c.dataset.model, \
    text: c.querySelector('.answer').textContent, stats: c.querySelector('.stats').textContent, \
    finish: c.dataset.finish, tokens: c.dataset.tokens, x: c.getBoundingClientRect().x, \
    top: c.getBoundingClientRect().top})))";

/// Headless Chromium driven over the DevTools protocol (a page's streamed answers arrive after
/// `--dump-dom` would have printed it), killed when dropped.
struct Browser {
    child: Child,
    socket: tungstenite::WebSocket<std::net::TcpStream>,
    next_id: u64,
}

impl Browser {
    fn open(profile: &Path) -> Browser {
        let chromium = chatvec_testkit::chromium().expect("Chromium on PATH (CI installs it)");
        let child = Command::new(chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
            .args(["--remote-debugging-port=0", "--window-size=1200,900"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let port_file = profile.join("DevToolsActivePort");
        let started = Instant::now();
        let port = loop {
            if let Some(port) =
                std::fs::read_to_string(&port_file).ok().and_then(|t| t.lines().next().map(str::to_string))
            {
                break port;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "Chromium wrote no DevToolsActivePort");
            std::thread::sleep(Duration::from_millis(50));
        };
        let targets: Value = serde_json::from_str(
            &agent()
                .get(format!("http://127.0.0.1:{port}/json/list"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap(),
        )
        .unwrap();
        let page = targets.as_array().unwrap().iter().find(|t| t["type"] == "page").expect("a page target");
        let ws = page["webSocketDebuggerUrl"].as_str().unwrap();
        let stream = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        let (socket, _) = tungstenite::client(ws, stream).unwrap();
        Browser { child, socket, next_id: 0 }
    }

    /// Sends a DevTools command and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.socket
            .send(tungstenite::Message::text(json!({"id": id, "method": method, "params": params}).to_string()))
            .unwrap();
        loop {
            let message = self.socket.read().unwrap();
            let Ok(text) = message.to_text() else { continue };
            let reply: Value = serde_json::from_str(text).unwrap_or_default();
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true}))["result"]["value"]
            .clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn eval_chat_through_an_endpoint_reads_vllm_answers() {
    let mock = MockVllm::start("served-merge", Mode::Vllm);
    let tmp = tempfile::tempdir().unwrap();
    let prompts = prompt_file(tmp.path());
    let args = ["eval", "chat", "--endpoint", &mock.base, "--model", "served-merge", "--prompts"];
    let o = Command::new(env!("CARGO_BIN_EXE_chatvec"))
        .args(args)
        .arg(&prompts)
        .args(["--max-new-tokens", "40", "--temperature", "0.5", "--seed", "7", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    let results = e["results"].as_array().unwrap();
    assert_eq!(results[0]["answer"], "네, 한국의 수도는?에 답합니다.");
    assert_eq!((results[0]["stopped"].as_bool(), results[0]["tokens"].as_u64()), (Some(true), Some(9)));
    assert_eq!((results[1]["stopped"].as_bool(), results[1]["tokens"].as_u64()), (Some(false), Some(40)));
    assert_eq!(e["summary"]["stop_rate"], 0.5);
    assert!(e["summary"]["korean_ratio"].as_f64().unwrap() > 0.5, "{e}");
    let sent = mock.sent("/v1/chat/completions");
    assert_eq!(sent.len(), 2);
    // Sent together, so in either order.
    let b = sent.iter().find(|r| r["messages"].as_array().unwrap().len() == 2).expect("prompt b has a system message");
    assert_eq!(
        (b["max_tokens"].as_u64(), b["temperature"].as_f64(), b["seed"].as_u64()),
        (Some(40), Some(0.5), Some(7))
    );
    assert_eq!(b["messages"][0], json!({"role": "system", "content": "친절하게"}));

    let o = common::chatvec(&["eval", "chat", "--endpoint", &mock.base, "--model", "nope", "--limit", "1"]);
    common::fails_with_one_line(&o, &["HTTP 404", "The model `nope` does not exist."]);
}

#[test]
fn eval_chat_through_chatvec_serve_answers_as_the_local_run() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = prompt_file(tmp.path());
    let model = chat_model();
    let flags = ["--max-new-tokens", "24", "--temperature", "0", "--json"];
    let local = Command::new(env!("CARGO_BIN_EXE_chatvec"))
        .args(["eval", "chat", "--model", model.to_str().unwrap(), "--prompts"])
        .arg(&prompts)
        .args(flags)
        .output()
        .unwrap();
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let server = Server::start(&["--model", &format!("tiny={}", model.display())]);
    let remote = Command::new(env!("CARGO_BIN_EXE_chatvec"))
        .args(["eval", "chat", "--endpoint", &server.base, "--model", "tiny", "--prompts"])
        .arg(&prompts)
        .args(flags)
        .output()
        .unwrap();
    assert!(remote.status.success(), "{}", String::from_utf8_lossy(&remote.stderr));
    let (local, remote): (Value, Value) =
        (serde_json::from_slice(&local.stdout).unwrap(), serde_json::from_slice(&remote.stdout).unwrap());
    for (l, r) in local["results"].as_array().unwrap().iter().zip(remote["results"].as_array().unwrap()) {
        for key in ["answer", "tokens", "stopped", "korean_ratio", "repetition", "header_leaks"] {
            assert_eq!(l[key], r[key], "{key}: local {l} vs endpoint {r}");
        }
    }
}

/// `n` sampled choices: choice i samples with seed + i, whatever else shares the batch, so it is
/// the answer of a lone request with that seed.
#[test]
fn each_choice_samples_with_its_own_seed() {
    let server = Server::start(&["--model", &format!("tiny={}", chat_model().display()), "--quantize", "none"]);
    let ask = |n: usize, seed: u64| {
        let body =
            json!({"model": "tiny", "prompt": "하나 둘", "n": n, "seed": seed, "temperature": 1.0, "max_tokens": 12});
        let (status, got) = server.post_json("/v1/completions", &body);
        assert_eq!(status, 200, "{got}");
        got["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    let together = ask(3, 11);
    assert_eq!(together.len(), 3);
    for (i, text) in together.iter().enumerate() {
        assert_eq!(ask(1, 11 + i as u64), vec![text.clone()], "choice {i}");
    }
    assert!(together[0] != together[1] || together[1] != together[2], "three seeds, one answer: {together:?}");
}

/// `--chat-template FILE` gives the served models without a template one: the fixture target
/// then chats as `generate --chat-template FILE` does; served without it, it answers 400.
#[test]
fn chat_template_serves_a_model_without_one() {
    let tmp = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(chat_model().join("tokenizer_config.json")).unwrap();
    let template = serde_json::from_str::<Value>(&config).unwrap()["chat_template"].as_str().unwrap().to_string();
    let file = tmp.path().join("template.jinja");
    std::fs::write(&file, template).unwrap();
    let (target, file) = (fixture("target").display().to_string(), file.display().to_string());
    let prompt = "안녕하세요! 자기소개를 해 주세요.";
    let args = ["generate", "--model", &target, "--chat-template", &file, "--prompt", prompt, "--greedy"];
    let o = common::chatvec(&[&args[..], &["--max-new-tokens", "12", "--quantize", "none", "--json"]].concat());
    assert!(o.status.success(), "{}", common::stderr(&o));
    let reference: Value = serde_json::from_slice(&o.stdout).unwrap();
    let body = json!({"model": "target", "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                      "max_tokens": 12});
    let server =
        Server::start(&["--model", &format!("target={target}"), "--chat-template", &file, "--quantize", "none"]);
    let (status, got) = server.post_json("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["choices"][0]["message"]["content"], reference["runs"][0]["text"]);
    let bare = Server::start(&["--model", &format!("target={target}"), "--quantize", "none"]);
    let (status, got) = bare.post_json("/v1/chat/completions", &body);
    assert_eq!(status, 400, "{got}");
}
