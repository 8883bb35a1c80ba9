//! The tiny Llama-3 merge whose transformers output is `fixtures/llama-tiny/expected/
//! generation_oracle.json`, shared by the generate test binaries.

use std::path::{Path, PathBuf};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/llama-tiny");

/// A file or folder of `fixtures/llama-tiny`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// The oracle's model in `dir/model`: target's config.json (eos 2001 only,
/// max_position_embeddings 256), the tokenizer files with the chat template, and the ratio-1.0
/// merge as model.safetensors.
pub fn oracle_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(fixture("target/config.json"), model.join("config.json")).unwrap();
    for e in std::fs::read_dir(fixture("tokenizer")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, model.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(fixture("expected/merged_ratio_1.0.safetensors"), model.join("model.safetensors")).unwrap();
    model
}
