//! GGUF files made by llama.cpp's own convert_hf_to_gguf.py give the same logits as the
//! safetensors they were converted from: names mapped back, llama q/k rows un-permuted, Qwen2
//! biases and tied embeddings, q8_0 blocks read as llama.cpp wrote them.
//!
//! Needs Python (`CHATVEC_PYTHON`) with numpy, torch, sentencepiece, and the llama.cpp source
//! that node-llama-cpp ships (`CHATVEC_NODE_LLAMA_DIR`, default `<repo>/.tools/node`). Without
//! them `cargo test` lists it as ignored (chatvec-testkit); under `CI` it runs and fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use chatvec_gen::{Model, ModelOptions, WeightFormat};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// A llama.cpp checkout cloned from node-llama-cpp's bundle into `dir`.
fn llama_cpp(dir: &Path) -> PathBuf {
    let bundle = chatvec_testkit::llama_cpp_bundle();
    let out = dir.join("llama.cpp");
    let ok = Command::new("git").args(["clone", "-q"]).arg(&bundle).arg(&out).status().expect("git runs").success();
    assert!(ok, "git clone of {} failed", bundle.display());
    out
}

/// Converts `model` to GGUF at each outtype with llama.cpp's convert_hf_to_gguf.py.
fn convert(llama: &Path, model: &Path, work: &Path, outtypes: &[&str]) -> Vec<PathBuf> {
    let out = Command::new(chatvec_testkit::python())
        .arg(format!("{ROOT}/crates/chatvec-gen/tests/make_gguf.py"))
        .args([llama, model, work])
        .args(outtypes)
        .output()
        .expect("python runs");
    assert!(out.status.success(), "make_gguf.py failed: {}", String::from_utf8_lossy(&out.stderr));
    outtypes.iter().map(|t| work.join(format!("model-{t}.gguf"))).collect()
}

fn load(path: &Path, weights: &str) -> Model {
    let opts = ModelOptions {
        weights: WeightFormat::parse(weights).unwrap(),
        ..ModelOptions::dense(&Device::Cpu, DType::F32)
    };
    Model::load_with(path, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Logits at every position of a 12-token sequence.
fn logits(m: &mut Model) -> Tensor {
    let ids: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 90).collect();
    m.reset();
    m.forward_all(&ids).unwrap()
}

#[test]
#[cfg_attr(
    not(all(have_node_llama, have_py_numpy, have_py_torch, have_py_sentencepiece)),
    ignore = "needs node-llama-cpp's llama.cpp source and Python with numpy, torch, sentencepiece"
)]
fn gguf_from_llama_cpp_matches_its_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let llama = llama_cpp(tmp.path());
    let data = |name: &str| PathBuf::from(format!("{ROOT}/fixtures/arch/{name}"));
    // Mistral's fixture has 4 query and 2 key/value heads: the converter writes it as `llama`
    // with permuted q/k rows (and no sliding window, which make_gguf.py drops from the reference
    // too, so the two are the same model whatever the window).
    for (name, dir) in [
        ("qwen2", data("qwen2")),
        ("mistral", data("mistral")),
        ("lab chat", PathBuf::from(format!("{ROOT}/models/lab/chat"))),
    ] {
        let work = tmp.path().join(name.replace(' ', "-"));
        let ggufs = convert(&llama, &dir, &work, &["f32"]);
        let mut reference = load(&work.join("hf"), "none");
        let mut from_gguf = load(&ggufs[0], "none");
        let diff = max_abs_diff(&logits(&mut reference), &logits(&mut from_gguf));
        assert!(diff < 1e-4, "{name}: f32 GGUF logits differ from the safetensors' by {diff}");
    }
    // q8_0 blocks as llama.cpp's converter rounds them, against chatvec's own q8_0 of the same
    // weights: the same format, so nearly the same logits (rounding ties may differ).
    let work = tmp.path().join("lab-q8");
    let ggufs = convert(&llama, Path::new(&format!("{ROOT}/models/lab/chat")), &work, &["q8_0"]);
    let mut ours = load(&work.join("hf"), "q8_0");
    let mut theirs = load(&ggufs[0], "none");
    let (a, b) = (logits(&mut ours), logits(&mut theirs));
    let diff = max_abs_diff(&a, &b);
    let scale = a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 0.02 * scale, "q8_0 GGUF logits differ from chatvec's q8_0 by {diff} (max logit {scale})");
}
