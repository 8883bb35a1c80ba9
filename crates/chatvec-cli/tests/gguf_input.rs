//! A GGUF file is self-contained input (issue 24, item 1): `chatvec generate --model x.gguf` with no
//! `--tokenizer` builds the prompt, tokenizes it and stops as the Hugging Face directory it was
//! exported from does, reading the tokenizer, chat template and stop ids from the file's metadata.
//! (The token ids themselves are checked against llama.cpp in chatvec-gen's gguf_tokenizer test.)

mod common;

use std::path::Path;

use common::{chatvec, copy_dir_files, root, stderr};

fn generate(model: &Path, extra: &[&str]) -> serde_json::Value {
    let prompt = "헌법 제1조는? Answer in English.";
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", prompt, "--greedy"];
    args.extend(["--max-new-tokens", "12", "--quantize", "none", "--json"]);
    args.extend(extra);
    let o = chatvec(&args);
    assert!(o.status.success(), "{}: {}", model.display(), stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn a_gguf_without_tokenizer_files_answers_as_its_source_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let source = root().join("fixtures/arch/qwen2");
    // The GGUF alone in its folder: nothing but the file to read the tokenizer from.
    let alone = tmp.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    let gguf = alone.join("qwen2.gguf");
    common::export_gguf(&source, &gguf, "f32");
    let (want, got) = (generate(&source, &[]), generate(&gguf, &[]));
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

/// Every architecture chatvec exports loads back from its f32 GGUF and answers as the directory
/// does: Llama 3.1 (the fixture has `llama3` rope scaling, stored as `rope_freqs`), Mistral
/// (written as llama, q/k rows permuted), Qwen2 and Gemma (norms stored as 1 + w). SentencePiece
/// models run with `--tokenizer`, since transformers and llama.cpp put the space prefix
/// differently after a special token (compared with llama.cpp in chatvec-gen's gguf_tokenizer).
/// Every type `export gguf` writes.
const EXPORT_TYPES: [&str; 7] = ["f32", "f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k"];

#[test]
fn every_exported_architecture_loads_back_and_answers_as_its_directory() {
    // Each architecture in each export type loads back and builds the same prompt; the f32 file
    // also gives the directory's greedy tokens (the others round the weights).
    let tmp = tempfile::tempdir().unwrap();
    let data = root().join("fixtures/arch");
    for (arch, dir, spm) in [
        ("llama", root().join("fixtures/llama-tiny/chat"), false),
        ("mistral", data.join("mistral"), true),
        ("qwen2", data.join("qwen2"), false),
        ("gemma", data.join("gemma"), true),
    ] {
        let want = generate(&dir, &[]);
        for t in EXPORT_TYPES {
            let gguf = tmp.path().join(format!("{arch}-{t}.gguf"));
            let (model, out) = (dir.to_str().unwrap(), gguf.to_str().unwrap());
            let o = chatvec(&["export", "gguf", "--model", model, "-o", out, "--type", t, "-q"]);
            assert!(o.status.success(), "{arch} {t}: {}", stderr(&o));
            let tokenizer = if spm { vec!["--tokenizer", model] } else { vec![] };
            let got = generate(&gguf, &tokenizer);
            assert_eq!(got["prompt_text"], want["prompt_text"], "{arch} {t}: prompt");
            assert_eq!(got["prompt_tokens"], want["prompt_tokens"], "{arch} {t}: prompt tokens");
            let n = got["runs"][0]["token_ids"].as_array().map_or(0, Vec::len);
            assert!(n > 0, "{arch} {t}: no tokens generated");
            if t == "f32" {
                assert_eq!(got["runs"][0]["token_ids"], want["runs"][0]["token_ids"], "{arch}: greedy tokens");
            }
        }
    }
}
