//! A GGUF file is self-contained input (issue 24, item 1): `chatvec generate --model x.gguf` with no
//! `--tokenizer` builds the prompt, tokenizes it and stops as the Hugging Face directory it was
//! exported from does, reading the tokenizer, chat template and stop ids from the file's metadata.
//! (The token ids themselves are checked against llama.cpp in chatvec-gen's gguf_tokenizer test.)

mod common;

use std::path::Path;

use common::{chatvec, copy_dir_files, root, stderr};

fn generate(model: &Path) -> serde_json::Value {
    let o = chatvec(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "헌법 제1조는? Answer in English.",
        "--greedy",
        "--max-new-tokens",
        "12",
        "--quantize",
        "none",
        "--json",
    ]);
    assert!(o.status.success(), "{}: {}", model.display(), stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn a_gguf_without_tokenizer_files_answers_as_its_source_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let source = root().join("crates/chatvec-gguf/tests/data/qwen2");
    // The GGUF alone in its folder: nothing but the file to read the tokenizer from.
    let alone = tmp.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    let gguf = alone.join("qwen2.gguf");
    let o = chatvec(&[
        "export",
        "gguf",
        "--model",
        source.to_str().unwrap(),
        "-o",
        gguf.to_str().unwrap(),
        "--type",
        "f32",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (want, got) = (generate(&source), generate(&gguf));
    for key in ["prompt_text", "prompt_tokens"] {
        assert_eq!(got[key], want[key], "{key}");
    }
    let sorted = |v: &serde_json::Value| {
        let mut ids: Vec<u64> = v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(sorted(&got["stop_ids"]), sorted(&want["stop_ids"]), "stop ids");
    assert_eq!(got["runs"][0]["token_ids"], want["runs"][0]["token_ids"], "greedy tokens");
    assert_eq!(got["runs"][0]["text"], want["runs"][0]["text"], "answer text");
    // --tokenizer stays an override: the Hugging Face files give the same run.
    let copy = tmp.path().join("hf");
    copy_dir_files(&source, &copy);
    let o = chatvec(&[
        "generate",
        "--model",
        gguf.to_str().unwrap(),
        "--tokenizer",
        copy.to_str().unwrap(),
        "--prompt",
        "hi",
        "--greedy",
        "--max-new-tokens",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}
