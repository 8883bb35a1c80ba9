//! Every common ggml type as stored (issue 24, item 2): F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! Q2_K..Q6_K and a file mixing them, written by gguf-py (`scripts/gguf/requant.py`) from the
//! Mistral fixture exported as f32. The oracles, both from gguf-py:
//! - its dequantization of each file: the weights chatvec uses (q/k rows un-permuted and all) equal
//!   it to within f32 rounding;
//! - an f32 GGUF of those dequantized weights: chatvec's logits on the quantized file stay within
//!   a stated tolerance of its logits on the f32 file (candle's quantized matmuls round the
//!   activations to 8 bits, as llama.cpp does, so they are not exact).
//!
//! A third oracle cannot be asserted exactly: llama.cpp (node-llama-cpp) on the same files. It
//! quantizes the activations differently in prefill, so greedy continuations part sooner or later.
//! `llama_cpp_greedy_agreement_is_reported` prints, per type, how many leading greedy tokens the two
//! engines share on a few prompts (the table in docs/gguf.md), and asserts only the first token for
//! the high-precision types (F16, Q8_0 and the f32 dequantized Q8_0 file).
//!
//! Needs Python with gguf-py (`CHATVEC_PYTHON`), and node-llama-cpp for the agreement; without
//! them `cargo test` lists the tests as ignored (chatvec-testkit); under `CI` they run and fail.

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
    requantized_from("fixtures/arch/mistral", tmp, &TYPES)
}

/// The f32 export of `model` (relative to the repository), re-stored in `types` by gguf-py.
fn requantized_from(model: &str, tmp: &Path, types: &[&str]) -> PathBuf {
    std::fs::create_dir_all(tmp).unwrap();
    let src = tmp.join("f32.gguf");
    write_f32_export(&Path::new(ROOT).join(model), &src);
    let out = tmp.join("types");
    let o = Command::new(chatvec_testkit::python())
        .arg(format!("{ROOT}/scripts/gguf/requant.py"))
        .arg(&src)
        .arg(&out)
        .args(types)
        .output()
        .expect("python runs");
    assert!(o.status.success(), "requant.py: {}", String::from_utf8_lossy(&o.stderr));
    out
}

/// chatvec's own f32 export, through the library (as `chatvec export gguf --type f32`).
fn write_f32_export(model: &Path, out: &Path) {
    let ftype = chatvec_gguf::FileType::F32;
    let progress = chatvec_format::NoProgress;
    let cancel = std::sync::atomic::AtomicBool::new(false);
    chatvec_gguf::export(model, out, ftype, false, &progress, &cancel).unwrap();
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

/// Prompts for the greedy agreement: BOS, then fixed ids below `vocab`.
fn prompts(bos: u32, vocab: u32) -> Vec<Vec<u32>> {
    (0..4u32)
        .map(|p| std::iter::once(bos).chain((0..6 + p).map(|i| (i * 53 + p * 97 + 11) % vocab)).collect())
        .collect()
}

const GREEDY_TOKENS: usize = 16;

fn chatvec_greedy(path: &Path, prompt: &[u32]) -> Vec<u32> {
    let mut m = Model::load_with(path, &ModelOptions::dense(&Device::Cpu, DType::F32)).unwrap();
    let mut out = vec![];
    let mut next = prompt.to_vec();
    for _ in 0..GREEDY_TOKENS {
        let logits = m.forward_last(&next).unwrap();
        let id = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        out.push(id);
        next = vec![id];
    }
    out
}

/// llama.cpp's greedy tokens for each request (model, prompt ids, chatvec's tokens), in one node
/// process, and which of chatvec's tokens end generation for llama.cpp (it stops before yielding one).
fn llama_cpp_greedy(requests: &[(PathBuf, Vec<u32>, Vec<u32>)], tmp: &Path) -> Vec<(Vec<u32>, Vec<bool>)> {
    let req: Vec<serde_json::Value> = requests
        .iter()
        .map(|(m, p, ours)| {
            serde_json::json!({"model": m, "prompt_ids": p, "max_new_tokens": GREEDY_TOKENS, "stop_ids": ours})
        })
        .collect();
    let file = tmp.join("requests.json");
    std::fs::write(&file, serde_json::to_string(&req).unwrap()).unwrap();
    let o = Command::new("node")
        .arg(format!("{ROOT}/scripts/gguf/llama_cpp_run.mjs"))
        .arg(&file)
        .env("CHATVEC_NODE_LLAMA_DIR", chatvec_testkit::node_llama_dir())
        .output()
        .expect("node runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "node: {out}\n{}", String::from_utf8_lossy(&o.stderr));
    let results: Vec<serde_json::Value> = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    results
        .iter()
        .zip(requests)
        .map(|(r, (_, _, ours))| {
            let eog = ours.iter().map(|id| r["eog"][id.to_string()].as_bool().unwrap_or(false)).collect();
            (serde_json::from_value(r["tokens"].clone()).unwrap(), eog)
        })
        .collect()
}

/// Leading tokens both engines produce; llama.cpp's end-of-generation token, which it does not
/// yield, counts when chatvec produced it next.
fn agreement(ours: &[u32], eog: &[bool], llama: &[u32]) -> usize {
    let n = ours.iter().zip(llama).take_while(|(a, b)| a == b).count();
    n + usize::from(n == llama.len() && n < ours.len() && eog[n])
}

#[test]
#[cfg_attr(
    not(all(have_py_gguf, have_py_numpy, have_node_llama)),
    ignore = "needs Python with gguf-py and numpy (CHATVEC_PYTHON) and node-llama-cpp (CHATVEC_NODE_LLAMA_DIR)"
)]
fn llama_cpp_greedy_agreement_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    // The Mistral fixture (random weights) in every type, and the lab's trained chat model in the
    // types whose blocks fit its 128-wide rows (k-quants need 256), with gguf-py's real quantizers.
    let sources: [(&str, &str, &[&str], u32, u32); 2] = [
        ("Mistral fixture (random weights)", "fixtures/arch/mistral", &TYPES, 1, 500),
        (
            "lab chat model (trained)",
            "models/lab/chat",
            &["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"],
            2000,
            2000,
        ),
    ];
    let mut table = vec![format!("| model | type | leading greedy tokens agreeing, 4 prompts (of {GREEDY_TOKENS}) |")];
    table.push("|---|---|---|".into());
    let mut first_disagrees = vec![];
    for (k, (label, model, types, bos, vocab)) in sources.iter().enumerate() {
        let dir = requantized_from(model, &tmp.path().join(k.to_string()), types);
        let mut files: Vec<(String, PathBuf)> =
            types.iter().map(|t| (t.to_string(), dir.join(format!("{t}.gguf")))).collect();
        files.push(("F32 (Q8_0 dequantized)".into(), dir.join("Q8_0-dequantized.gguf")));
        let prompts = prompts(*bos, *vocab);
        let requests: Vec<(PathBuf, Vec<u32>, Vec<u32>)> = files
            .iter()
            .flat_map(|(_, f)| prompts.iter().map(move |p| (f.clone(), p.clone(), chatvec_greedy(f, p))))
            .collect();
        let theirs = llama_cpp_greedy(&requests, tmp.path());
        for (i, (name, _)) in files.iter().enumerate() {
            let mut agree = vec![];
            for j in 0..prompts.len() {
                let ours = &requests[i * prompts.len() + j].2;
                let (llama, eog) = &theirs[i * prompts.len() + j];
                let n = agreement(ours, eog, llama);
                if n == 0 && (name == "F16" || name == "Q8_0" || name.starts_with("F32")) {
                    first_disagrees.push(format!("{label} {name} prompt {j}: chatvec {ours:?}, llama.cpp {llama:?}"));
                }
                // †: all of llama.cpp's answer, its end-of-generation token included.
                agree.push(if n > llama.len() { format!("{n}†") } else { n.to_string() });
            }
            table.push(format!("| {label} | {name} | {} |", agree.join(", ")));
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(first_disagrees.is_empty(), "the first greedy token differs: {first_disagrees:#?}");
}
