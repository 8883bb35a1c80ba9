//! The tokenizer rebuilt from a GGUF file's metadata (issue 24, item 1) gives llama.cpp's token ids
//! (node-llama-cpp's tokenizer on the same file, the oracle) on Korean, English, code, emoji and
//! special-token text, for each tokenizer model chatvec's fixtures export: gpt2 with the qwen2 and
//! llama-bpe pre-tokenizers, and llama (SentencePiece, with and without the space prefix). The
//! gpt2 pre-tokenizers no fixture exports (gpt-2, smollm, and llama.cpp's default, named or with
//! no `tokenizer.ggml.pre` at all) are checked on the same files with that key rewritten by gguf-py's
//! own `gguf_new_metadata`. Also: the special ids and add-bos flag agree, and an unknown
//! pre-tokenizer is refused by name.
//!
//! The cross-checks need node with node-llama-cpp (`CHATVEC_NODE_LLAMA_DIR`), and gguf-py for the
//! rewritten files; without them `cargo test` lists them as ignored (chatvec-testkit); under `CI`
//! they run and fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use chatvec_gen::gguf_tokenizer::from_gguf;
use chatvec_gguf::read::GgufIndex;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

const TEXTS: [&str; 8] = [
    "헌법 제1조는 대한민국은 민주공화국이다.",
    "Hello world, it's a test: don't stop!  Twice  spaced\n\nnew lines 12345",
    "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}",
    "emoji 🤖🎉 and mixed 한국어 text 😀",
    " leading space and trailing ",
    "1234567 + 89 = 1234656",
    "café naïve Ünïcödé ß",
    "price: $1,234.56 <=> ~x^2 | a--b... \"quoted\" 'twas I'LL 99999 ①②",
];

/// Text with the fixture's special tokens written in it.
fn special_text(specials: &[&str]) -> String {
    format!("{}user\n안녕하세요!{}\n{}assistant\n", specials[0], specials[1], specials[0])
}

fn fixtures() -> Vec<(&'static str, PathBuf, [&'static str; 2])> {
    let data = Path::new(ROOT).join("fixtures/arch");
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

/// Asserts chatvec's tokenizer for `gguf` gives llama.cpp's ids on every text, the same add-bos
/// flag and eos id; returns how many texts it compared.
fn assert_tokenizes_as_llama_cpp(name: &str, gguf: &Path, specials: &[&str], node: &Path, tmp: &Path) -> usize {
    let tok = from_gguf(&GgufIndex::open(gguf).unwrap()).unwrap();
    let mut texts: Vec<String> = TEXTS.iter().map(|t| t.to_string()).collect();
    texts.push(special_text(specials));
    let theirs = llama_cpp(node, gguf, &texts, tmp);
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
    texts.len()
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
        let n = assert_tokenizes_as_llama_cpp(name, &gguf, &specials, &node, tmp.path());
        report.push(format!("{name}: {n} texts tokenized as llama.cpp does"));
    }
    eprintln!("{}", report.join("\n"));
}

/// Copies `from` to `to` with `tokenizer.ggml.pre` set to `pre`, or removed when `None`, by
/// gguf-py's `gguf_new_metadata` (an independent GGUF writer).
fn with_pre(from: &Path, to: &Path, pre: Option<&str>) {
    let mut cmd = Command::new(chatvec_testkit::python());
    cmd.args(["-m", "gguf.scripts.gguf_new_metadata", "--force"]).arg(from).arg(to);
    match pre {
        Some(p) => cmd.args(["--pre-tokenizer", p]),
        None => cmd.args(["--remove-metadata", "tokenizer.ggml.pre"]),
    };
    let o = cmd.output().expect("python runs");
    assert!(o.status.success(), "gguf_new_metadata: {}", String::from_utf8_lossy(&o.stderr));
    let index = GgufIndex::open(to).unwrap();
    match (index.get("tokenizer.ggml.pre"), pre) {
        (Some(chatvec_gguf::read::MetaValue::Str(s)), Some(p)) => assert_eq!(s, p),
        (None, None) => {}
        (other, _) => panic!("tokenizer.ggml.pre is {other:?}, not {pre:?}"),
    }
}

#[test]
#[cfg_attr(
    not(all(have_node_llama, have_py_gguf)),
    ignore = "needs node-llama-cpp 3.21.1 (CHATVEC_NODE_LLAMA_DIR) and gguf-py (CHATVEC_PYTHON)"
)]
fn gpt2_pre_tokenizers_no_fixture_exports_equal_llama_cpps() {
    let node = chatvec_testkit::node_llama_dir();
    let tmp = tempfile::tempdir().unwrap();
    let mut report = vec![];
    for (name, dir, specials) in fixtures().into_iter().filter(|(n, ..)| matches!(*n, "llama" | "qwen2")) {
        let exported = tmp.path().join(format!("{name}.gguf"));
        export(&dir, &exported);
        for pre in [Some("gpt-2"), Some("smollm"), Some("default"), None] {
            let label = format!("{name} with pre {}", pre.unwrap_or("(none)"));
            let gguf = tmp.path().join(format!("{name}-{}.gguf", pre.unwrap_or("none")));
            with_pre(&exported, &gguf, pre);
            let n = assert_tokenizes_as_llama_cpp(&label, &gguf, &specials, &node, tmp.path());
            report.push(format!("{label}: {n} texts tokenized as llama.cpp does"));
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn an_unknown_pre_tokenizer_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("qwen2.gguf");
    export(&Path::new(ROOT).join("fixtures/arch/qwen2"), &gguf);
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
