//! Hostile GGUF files given to `chatvec generate` (issue 20, items 1–4): each is a good export with
//! one fault put in by hand. chatvec refuses each in one line naming the file and the tensor or
//! key, with exit 1, never a panic or a run on wrong weights; llama.cpp (node-llama-cpp, the
//! oracle) refuses the same files.
//!
//! The llama.cpp cross-check needs node with node-llama-cpp (CHATVEC_NODE_LLAMA_DIR); without it
//! `cargo test` lists it as ignored (chatvec-testkit); under `CI` it runs and fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{chatvec, fails_with_one_line, root};

/// The Mistral fixture (written as llama, q/k rows permuted) exported as f16 to `dir/good.gguf`.
fn exported(dir: &Path) -> (PathBuf, Vec<u8>) {
    let model = root().join("fixtures/arch/mistral");
    let out = dir.join("good.gguf");
    common::export_gguf(&model, &out, "f16");
    let bytes = std::fs::read(&out).unwrap();
    (out, bytes)
}

fn tokenizer_dir() -> PathBuf {
    root().join("fixtures/arch/mistral")
}

fn generate(gguf: &Path) -> Output {
    let tok = tokenizer_dir();
    chatvec(&[
        "generate",
        "--model",
        gguf.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--prompt",
        "hi",
        "--greedy",
        "--max-new-tokens",
        "2",
    ])
}

/// The position just after the length-prefixed string `s` in the header.
fn after(bytes: &[u8], s: &str) -> usize {
    let needle: Vec<u8> = (s.len() as u64).to_le_bytes().into_iter().chain(s.bytes()).collect();
    bytes.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("{s} not in the header"))
        + needle.len()
}

/// Where the type and offset fields of 2-d tensor `name` are.
fn type_and_offset_at(bytes: &[u8], name: &str) -> (usize, usize) {
    let at = after(bytes, name);
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 2, "{name} is 2-d");
    (at + 4 + 16, at + 4 + 16 + 4)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// `general.alignment = 0` added as the first metadata entry.
fn alignment_zero(good: &[u8]) -> Vec<u8> {
    let mut bytes = good[..24].to_vec();
    let n_kv = read_u64(good, 16) + 1;
    bytes[16..24].copy_from_slice(&n_kv.to_le_bytes());
    let key = "general.alignment";
    bytes.extend((key.len() as u64).to_le_bytes());
    bytes.extend(key.bytes());
    bytes.extend(4u32.to_le_bytes()); // u32
    bytes.extend(0u32.to_le_bytes());
    bytes.extend(&good[24..]);
    bytes
}

fn set_offset(good: &[u8], name: &str, offset: impl Fn(u64) -> u64) -> Vec<u8> {
    let mut bytes = good.to_vec();
    let (_, at) = type_and_offset_at(&bytes, name);
    let new = offset(read_u64(&bytes, at));
    bytes[at..at + 8].copy_from_slice(&new.to_le_bytes());
    bytes
}

/// The f32 value of metadata `key` set to `x`.
fn set_float(good: &[u8], key: &str, x: f32) -> Vec<u8> {
    let mut bytes = good.to_vec();
    let at = after(&bytes, key);
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 6, "{key} is f32");
    bytes[at + 4..at + 8].copy_from_slice(&x.to_le_bytes());
    bytes
}

/// Each hostile file, what chatvec's one line must name, and whether llama.cpp refuses it too
/// (it does not check float metadata for NaN).
fn hostile_files(good: &[u8]) -> Vec<(&'static str, Vec<u8>, &'static str, bool)> {
    let v = "blk.0.attn_v.weight";
    let k_offset = {
        let (_, at) = type_and_offset_at(good, "blk.0.attn_k.weight");
        read_u64(good, at)
    };
    let mut relabelled = good.to_vec();
    let (type_at, _) = type_and_offset_at(good, "blk.0.ffn_up.weight");
    relabelled[type_at..type_at + 4].copy_from_slice(&8u32.to_le_bytes()); // f16 -> q8_0
                                                                           // A type chatvec does not read (llama.cpp does): refused naming it, before any size check.
    let mut iq = good.to_vec();
    iq[type_at..type_at + 4].copy_from_slice(&20u32.to_le_bytes()); // f16 -> IQ4_NL
    let mut twice = good.to_vec();
    let at = after(good, "blk.0.attn_k.weight") - "attn_k.weight".len();
    twice[at..at + 6].copy_from_slice(b"attn_q");
    vec![
        ("alignment-zero", alignment_zero(good), "general.alignment = 0", true),
        ("unaligned", set_offset(good, v, |o| o + 16), v, true),
        ("overlap", set_offset(good, v, |_| k_offset + 32), v, true),
        ("relabelled", relabelled, "blk.0.ffn_up.weight", true),
        ("twice", twice, "blk.0.attn_q.weight", true),
        ("iq4-nl", iq, "IQ4_NL", false),
        ("nan-rope", set_float(good, "llama.rope.freq_base", f32::NAN), "llama.rope.freq_base", false),
        (
            "inf-eps",
            set_float(good, "llama.attention.layer_norm_rms_epsilon", f32::INFINITY),
            "layer_norm_rms_epsilon",
            false,
        ),
    ]
}

/// The good export and each hostile file written beside it, with what chatvec's line must name
/// and whether llama.cpp refuses it too.
fn written(dir: &Path) -> (PathBuf, Vec<(PathBuf, &'static str, bool)>) {
    let (good, good_bytes) = exported(dir);
    let files = hostile_files(&good_bytes)
        .into_iter()
        .map(|(name, bytes, needle, llama_cpp_refuses)| {
            let path = dir.join(format!("{name}.gguf"));
            std::fs::write(&path, &bytes).unwrap();
            (path, needle, llama_cpp_refuses)
        })
        .collect();
    (good, files)
}

#[test]
fn hostile_gguf_layouts_and_metadata_are_refused_naming_the_tensor_or_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (good, files) = written(tmp.path());
    let o = generate(&good);
    assert!(o.status.success(), "the unmodified export must run: {}", common::stderr(&o));
    for (path, needle, _) in files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let line = fails_with_one_line(&generate(&path), &[name, needle]);
        eprintln!("{}", line.trim_end());
    }
}

/// The oracle: llama.cpp loads the good file and refuses every hostile one it checks.
#[test]
#[cfg_attr(not(have_node_llama), ignore = "needs node-llama-cpp 3.21.1 (CHATVEC_NODE_LLAMA_DIR)")]
fn llama_cpp_refuses_the_same_hostile_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let (good, files) = written(tmp.path());
    let dir = chatvec_testkit::node_llama_dir();
    assert!(llama_cpp_loads(&dir, &good), "llama.cpp must load the unmodified file");
    for (path, _, llama_cpp_refuses) in files {
        if llama_cpp_refuses {
            assert!(!llama_cpp_loads(&dir, &path), "llama.cpp loads {}", path.display());
        }
    }
}

/// Whether llama.cpp loads `file` (one node process per file: node-llama-cpp's own metadata
/// reader may crash the process on a hostile file, which counts as not loading).
fn llama_cpp_loads(node_dir: &Path, file: &Path) -> bool {
    let o = Command::new("node")
        .arg(root().join("scripts/gguf/llama_cpp_loads.mjs"))
        .arg(file)
        .env("CHATVEC_NODE_LLAMA_DIR", node_dir)
        .output()
        .expect("node runs");
    let out = String::from_utf8_lossy(&o.stdout);
    let Some(last) = out.lines().last().filter(|_| o.status.success()) else {
        eprintln!("{}: node-llama-cpp ended without an answer ({})", file.display(), o.status);
        return false;
    };
    let loaded: serde_json::Value = serde_json::from_str(last).unwrap();
    loaded[file.to_str().unwrap()] == true
}
