//! `chatvec generate` and `chatvec chat` as users run them, on the bundled tiny Llama-3 merge
//! whose transformers output is in generation_oracle.json.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;

use common::{chatvec, fixture, oracle_model};

fn oracle() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("expected/generation_oracle.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

fn messages_file(dir: &Path, messages: &serde_json::Value) -> PathBuf {
    let path = dir.join("messages.json");
    std::fs::write(&path, messages.to_string()).unwrap();
    path
}

fn ok(o: &Output) -> (String, String) {
    let stdout = String::from_utf8(o.stdout.clone()).unwrap();
    let stderr = String::from_utf8(o.stderr.clone()).unwrap();
    assert!(o.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    (stdout, stderr)
}

fn json_of(o: &Output) -> serde_json::Value {
    let (stdout, _) = ok(o);
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn greedy_json_matches_the_transformers_oracle() {
    let o = oracle();
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    let msgs = messages_file(tmp.path(), &o["messages"]);
    let out = chatvec(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--messages",
        msgs.to_str().unwrap(),
        "--greedy",
        "--quantize",
        "none",
        "--max-new-tokens",
        "24",
        "--json",
    ]);
    let rec = json_of(&out);
    assert_eq!(rec["prompt_text"], o["prompt_text"]);
    assert_eq!(rec["prompt_tokens"].as_u64().unwrap() as usize, ids(&o["input_ids"]).len());
    assert_eq!(ids(&rec["stop_ids"]), ids(&o["stop_ids"]));
    let run = &rec["runs"][0];
    assert_eq!(ids(&run["token_ids"]), ids(&o["greedy_new_ids"]));
    assert_eq!(run["text"], o["greedy_text"]);
    assert_eq!(run["stop"]["kind"], "length");
}

#[test]
fn text_streams_to_stdout_and_statistics_to_stderr() {
    let o = oracle();
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    let system = o["messages"][0]["content"].as_str().unwrap();
    let user = o["messages"][1]["content"].as_str().unwrap();
    let out = chatvec(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--system",
        system,
        "--prompt",
        user,
        "--greedy",
        "--quantize",
        "none",
        "--max-new-tokens",
        "24",
    ]);
    let (stdout, stderr) = ok(&out);
    assert_eq!(stdout, format!("{}\n", o["greedy_text"].as_str().unwrap()));
    let prompt_tokens = ids(&o["input_ids"]).len();
    assert!(
        stderr.contains(&format!(
            "prompt tokens {prompt_tokens}, new tokens 24, stop length limit (24), time to first token "
        )),
        "{stderr}"
    );
    assert!(stderr.contains("tokens/s"), "{stderr}");
}

#[test]
fn a_stop_token_ends_the_answer_and_is_reported() {
    let o = oracle();
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    let msgs = messages_file(tmp.path(), &o["messages"]);
    // The third greedy token, as it is written in tokenizer.json.
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("tokenizer.json")).unwrap()).unwrap();
    let third = tok["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, id)| id.as_u64() == Some(1816))
        .map(|(t, _)| t.clone())
        .unwrap();
    let args = [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--messages",
        msgs.to_str().unwrap(),
        "--greedy",
        "--quantize",
        "none",
        "--stop",
        &third,
    ];
    let rec = json_of(&chatvec(&[&args[..], &["--json"]].concat()));
    let run = &rec["runs"][0];
    assert_eq!(ids(&run["token_ids"]), vec![1370, 479, 1816]);
    assert_eq!(run["stop"]["kind"], "stop_token");
    assert_eq!(run["stop"]["id"], 1816);
    let (stdout, stderr) = ok(&chatvec(&args));
    assert!(stderr.contains("new tokens 3, stop ") && stderr.contains("(1816)"), "{stderr}");
    assert!(!stdout.is_empty());
}

#[test]
fn seed_reproduces_sampling_and_each_temperature_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    let run = |seed: &str| {
        json_of(&chatvec(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "헌법 제1조는?",
            "--temperature",
            "0.6,0.1,1.0",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--max-new-tokens",
            "16",
            "--json",
        ]))
    };
    let a = run("7");
    let b = run("7");
    let c = run("8");
    let runs = a["runs"].as_array().unwrap();
    let temps: Vec<f64> = runs.iter().map(|r| r["temperature"].as_f64().unwrap()).collect();
    assert_eq!(temps, vec![0.6, 0.1, 1.0]);
    assert!(runs.iter().all(|r| r["top_p"] == 0.95 && r["greedy"] == false));
    for i in 0..3 {
        assert_eq!(a["runs"][i]["token_ids"], b["runs"][i]["token_ids"]);
    }
    assert_ne!(a["runs"][2]["token_ids"], c["runs"][2]["token_ids"]);
}

#[test]
fn chat_over_piped_stdin_keeps_history() {
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    let m = model.to_str().unwrap();
    let common = ["--model", m, "--greedy", "--quantize", "none", "--max-new-tokens", "8"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatvec"))
        .args([&["chat", "--system", "친절하게 답해"][..], &common[..]].concat())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            "대한민국의 수도는?\n헌법은 언제 만들어졌나요?\n/reset\n헌법은 언제 만들어졌나요?\n/exit\nnot read\n"
                .as_bytes(),
        )
        .unwrap();
    let (stdout, _) = ok(&child.wait_with_output().unwrap());
    let answers: Vec<&str> = stdout.lines().collect();
    assert_eq!(answers.len(), 3, "{stdout}");

    // Each answer is what generate gives for the same conversation.
    let generate = |messages: serde_json::Value| {
        let file = messages_file(tmp.path(), &messages);
        let rec = json_of(&chatvec(
            &[&["generate", "--messages", file.to_str().unwrap(), "--json"][..], &common[..]].concat(),
        ));
        rec["runs"][0]["text"].as_str().unwrap().to_string()
    };
    let sys = serde_json::json!({"role": "system", "content": "친절하게 답해"});
    let first = generate(serde_json::json!([sys, {"role": "user", "content": "대한민국의 수도는?"}]));
    assert_eq!(answers[0], first);
    let second = generate(serde_json::json!([
        sys,
        {"role": "user", "content": "대한민국의 수도는?"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "헌법은 언제 만들어졌나요?"}
    ]));
    assert_eq!(answers[1], second);
    let after_reset = generate(serde_json::json!([sys, {"role": "user", "content": "헌법은 언제 만들어졌나요?"}]));
    assert_eq!(answers[2], after_reset);
    assert_ne!(answers[1], answers[2], "history must change the second answer");
}

#[test]
fn merged_model_carries_the_template_and_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let f = |n: &str| fixture(n).to_str().unwrap().to_string();
    ok(&chatvec(&[
        "merge",
        "--base",
        &f("base"),
        "--chat",
        &f("chat"),
        "--target",
        &f("target"),
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ]));
    let o = oracle();
    let msgs = messages_file(tmp.path(), &o["messages"]);
    let rec = json_of(&chatvec(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--messages",
        msgs.to_str().unwrap(),
        "--greedy",
        "--quantize",
        "none",
        "--max-new-tokens",
        "24",
        "--json",
    ]));
    // chatvec's merge equals the oracle's ratio-1.0 weights, so the answer is the oracle's.
    assert_eq!(ids(&rec["runs"][0]["token_ids"]), ids(&o["greedy_new_ids"]));
}

#[test]
fn bad_models_fail_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = empty.to_str().unwrap();
    assert_error_snapshot!(&chatvec(&["generate", "--model", e, "--prompt", "x"]));
    assert_error_snapshot!(&chatvec(&["chat", "--model", e]));

    let model = oracle_model(tmp.path());
    let cfg = model.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("LlamaForCausalLM", "MambaForCausalLM")).unwrap();
    assert_error_snapshot!(&chatvec(&["generate", "--model", model.to_str().unwrap(), "--prompt", "x"]));
}

#[test]
fn missing_template_says_how_to_get_one() {
    let target = fixture("target");
    let t = target.to_str().unwrap();
    assert_error_snapshot!(&chatvec(&["generate", "--model", t, "--prompt", "x"]));
    let tmp = tempfile::tempdir().unwrap();
    let tmpl = tmp.path().join("t.jinja");
    std::fs::write(&tmpl, "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}").unwrap();
    let rec = json_of(&chatvec(&[
        "generate",
        "--model",
        t,
        "--prompt",
        "x",
        "--chat-template",
        tmpl.to_str().unwrap(),
        "--greedy",
        "--quantize",
        "none",
        "--max-new-tokens",
        "2",
        "--json",
    ]));
    assert_eq!(rec["prompt_text"], "<|begin_of_text|>x");
}

#[test]
fn bad_sampling_flags_fail_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    assert_error_snapshot!(&chatvec(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "x",
        "--top-p",
        "1.5"
    ]));
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{\"role\": \"user\"}").unwrap();
    assert_error_snapshot!(&chatvec(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--messages",
        bad.to_str().unwrap()
    ]));
}
