//! Mistral (sliding window), Qwen2 (q/k/v biases, tied embeddings) and Gemma (scaled
//! embeddings, (1 + w) norms, tanh GELU) against transformers' float32 logits on tiny random
//! checkpoints in the transformers-5 config spelling (tests/data/make_arch_fixtures.py).

use std::path::PathBuf;

use candle_core::{DType, Device};
use chatvec_gen::{Architecture, Model};

fn data(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")).join(name)
}

fn expected(name: &str) -> (Vec<u32>, Vec<Vec<f32>>) {
    let text = std::fs::read_to_string(data(name).join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = v["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    (ids, logits)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// All-position logits from one pass, and last-position logits when the same tokens are fed
/// through the KV cache one at a time, both equal transformers'.
fn check(name: &str, arch: Architecture) {
    let (ids, want) = expected(name);
    let mut model = Model::load(&data(name), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(model.architecture(), arch);
    let all = model.forward_all(&ids).unwrap().to_vec2::<f32>().unwrap();
    for (pos, (got, exp)) in all.iter().zip(&want).enumerate() {
        let d = max_diff(got, exp);
        assert!(d < 1e-4, "{name} position {pos}: max |diff| {d}");
    }
    model.reset();
    let first = model.forward_last(&ids[..3]).unwrap().to_vec1::<f32>().unwrap();
    assert!(max_diff(&first, &want[2]) < 1e-4, "{name} prefill");
    for pos in 3..ids.len() {
        let got = model.forward_last(&ids[pos..pos + 1]).unwrap().to_vec1::<f32>().unwrap();
        let d = max_diff(&got, &want[pos]);
        assert!(d < 1e-4, "{name} cached step at position {pos}: max |diff| {d}");
    }
}

#[test]
fn mistral_with_a_sliding_window_shorter_than_the_input() {
    check("mistral", Architecture::Mistral);
}

#[test]
fn qwen2_with_biases_and_tied_embeddings() {
    check("qwen2", Architecture::Qwen2);
}

#[test]
fn gemma_with_its_norm_embedding_and_activation() {
    check("gemma", Architecture::Gemma);
}
