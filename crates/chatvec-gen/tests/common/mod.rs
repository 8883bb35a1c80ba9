//! Shared helpers: the oracle model directory built from the bundled fixtures.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/llama-tiny");

pub fn fixtures() -> PathBuf {
    PathBuf::from(FIXTURES)
}

pub fn oracle() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("expected/generation_oracle.json")).expect("oracle json");
    serde_json::from_str(&text).expect("oracle parses")
}

/// The model the oracle ran: target's config.json, the tokenizer files (with the chat
/// template) and the ratio-1.0 merge as model.safetensors.
pub fn oracle_model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixtures();
    copy(&f.join("target/config.json"), dir.path());
    for entry in std::fs::read_dir(f.join("tokenizer")).expect("tokenizer dir") {
        let path = entry.expect("entry").path();
        copy(&path, dir.path());
    }
    std::fs::copy(f.join("expected/merged_ratio_1.0.safetensors"), dir.path().join("model.safetensors"))
        .expect("copy weights");
    dir
}

fn copy(file: &Path, dir: &Path) {
    std::fs::copy(file, dir.join(file.file_name().expect("file name"))).expect("copy");
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// One model of `fixtures/arch` (`mistral`, `qwen2`, `gemma`): weights, tokenizer, chat template
/// and transformers' logits (expected.json), made by fixtures/arch/make.py.
pub fn arch_fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/arch")).join(name)
}

/// A copy of model directory `dir` whose config.json has the keys of `overrides` set.
pub fn with_config(dir: &Path, overrides: &serde_json::Map<String, serde_json::Value>) -> tempfile::TempDir {
    let out = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(dir).expect("model dir") {
        copy(&entry.expect("entry").path(), out.path());
    }
    let path = out.path().join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("config")).expect("json");
    config.as_object_mut().expect("config object").extend(overrides.clone());
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write config");
    out
}
