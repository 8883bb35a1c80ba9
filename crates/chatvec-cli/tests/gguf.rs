//! `chatvec export gguf` checked by the real consumers: llama.cpp (node-llama-cpp's prebuilt
//! binaries) loads each fixture architecture's GGUF and, from the prompt chatvec builds, gives the
//! same greedy tokens as `chatvec generate` (f32, f16; bf16, q8_0 and q4_k_m reported), tokenizes the
//! prompt text to the same ids, renders the GGUF's chat template to the same text and stops on
//! chatvec's stop ids; Python transformers reads the f16 file back to the same weights.
//!
//! Needs node + node-llama-cpp (CHATVEC_NODE_LLAMA_DIR, default <repo>/.tools/node) and Python
//! with transformers + gguf (CHATVEC_PYTHON). Without them `cargo test` lists the checks as ignored
//! (chatvec-testkit); with `CI` set they run, and a missing tool fails them.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn fixture_models() -> Vec<(&'static str, PathBuf)> {
    let data = Path::new(ROOT).join("fixtures/arch");
    vec![
        ("llama", Path::new(ROOT).join("fixtures/llama-tiny/chat")),
        ("mistral", data.join("mistral")),
        ("qwen2", data.join("qwen2")),
        ("gemma", data.join("gemma")),
    ]
}

fn chatvec(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_chatvec")).args(args).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "chatvec {args:?}\nstdout: {out}\nstderr: {err}");
    out.to_string()
}

fn export(model: &Path, out: &Path, t: &str) {
    chatvec(&["export", "gguf", "--model", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--type", t, "-q"]);
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

fn llama_cpp(node_dir: &Path, requests: &serde_json::Value, tmp: &Path) -> Vec<serde_json::Value> {
    let req = tmp.join("requests.json");
    std::fs::write(&req, requests.to_string()).unwrap();
    let o = Command::new("node")
        .arg(Path::new(ROOT).join("scripts/gguf/llama_cpp_run.mjs"))
        .arg(&req)
        .env("CHATVEC_NODE_LLAMA_DIR", node_dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "node: {out}\n{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

/// What chatvec generates for one fixture model, and the request llama.cpp gets for each GGUF type.
struct Case {
    arch: &'static str,
    gguf_type: &'static str,
    prompt_text: String,
    prompt_ids: Vec<u64>,
    want: Vec<u64>,
    spm: bool,
}

const TYPES: [&str; 5] = ["f32", "f16", "bf16", "q8_0", "q4_k_m"];

#[test]
#[cfg_attr(not(have_node_llama), ignore = "needs node-llama-cpp 3.21.1 (CHATVEC_NODE_LLAMA_DIR)")]
fn llama_cpp_runs_chatvecs_gguf_like_chatvec_generate() {
    let node_dir = chatvec_testkit::node_llama_dir();
    let tmp = tempfile::tempdir().unwrap();
    let messages = serde_json::json!([{"role": "user", "content": "헌법 제1조는?"}]);
    let msg_file = tmp.path().join("messages.json");
    std::fs::write(&msg_file, messages.to_string()).unwrap();
    let (mut cases, mut requests) = (vec![], vec![]);
    for (arch, dir) in fixture_models() {
        let gen: serde_json::Value = serde_json::from_str(&chatvec(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--messages",
            msg_file.to_str().unwrap(),
            "--greedy",
            "--max-new-tokens",
            "12",
            "--quantize",
            "none",
            "--json",
        ]))
        .unwrap();
        let prompt_text = gen["prompt_text"].as_str().unwrap().to_string();
        let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let prompt_ids: Vec<u64> =
            tok.encode(prompt_text.as_str(), false).unwrap().get_ids().iter().map(|&i| i as u64).collect();
        for t in TYPES {
            let gguf = tmp.path().join(format!("{arch}-{t}.gguf"));
            export(&dir, &gguf, t);
            let want = ids(&gen["runs"][0]["token_ids"]);
            requests.push(serde_json::json!({"model": gguf, "prompt_text": prompt_text, "prompt_ids": prompt_ids,
                "max_new_tokens": want.len().max(1), "stop_ids": gen["stop_ids"], "messages": messages}));
            let spm = dir.join("tokenizer.model").is_file();
            cases.push(Case {
                arch,
                gguf_type: t,
                prompt_text: prompt_text.clone(),
                prompt_ids: prompt_ids.clone(),
                want,
                spm,
            });
        }
    }
    let results = llama_cpp(&node_dir, &serde_json::Value::Array(requests), tmp.path());
    let mut report = vec![];
    for (c, got) in cases.iter().zip(&results) {
        let tokens = ids(&got["tokens"]);
        let same = tokens.iter().zip(&c.want).take_while(|(a, b)| a == b).count();
        let tokenized = ids(&got["prompt_ids"]) == c.prompt_ids;
        report.push(format!(
            "{} {}: {same}/{} greedy tokens as chatvec; prompt tokenized {}",
            c.arch,
            c.gguf_type,
            c.want.len(),
            if tokenized { "identically" } else { "differently" }
        ));
        if c.gguf_type == "f32" || c.gguf_type == "f16" {
            assert_eq!(tokens, c.want, "{} {}: llama.cpp's greedy tokens", c.arch, c.gguf_type);
        }
        assert_eq!(got["rendered"].as_str(), Some(c.prompt_text.as_str()), "{}: chat template rendering", c.arch);
        for (id, eog) in got["eog"].as_object().unwrap() {
            assert_eq!(eog, true, "{}: llama.cpp does not stop on chatvec's stop id {id}", c.arch);
        }
        // SentencePiece: llama.cpp puts a space before the text after a leading special token
        // (add_space_prefix), transformers does not; the converter's file behaves the same.
        if !c.spm {
            assert!(tokenized, "{}: llama.cpp tokenizes the prompt differently", c.arch);
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
#[cfg_attr(
    not(all(have_py_transformers, have_py_gguf, have_py_torch)),
    ignore = "needs Python with transformers, gguf and torch (CHATVEC_PYTHON)"
)]
fn transformers_reads_the_f16_gguf_back_to_the_same_weights() {
    let py = chatvec_testkit::python();
    let tmp = tempfile::tempdir().unwrap();
    // transformers 5.24 reads llama, mistral and qwen2 GGUF files, not gemma (v1).
    for (arch, dir) in fixture_models().into_iter().filter(|(a, _)| *a != "gemma") {
        let gguf = tmp.path().join(format!("{arch}.gguf"));
        export(&dir, &gguf, "f16");
        let o = Command::new(&py)
            .arg(Path::new(ROOT).join("scripts/gguf/transformers_readback.py"))
            .args([dir.as_os_str(), gguf.as_os_str()])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{arch}: {out}\n{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert!(r["tensors"].as_u64().unwrap() > 0);
        assert_eq!(r["differ"], serde_json::json!({}), "{arch}: weights transformers reads back differ");
    }
}
