//! `chatvec report --endpoint`: the report of models served by an OpenAI-compatible server,
//! judged against the local report of the same models (`chatvec serve` on the fixtures), against
//! a stand-in for vLLM whose log-probabilities are known, and when the server is down, failing
//! or refuses echo with logprobs.

mod common;
#[path = "serve/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

use harness::{mock_logprob, mock_token_ids, prompt_file, MockVllm, Mode, Server, MOCK_CONTEXT};
use serde_json::Value;

/// Runs `chatvec ARGS`, which must succeed, and returns its stdout.
fn ok(args: &[&str]) -> String {
    let o = common::chatvec(args);
    assert!(o.status.success(), "{args:?}: {}", common::stderr(&o));
    String::from_utf8(o.stdout).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The ratio-1.0 merge of the fixtures in `dir/merged`, and a copy of the target carrying the
/// merge's chat template (what a local report borrows for it, and a server needs to chat).
fn merge_and_target(dir: &Path) -> (PathBuf, PathBuf) {
    let merged = dir.join("merged");
    let f = |n: &str| common::fixture(n).display().to_string();
    ok(&[
        "merge",
        "--base",
        &f("base"),
        "--chat",
        &f("chat"),
        "--target",
        &f("target"),
        "-o",
        merged.to_str().unwrap(),
        "-q",
    ]);
    let target = common::copy_model(dir, "target", "target");
    std::fs::copy(merged.join("tokenizer_config.json"), target.join("tokenizer_config.json")).unwrap();
    (merged, target)
}

/// Same prompts, sampling and windows for the local and the endpoint report.
const SETTINGS: [&str; 14] = [
    "--limit",
    "4",
    "--max-new-tokens",
    "12",
    "--temperature",
    "0",
    "--context",
    "128",
    "--stride",
    "64",
    "--max-tokens",
    "300",
    "--samples",
    "2",
];

#[test]
fn report_through_chatvec_serve_equals_the_local_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (merged, target) = merge_and_target(tmp.path());
    let (m, t) = (merged.to_str().unwrap(), target.to_str().unwrap());
    let local = tmp.path().join("local");
    let mut args = vec!["report", "--target", t, "--merged", m, "-o", local.to_str().unwrap(), "--quantize", "none"];
    args.extend(SETTINGS);
    ok(&args);

    let server =
        Server::start(&["--model", &format!("target={t}"), "--model", &format!("merged={m}"), "--quantize", "none"]);
    let remote = tmp.path().join("remote");
    let (wm, wt) = (format!("merged={m}"), format!("target={t}"));
    let mut args = vec!["report", "--endpoint", &server.base, "--target", "target", "--merged", "merged"];
    args.extend(["-o", remote.to_str().unwrap(), "--weights", &wm, "--weights", &wt]);
    args.extend(SETTINGS);
    ok(&args);

    let (l, r) = (read_json(&local.join("report.json")), read_json(&remote.join("report.json")));
    for (lm, rm) in l["models"].as_array().unwrap().iter().zip(r["models"].as_array().unwrap()) {
        let (lp, rp) = (&lm["perplexity"], &rm["perplexity"]);
        for key in ["tokens", "scored", "windows"] {
            assert_eq!(lp[key], rp[key], "{}: {key}", lm["role"]);
        }
        let gap = (lp["mean_nll"].as_f64().unwrap() - rp["mean_nll"].as_f64().unwrap()).abs();
        assert!(gap < 1e-6, "{}: mean NLL local {lp} vs endpoint {rp}", lm["role"]);
        eprintln!("{}: mean NLL local {} endpoint {} (gap {gap:.1e})", lm["role"], lp["mean_nll"], rp["mean_nll"]);
        let (lc, rc) = (&lm["chat"]["results"], &rm["chat"]["results"]);
        assert_eq!(lc.as_array().unwrap().len(), 4);
        for (a, b) in lc.as_array().unwrap().iter().zip(rc.as_array().unwrap()) {
            for key in ["id", "answer", "tokens", "stopped", "korean_ratio", "repetition", "header_leaks"] {
                assert_eq!(a[key], b[key], "{} {key}: local {a} vs endpoint {b}", lm["role"]);
            }
        }
        assert_eq!(lm["chat"]["summary"]["stop_rate"], rm["chat"]["summary"]["stop_rate"]);
    }
    // The same weights draw the same heatmap.
    assert_eq!(std::fs::read(local.join("heatmap.png")).unwrap(), std::fs::read(remote.join("heatmap.png")).unwrap());
    let html = std::fs::read_to_string(remote.join("report.html")).unwrap();
    assert!(html.contains("P(end of turn) is not measured through an endpoint"), "{html}");

    // Without local weights: no heatmap, and the page says why.
    let bare = tmp.path().join("bare");
    let args = ["report", "--endpoint", &server.base, "--target", "target", "--merged", "merged", "--no-chat"];
    ok(&[&args[..], &["-o", bare.to_str().unwrap(), "--context", "128", "--max-tokens", "300"]].concat());
    let html = std::fs::read_to_string(bare.join("report.html")).unwrap();
    assert!(html.contains("id=\"no-heatmap\"") && html.matches("--weights chat=DIR").count() == 1, "{html}");
    assert!(!bare.join("heatmap.png").exists() && !html.contains("data:image/png"));
    assert_eq!(read_json(&bare.join("report.json"))["models"][1]["perplexity"], r["models"][1]["perplexity"]);
}

/// A text of `n` characters (Hangul and spaces) for the stand-in to score.
fn text_file(dir: &Path, n: usize) -> (PathBuf, String) {
    let text: String = "대한민국은 민주공화국이다 ".chars().cycle().take(n).collect();
    let path = dir.join("text.txt");
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

#[test]
fn report_through_a_vllm_like_server_reads_its_answers_and_logprobs() {
    let mock = MockVllm::start("served", Mode::Vllm);
    let tmp = tempfile::tempdir().unwrap();
    let (text, content) = text_file(tmp.path(), 400);
    let prompts = prompt_file(tmp.path());
    let out = tmp.path().join("report");
    let args = ["report", "--endpoint", &mock.base, "--target", "served", "--merged", "served", "--prompts"];
    let rest = ["--text", text.to_str().unwrap(), "--max-tokens", "200", "--max-new-tokens", "40", "--seed", "7"];
    ok(&[&args[..], &[prompts.to_str().unwrap(), "-o", out.to_str().unwrap()], &rest].concat());

    let r = read_json(&out.join("report.json"));
    // Windows of the server's 64 positions, stride 32, over the first 200 ids: every id after the
    // first scored once, with the log-probability the server gave it.
    let ids = &mock_token_ids(&content)[..200];
    let expected = ids[1..].iter().map(|&id| -mock_logprob(id)).sum::<f64>() / 199.0;
    for m in r["models"].as_array().unwrap() {
        let p = &m["perplexity"];
        assert_eq!(
            (p["tokens"].as_u64(), p["scored"].as_u64(), p["windows"].as_u64()),
            (Some(200), Some(199), Some(6))
        );
        assert!((p["mean_nll"].as_f64().unwrap() - expected).abs() < 1e-12, "{p} vs {expected}");
        assert_eq!(m["chat"]["summary"]["stop_rate"], 0.5);
        assert_eq!(m["chat"]["results"][0]["answer"], "네, 한국의 수도는?에 답합니다.");
    }
    let echoes = mock.sent("/v1/completions");
    assert_eq!(echoes.len(), 12, "6 windows × 2 models");
    for e in &echoes {
        assert_eq!(
            (e["echo"].as_bool(), e["logprobs"].as_u64(), e["max_tokens"].as_u64()),
            (Some(true), Some(1), Some(0))
        );
        assert!(e["prompt"].as_array().unwrap().len() <= MOCK_CONTEXT);
    }
    let chats = mock.sent("/v1/chat/completions");
    assert_eq!(chats.len(), 4);
    assert!(chats.iter().all(|c| c["seed"] == 7 && c["max_tokens"] == 40), "{chats:?}");

    // A server that refuses echo with logprobs: the report still renders, and says so.
    let mock = MockVllm::start("served", Mode::NoEcho);
    let out = tmp.path().join("no-echo");
    let args = ["report", "--endpoint", &mock.base, "--target", "served", "--merged", "served", "--no-chat"];
    ok(&[&args[..], &["--text", text.to_str().unwrap(), "-o", out.to_str().unwrap()]].concat());
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("perplexity: not available from this endpoint"), "{html}");
    assert!(html.contains("echo with logprobs is not supported"), "{html}");
    assert!(read_json(&out.join("report.json"))["models"][0]["perplexity"].is_null());
}

#[test]
fn endpoint_failures_and_local_flags_are_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report");
    let o = out.to_str().unwrap();
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let report = |url: &str, extra: &[&str]| {
        let args = ["report", "--endpoint", url, "--target", "served", "--merged", "served", "-o", o];
        common::chatvec(&[&args[..], extra].concat())
    };
    common::fails_with_one_line(&report(&down, &[]), &[&down, "no answer"]);
    // Flags are checked before any request: the server being down is not what is reported.
    common::fails_with_one_line(&report(&down, &["--quantize", "q8_0"]), &["--quantize", "--endpoint"]);
    common::fails_with_one_line(
        &report(&down, &["--chat-template", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")]),
        &["--chat-template"],
    );
    common::fails_with_one_line(&report(&down, &["--weights", "merged=x", "--weights", "merged=y"]), &["twice"]);
    let broken = MockVllm::start("served", Mode::Broken);
    common::fails_with_one_line(&report(&broken.base, &[]), &["HTTP 500", "EngineCore encountered an issue."]);
    let mock = MockVllm::start("other", Mode::Vllm);
    common::fails_with_one_line(&report(&mock.base, &[]), &["--target \"served\"", "serves no such model", "other"]);
    assert!(!out.exists(), "a failed report left {o}");

    let local = ["report", "--target", "a", "--merged", "b", "-o", o];
    common::fails_with_one_line(
        &common::chatvec(&[&local[..], &["--weights", "chat=x"]].concat()),
        &["--weights", "--endpoint"],
    );
    let eval = ["eval", "chat", "--endpoint", &down, "--model", "m", "--quantize", "none"];
    common::fails_with_one_line(&common::chatvec(&eval), &["--quantize"]);
}

/// Prompts go to the server together, `--batch-size` at most, so a batching server batches them.
#[test]
fn endpoint_prompts_are_sent_together_and_bounded() {
    let mock = MockVllm::start("served", Mode::Vllm);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("prompts.jsonl");
    let lines: String = (0..9)
        .map(|i| format!("{}\n", serde_json::json!({"id": i.to_string(), "prompt": format!("질문 {i}")})))
        .collect();
    std::fs::write(&path, lines).unwrap();
    let args = ["eval", "chat", "--endpoint", &mock.base, "--model", "served", "--batch-size", "3", "--json"];
    let out = ok(&[&args[..], &["--prompts", path.to_str().unwrap()]].concat());
    let e: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = e["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["0", "1", "2", "3", "4", "5", "6", "7", "8"], "results in prompt order");
    let most = mock.most_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=3).contains(&most), "{most} requests at once with --batch-size 3");
}
