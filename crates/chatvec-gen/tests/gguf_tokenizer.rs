//! The tokenizer rebuilt from a GGUF file's metadata (issue 24, item 1) gives llama.cpp's token ids
//! (node-llama-cpp's tokenizer on the same file, the oracle) on Korean, English, code, emoji and
//! special-token text, for each tokenizer model chatvec's fixtures export: gpt2 with the qwen2 and
//! llama-bpe pre-tokenizers, and llama (SentencePiece, with and without the space prefix). Also:
//! the special ids and add-bos flag agree, and an unknown pre-tokenizer is refused by name.
//!
//! The cross-check needs node with node-llama-cpp (`CHATVEC_NODE_LLAMA_DIR`); without it `cargo
//! test` lists it as ignored (chatvec-testkit); under `CI` it runs and fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use chatvec_gen::gguf_tokenizer::from_gguf;
use chatvec_gguf::read::GgufIndex;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

const TEXTS: [&str; 7] = [
    "헌법 제1조는 대한민국은 민주공화국이다.",
    "Hello world, it's a test: don't stop!  Twice  spaced\n\nnew lines 12345",
    "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}",
    "emoji 🤖🎉 and mixed 한국어 text 😀",
    " leading space and trailing ",
    "1234567 + 89 = 1234656",
    "café naïve Ünïcödé ß",
];

/// Text with the fixture's special tokens written in it.
fn special_text(specials: &[&str]) -> String {
    format!("{}user\n안녕하세요!{}\n{}assistant\n", specials[0], specials[1], specials[0])
}

fn fixtures() -> Vec<(&'static str, PathBuf, [&'static str; 2])> {
    let data = Path::new(ROOT).join("crates/chatvec-gguf/tests/data");
    vec![
        ("qwen2", data.join("qwen2"), ["<|im_start|>", "<|im_end|>"]),
        ("llama", Path::new(ROOT).join("fixtures/llama-tiny/chat"), ["<|start_header_id|>", "<|eot_id|>"]),
        ("mistral", data.join("mistral"), ["[INST]", "</s>"]),
        ("gemma", data.join("gemma"), ["<start_of_turn>", "<end_of_turn>"]),
    ]
}

fn export(model: &Path, out: &Path) {
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let ftype = chatvec_gguf::FileType::Q8_0;
    chatvec_gguf::export(model, out, ftype, false, &chatvec_format::NoProgress, &cancel).unwrap();
}

fn llama_cpp(node: &Path, gguf: &Path, texts: &[String], tmp: &Path) -> serde_json::Value {
    let file = tmp.join("texts.json");
    std::fs::write(&file, serde_json::to_string(texts).unwrap()).unwrap();
    let o = Command::new("node")
        .arg(format!("{ROOT}/scripts/gguf/llama_cpp_tokenize.mjs"))
        .arg(gguf)
        .arg(&file)
        .env("CHATVEC_NODE_LLAMA_DIR", node)
        .output()
        .expect("node runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "node: {out}\n{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

#[test]
#[cfg_attr(not(have_node_llama), ignore = "needs node-llama-cpp 3.21.1 (CHATVEC_NODE_LLAMA_DIR)")]
fn token_ids_from_gguf_metadata_equal_llama_cpps() {
    let node = chatvec_testkit::node_llama_dir();
    let tmp = tempfile::tempdir().unwrap();
    let mut report = vec![];
    for (name, dir, specials) in fixtures() {
        let gguf = tmp.path().join(format!("{name}.gguf"));
        export(&dir, &gguf);
        let tok = from_gguf(&GgufIndex::open(&gguf).unwrap()).unwrap();
        let mut texts: Vec<String> = TEXTS.iter().map(|t| t.to_string()).collect();
        texts.push(special_text(&specials));
        let theirs = llama_cpp(&node, &gguf, &texts, tmp.path());
        for (i, text) in texts.iter().enumerate() {
            let ours: Vec<u64> =
                tok.tokenizer.encode(text.as_str(), false).unwrap().get_ids().iter().map(|&x| x as u64).collect();
            let want: Vec<u64> = serde_json::from_value(theirs["ids"][i].clone()).unwrap();
            assert_eq!(ours, want, "{name}: {text:?}");
        }
        let add_bos = tok.config["add_bos_token"].as_bool().unwrap();
        assert_eq!(add_bos, theirs["add_bos"].as_bool().unwrap_or(false), "{name}: add_bos");
        let eos = tok.tokenizer.token_to_id(tok.config["eos_token"].as_str().unwrap()).unwrap();
        assert_eq!(eos as u64, theirs["eos"].as_u64().unwrap(), "{name}: eos");
        report.push(format!("{name}: {} texts tokenized as llama.cpp does", texts.len()));
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn an_unknown_pre_tokenizer_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("qwen2.gguf");
    export(&Path::new(ROOT).join("crates/chatvec-gguf/tests/data/qwen2"), &gguf);
    let mut bytes = std::fs::read(&gguf).unwrap();
    let key = b"tokenizer.ggml.pre";
    // The key, its value type (4 bytes) and the value's length (8 bytes), then "qwen2".
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 12;
    assert_eq!(&bytes[at..at + 5], b"qwen2");
    bytes[at..at + 5].copy_from_slice(b"qwen9");
    std::fs::write(&gguf, &bytes).unwrap();
    let err = from_gguf(&GgufIndex::open(&gguf).unwrap()).err().unwrap().to_string();
    assert!(err.contains("\"qwen9\"") && err.contains("tokenizer.ggml.pre") && err.contains("qwen2.gguf"), "{err}");
}
