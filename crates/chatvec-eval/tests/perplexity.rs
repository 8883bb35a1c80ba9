//! Perplexity against transformers' oracle on the fixture models.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use chatvec_eval::perplexity::{perplexity, Window};
use chatvec_gen::{ChatModel, LoadOptions};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/llama-tiny");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn oracle() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected/perplexity_oracle.json")).unwrap()).unwrap()
}

fn ids(o: &serde_json::Value) -> Vec<u32> {
    o["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// The ratio-1.0 merge as a model directory: the target's files with the expected weights.
fn merged_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture("target")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(fixture("expected/merged_ratio_1.0.safetensors"), dir.path().join("model.safetensors")).unwrap();
    dir
}

#[test]
fn one_window_matches_the_oracle_for_target_and_merge() {
    let o = oracle();
    let ids = ids(&o);
    assert_eq!(ids.len(), 200);
    let merged = merged_dir();
    for (dir, key) in [(fixture("target"), "target_mean_nll"), (merged.path().to_path_buf(), "merged_mean_nll")] {
        let mut m = ChatModel::load(&dir, &LoadOptions::default(), None).unwrap();
        let r = perplexity(&mut m.model, &ids, Window::new(256, 256).unwrap(), &AtomicBool::new(false)).unwrap();
        let want = o[key].as_f64().unwrap();
        assert!((r.mean_nll - want).abs() < 1e-4, "{key}: {} vs {want}", r.mean_nll);
        assert_eq!((r.scored, r.windows), (199, 1));
        assert!((r.perplexity - want.exp()).abs() < 1e-3 * want.exp());
    }
}

#[test]
fn the_text_tokenizes_to_the_oracle_ids() {
    let o = oracle();
    let text: String =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/korean/constitution.txt"))
            .unwrap()
            // Python reads text files with universal newlines; so does `chatvec eval ppl`.
            .replace("\r\n", "\n")
            .chars()
            .take(600)
            .collect();
    let m = ChatModel::load(&fixture("target"), &LoadOptions::default(), None).unwrap();
    let got = m.encode_text(&text).unwrap();
    assert_eq!(&got[..200], &ids(&o)[..]);
}

#[test]
fn sliding_windows_score_with_less_context() {
    let o = oracle();
    let ids = ids(&o);
    let mut m = ChatModel::load(&fixture("target"), &LoadOptions::default(), None).unwrap();
    let full = perplexity(&mut m.model, &ids, Window::new(200, 200).unwrap(), &AtomicBool::new(false)).unwrap();
    let slid = perplexity(&mut m.model, &ids, Window::new(64, 32).unwrap(), &AtomicBool::new(false)).unwrap();
    assert_eq!(slid.scored, 199);
    assert_eq!(slid.windows, 6);
    // Same tokens scored, less history: a different (finite) number.
    assert!(slid.mean_nll.is_finite() && (slid.mean_nll - full.mean_nll).abs() > 1e-6);
    // With a stride equal to the context, windows are disjoint chunks.
    let chunks = perplexity(&mut m.model, &ids, Window::new(100, 100).unwrap(), &AtomicBool::new(false)).unwrap();
    assert_eq!((chunks.windows, chunks.scored), (2, 198));
    let err = perplexity(&mut m.model, &ids[..1], Window::new(10, 5).unwrap(), &AtomicBool::new(false)).unwrap_err();
    assert!(err.to_string().contains("at least 2"));
}
