//! `chatvec lab` and the bundled lab models: they load, merge, and the data sets rebuild byte
//! for byte. (No training here: `chatvec lab train` takes minutes.)

use std::process::{Command, Output};

mod common;

use common::root;

/// `chatvec` run from the repository's root, as the README runs it.
fn chatvec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatvec")).current_dir(root()).args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "failed: {err}");
    err
}

#[test]
fn lab_data_rebuilds_the_committed_data_sets() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lab");
    ok(&chatvec(&["lab", "data", "--korean", "data/korean", "--out", out.to_str().unwrap()]));
    for f in ["english.txt", "chat_train.jsonl", "chat_eval_en.jsonl", "chat_eval_ko.jsonl"] {
        let made = std::fs::read(out.join(f)).unwrap();
        let committed = std::fs::read(root().join("data/lab").join(f)).unwrap();
        assert!(made == committed, "{f} differs from data/lab/{f}");
    }
}

#[test]
fn bundled_models_are_llama3_style_checkpoints() {
    let lab = root().join("models/lab");
    for (name, chat) in [("base", false), ("chat", true), ("target", false)] {
        let dir = lab.join(name);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
        assert_eq!(cfg["vocab_size"], 2008);
        let gen: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("generation_config.json")).unwrap()).unwrap();
        let tok: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
        if chat {
            assert_eq!(gen["eos_token_id"], serde_json::json!([2001, 2004]));
            assert!(tok.get("chat_template").is_some());
        } else {
            assert_eq!(gen["eos_token_id"], 2001);
            assert!(tok.get("chat_template").is_none(), "{name} must have no chat template");
        }
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("lm_head.weight").unwrap().dtype(), safetensors::Dtype::BF16);
        assert!(bytes.len() < 8_000_000, "{name}: {} bytes", bytes.len());
    }
}

#[test]
fn bundled_models_merge() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    ok(&chatvec(&[
        "merge",
        "--base",
        "models/lab/base",
        "--chat",
        "models/lab/chat",
        "--target",
        "models/lab/target",
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ]));
    assert!(out.join("model.safetensors").is_file() || out.join("model.safetensors.index.json").is_file());
    let gen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("generation_config.json")).unwrap()).unwrap();
    let eos = gen["eos_token_id"].to_string();
    assert!(eos.contains("2004"), "merged model stops at <|eot_id|>: {eos}");
}
