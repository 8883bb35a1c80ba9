//! Mistral (sliding window), Qwen2 (q/k/v biases, tied embeddings) and Gemma (scaled
//! embeddings, (1 + w) norms, tanh GELU, head_dim != hidden / heads) against transformers' float32
//! logits on the tiny random checkpoints of fixtures/arch (transformers-5 config spelling), each
//! run of expected.json with its config overrides applied (fixtures/arch/make.py).

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use chatvec_gen::{Architecture, Model};
use serde_json::{Map, Value};

/// One oracle run: the config keys it overrides and transformers' logits at every position.
struct Run {
    config: Map<String, Value>,
    logits: Vec<Vec<f32>>,
}

fn expected(name: &str) -> (Vec<u32>, Vec<Run>) {
    let text = std::fs::read_to_string(common::arch_fixture(name).join("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let ids = common::ids(&v["input_ids"]);
    let runs = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| Run {
            config: run["config"].as_object().unwrap().clone(),
            logits: run["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
                .collect(),
        })
        .collect();
    (ids, runs)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Every run of the fixture's expected.json, on the fixture with that run's config overrides.
/// Returns the runs' overrides.
fn check(name: &str, arch: Architecture) -> Vec<Map<String, Value>> {
    let (ids, runs) = expected(name);
    assert!(!runs.is_empty(), "{name}: no runs in expected.json");
    for run in &runs {
        let dir = common::with_config(&common::arch_fixture(name), &run.config);
        let label = format!("{name} {}", Value::Object(run.config.clone()));
        check_run(&label, dir.path(), arch, &ids, &run.logits);
    }
    runs.into_iter().map(|r| r.config).collect()
}

/// All-position logits from one pass, and last-position logits when the same tokens are fed
/// through the KV cache one at a time, both equal transformers'.
fn check_run(name: &str, dir: &Path, arch: Architecture, ids: &[u32], want: &[Vec<f32>]) {
    let mut model = Model::load(dir, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(model.architecture(), arch);
    let all = model.forward_all(ids).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(all.len(), want.len(), "{name}: positions");
    for (pos, (got, exp)) in all.iter().zip(want).enumerate() {
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
    let inputs = expected("mistral").0.len() as u64;
    let runs = check("mistral", Architecture::Mistral);
    let windows: Vec<u64> = runs.iter().filter_map(|c| c.get("sliding_window")?.as_u64()).collect();
    assert!(windows.iter().any(|&w| w < inputs), "no run with a window shorter than {inputs} tokens: {windows:?}");
}

#[test]
fn qwen2_with_biases_and_tied_embeddings() {
    check("qwen2", Architecture::Qwen2);
}

#[test]
fn gemma_with_its_norm_embedding_and_activation() {
    check("gemma", Architecture::Gemma);
}
