//! chatvec's GGUF export against llama.cpp's own converter (convert_hf_to_gguf.py, the version
//! node-llama-cpp 3.21.1 bundles), whose outputs' hashes `scripts/gguf/make_fixtures.sh` recorded
//! in tests/data/converter.json. (`merge --gguf` against merging then exporting is tested in the CLI,
//! where the merge-to-GGUF glue lives.)

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use chatvec_format::{Checkpoint, NoProgress};
use chatvec_gguf::{export, FileType};
use sha2::{Digest, Sha256};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
const LLAMA_TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/llama-tiny");
/// The Mistral, Qwen2 and Gemma fixtures (fixtures/arch/make.py).
const ARCH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/arch");

/// The fixture models: name in converter.json, directory.
fn models() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("llama-tiny", Path::new(LLAMA_TINY).join("chat")),
        ("mistral", Path::new(ARCH).join("mistral")),
        ("qwen2", Path::new(ARCH).join("qwen2")),
        ("gemma", Path::new(ARCH).join("gemma")),
    ]
}

fn converter() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(Path::new(DATA).join("converter.json")).unwrap()).unwrap()
}

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

fn export_to(dir: &Path, model: &Path, t: &str) -> PathBuf {
    let out = dir.join(format!("{}-{t}.gguf", model.file_name().unwrap().to_string_lossy()));
    export(model, &out, FileType::parse(t).unwrap(), false, &NoProgress, &AtomicBool::new(false)).unwrap();
    out
}

#[test]
fn float_exports_are_byte_identical_to_the_converter() {
    let expected = converter();
    let tmp = tempfile::tempdir().unwrap();
    let mut mismatches = vec![];
    for (name, dir) in models() {
        for t in ["f32", "f16", "bf16"] {
            let out = export_to(tmp.path(), &dir, t);
            let want = &expected[format!("{name}-{t}")];
            let got = (sha256(&out), std::fs::metadata(&out).unwrap().len());
            if got.0 != want["sha256"].as_str().unwrap() || got.1 != want["bytes"].as_u64().unwrap() {
                mismatches.push(format!("{name}-{t}: {} bytes, converter {}", got.1, want["bytes"]));
            }
        }
    }
    assert!(mismatches.is_empty(), "differ from the converter: {mismatches:?}");
}

#[test]
fn q8_0_exports_are_byte_identical_to_the_converter() {
    // Both round x/d half away from zero (ggml's roundf, gguf-py's np_roundf) and compute the scale
    // in f32 the same way, so the blocks agree bit for bit.
    let expected = converter();
    let tmp = tempfile::tempdir().unwrap();
    for (name, dir) in models() {
        let out = export_to(tmp.path(), &dir, "q8_0");
        assert_eq!(sha256(&out), expected[format!("{name}-q8_0")]["sha256"].as_str().unwrap(), "{name} q8_0");
    }
}

#[test]
fn bpe_probe_hash_matches_the_converters_chkhsh() {
    let expected = converter();
    for (name, dir) in [("llama-tiny", Path::new(LLAMA_TINY).join("chat")), ("qwen2", Path::new(ARCH).join("qwen2"))] {
        let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let ids = tok.encode(chatvec_gguf::vocab::CHKTXT, true).unwrap();
        let want = expected[format!("{name}-f16")]["chkhsh"].as_str().unwrap();
        assert_eq!(chatvec_gguf::vocab::chkhsh(ids.get_ids()), want, "{name}");
    }
}

#[test]
fn every_output_tensor_sits_at_its_planned_aligned_offset() {
    let ckpt = Checkpoint::open(&Path::new(ARCH).join("qwen2")).unwrap();
    let (plan, _) = chatvec_gguf::export::plan_export(&ckpt, FileType::Q4KM).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = export_to(tmp.path(), &Path::new(ARCH).join("qwen2"), "q4_k_m");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), plan.file_bytes());
    assert!(plan.tensors.iter().all(|t| t.offset % 32 == 0));
    let types: Vec<_> = plan.tensors.iter().map(|t| (t.info.name.as_str(), t.ggml)).collect();
    // llama-quantize's Q4_K_M: q4_k; q6_k for ffn_down of the last eighth of the layers; q5_0 where
    // rows (32) are not a multiple of 256; the tied embedding as the output (q6_k, q8_0 fallback).
    use chatvec_gguf::types::GgmlType::{Q4K, Q5_0, Q6K, Q8_0};
    for want in [("blk.0.ffn_down.weight", Q4K), ("blk.1.ffn_down.weight", Q6K), ("blk.0.ffn_gate.weight", Q5_0)] {
        assert!(types.contains(&want), "{want:?} in {types:?}");
    }
    assert!(types.contains(&("token_embd.weight", Q8_0)), "{types:?}");
}

#[test]
fn an_interrupted_or_failed_export_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.gguf");
    let err = export(&Path::new(ARCH).join("mistral"), &out, FileType::F16, false, &NoProgress, &AtomicBool::new(true))
        .unwrap_err();
    assert!(matches!(err, chatvec_format::Error::Interrupted));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    std::fs::write(&out, "x").unwrap();
    let err =
        export(&Path::new(ARCH).join("mistral"), &out, FileType::F16, false, &NoProgress, &AtomicBool::new(false))
            .unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
}

#[test]
fn an_unsupported_architecture_is_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("gpt2");
    std::fs::create_dir(&model).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(Path::new(ARCH).join("qwen2").join(f), model.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(Path::new(ARCH).join("qwen2/config.json")).unwrap();
    std::fs::write(model.join("config.json"), config.replace("Qwen2ForCausalLM", "GPT2LMHeadModel")).unwrap();
    let out = tmp.path().join("x.gguf");
    let err = export(&model, &out, FileType::F16, false, &NoProgress, &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(err.contains("GPT2LMHeadModel") && !err.contains('\n'), "{err}");
    assert!(!out.exists());
}
