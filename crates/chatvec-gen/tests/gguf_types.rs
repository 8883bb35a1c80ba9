//! Every common ggml type as stored (issue 24, item 2): F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! Q2_K..Q6_K and a file mixing them, written by gguf-py (`scripts/gguf/requant.py`) from the
//! Mistral fixture exported as f32. The oracles, both from gguf-py:
//! - its dequantization of each file: the weights chatvec uses (q/k rows un-permuted and all) equal
//!   it to within f32 rounding;
//! - an f32 GGUF of those dequantized weights: chatvec's logits on the quantized file stay within
//!   a stated tolerance of its logits on the f32 file (candle's quantized matmuls round the
//!   activations to 8 bits, as llama.cpp does, so they are not exact).
//!
//! Needs Python with gguf-py (`CHATVEC_PYTHON`); without it `cargo test` lists the test as
//! ignored (chatvec-testkit); under `CI` it runs and fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use chatvec_gen::models::{GgufWeights, WeightSource};
use chatvec_gen::{Model, ModelOptions};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const TYPES: [&str; 13] =
    ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "mixed"];
/// Largest logit difference allowed, as a fraction of the largest logit.
const LOGIT_TOLERANCE: f32 = 0.05;

/// The f32 export of the Mistral fixture, re-stored in every type by gguf-py.
fn requantized(tmp: &Path) -> PathBuf {
    let src = tmp.join("f32.gguf");
    write_f32_export(&src);
    let out = tmp.join("types");
    let o = Command::new(chatvec_testkit::python())
        .arg(format!("{ROOT}/scripts/gguf/requant.py"))
        .arg(&src)
        .arg(&out)
        .args(TYPES)
        .output()
        .expect("python runs");
    assert!(o.status.success(), "requant.py: {}", String::from_utf8_lossy(&o.stderr));
    out
}

/// chatvec's own f32 export, through the library (as `chatvec export gguf --type f32`).
fn write_f32_export(out: &Path) {
    let model = Path::new(ROOT).join("crates/chatvec-gguf/tests/data/mistral");
    let ftype = chatvec_gguf::FileType::F32;
    let progress = chatvec_format::NoProgress;
    let cancel = std::sync::atomic::AtomicBool::new(false);
    chatvec_gguf::export(&model, out, ftype, false, &progress, &cancel).unwrap();
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn weights_equal_gguf_py(file: &Path, dequantized: &Path) {
    let (ours, theirs) = (GgufWeights::open(file).unwrap(), GgufWeights::open(dequantized).unwrap());
    let mut checked = 0;
    for entry in theirs.index().tensors() {
        let hf = chatvec_gguf::arch::gguf_to_hf(&entry.name).unwrap();
        let (a, b) = (ours.tensor(&hf, &entry.shape).unwrap(), theirs.tensor(&hf, &entry.shape).unwrap());
        let diff = max_abs(&(&a - &b).unwrap());
        assert!(
            diff <= 1e-6 * max_abs(&b).max(1.0),
            "{}: {} differs from gguf-py by {diff}",
            file.display(),
            entry.name
        );
        checked += 1;
    }
    assert!(checked >= 20, "{}: only {checked} tensors", file.display());
}

fn logits(path: &Path) -> Tensor {
    let mut m = Model::load_with(path, &ModelOptions::dense(&Device::Cpu, DType::F32)).unwrap();
    let ids: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 500).collect();
    m.forward_all(&ids).unwrap()
}

#[test]
#[cfg_attr(not(all(have_py_gguf, have_py_numpy)), ignore = "needs Python with gguf-py and numpy (CHATVEC_PYTHON)")]
fn every_common_type_reads_as_gguf_py_dequantizes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = requantized(tmp.path());
    let mut report = vec![];
    for t in TYPES {
        let (file, dequantized) = (dir.join(format!("{t}.gguf")), dir.join(format!("{t}-dequantized.gguf")));
        weights_equal_gguf_py(&file, &dequantized);
        let (a, b) = (logits(&file), logits(&dequantized));
        let (diff, scale) = (max_abs(&(&a - &b).unwrap()), max_abs(&b));
        report.push(format!("{t}: logits within {diff:.4} of the f32 forward (max logit {scale:.3})"));
        assert!(diff <= LOGIT_TOLERANCE * scale, "{t}: logits differ by {diff} (max logit {scale})");
    }
    eprintln!("{}", report.join("\n"));
}
