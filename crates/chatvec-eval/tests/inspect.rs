//! `inspect` against an independent float64 computation over the raw safetensors files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use chatvec_eval::inspect::{inspect, InspectInput, VectorInput, WeightsRef};
use chatvec_eval::modules::ModuleKind;
use chatvec_format::{Checkpoint, NoProgress};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/llama-tiny");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// Every tensor of every `.safetensors` file in `dir`, decoded to f64 by hand.
fn load_all(dir: &Path) -> HashMap<String, Vec<f64>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        load_file(&path, &mut out);
    }
    out
}

fn load_file(path: &Path, out: &mut HashMap<String, Vec<f64>>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, view) in st.tensors() {
        let data = view.data();
        let vals: Vec<f64> = match view.dtype() {
            safetensors::Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16) as f64)
                .collect(),
            safetensors::Dtype::F32 => {
                data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect()
            }
            d => panic!("unexpected dtype {d:?}"),
        };
        out.insert(name, vals);
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1e-300) + 1e-15
}

#[test]
fn norms_max_zeros_and_cosines_match_a_float64_computation() {
    let base = load_all(&fixture("base"));
    let chat = load_all(&fixture("chat"));
    let target = load_all(&fixture("target"));
    let input = InspectInput {
        vector: VectorInput {
            plus: Checkpoint::open(&fixture("chat")).unwrap(),
            minus: Some(Checkpoint::open(&fixture("base")).unwrap()),
        },
        weights: WeightsRef::Minus,
        compare: Some(VectorInput {
            plus: Checkpoint::open(&fixture("target")).unwrap(),
            minus: Some(Checkpoint::open(&fixture("base")).unwrap()),
        }),
    };
    let r = inspect(&input, &NoProgress, &AtomicBool::new(false)).unwrap();
    assert_eq!(r.tensors.len(), base.len());
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    let (mut all_d, mut all_w, mut all_c) = (vec![], vec![], vec![]);
    let mut layer1 = (vec![], vec![]);
    for t in &r.tensors {
        let b = &base[&t.name];
        let d: Vec<f64> = chat[&t.name].iter().zip(b).map(|(c, b)| c - b).collect();
        let c: Vec<f64> = target[&t.name].iter().zip(b).map(|(t, b)| t - b).collect();
        let s = &t.stats;
        assert!(close(s.delta_norm, norm(&d)), "{}: {} vs {}", t.name, s.delta_norm, norm(&d));
        assert!(close(s.weight_norm.unwrap(), norm(b)), "{}", t.name);
        assert!(close(s.relative_norm.unwrap(), norm(&d) / norm(b)), "{}", t.name);
        assert_eq!(s.max_abs_delta, d.iter().fold(0.0f64, |m, x| m.max(x.abs())), "{}", t.name);
        let zeros = d.iter().filter(|x| **x == 0.0).count() as f64 / d.len() as f64;
        assert_eq!(s.zero_share, zeros, "{}", t.name);
        let cos = d.iter().zip(&c).map(|(x, y)| x * y).sum::<f64>() / (norm(&d) * norm(&c));
        assert!((s.cosine.unwrap() - cos).abs() < 1e-12, "{}: {} vs {cos}", t.name, s.cosine.unwrap());
        if t.layer == Some(1) {
            layer1.0.extend_from_slice(&d);
            layer1.1.extend_from_slice(&c);
        }
        all_d.extend(d);
        all_w.extend_from_slice(b);
        all_c.extend(c);
    }
    // Groups are the concatenated tensors, not averages.
    assert!(close(r.total.delta_norm, norm(&all_d)));
    assert!(close(r.total.weight_norm.unwrap(), norm(&all_w)));
    let l1 = r.layers.iter().find(|g| g.label == "1").unwrap();
    let cos1 = layer1.0.iter().zip(&layer1.1).map(|(x, y)| x * y).sum::<f64>() / (norm(&layer1.0) * norm(&layer1.1));
    assert!((l1.stats.cosine.unwrap() - cos1).abs() < 1e-12);
    assert_eq!(l1.tensors, 9);
    // The grid has the three layers and the non-layer row, with q..down and norms per layer.
    let labels: Vec<_> = r.grid.iter().map(|row| row.label.as_str()).collect();
    assert_eq!(labels, ["0", "1", "2", "model"]);
    assert_eq!(r.grid[0].cells.len(), 8);
    assert!(r.grid[3].cells.contains_key(&ModuleKind::Embed) && r.grid[3].cells.contains_key(&ModuleKind::LmHead));
    let kinds: Vec<_> = r.kinds.iter().map(|g| g.label.as_str()).collect();
    assert_eq!(kinds, ["embed", "q", "k", "v", "o", "gate", "up", "down", "norm", "lm_head"]);
    // The base's chat-token rows are zero (untrained), so the embedding's vector is large there.
    let emb = r.tensors.iter().find(|t| t.name == "model.embed_tokens.weight").unwrap();
    assert!(emb.stats.relative_norm.unwrap() > 0.0);
}

#[test]
fn a_stored_vector_gives_the_same_norms_as_chat_minus_base() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("base/config.json"), dir.path().join("config.json")).unwrap();
    std::fs::copy(fixture("expected/chat_vector_f32.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let stored = InspectInput {
        vector: VectorInput { plus: Checkpoint::open(dir.path()).unwrap(), minus: None },
        weights: WeightsRef::Model(Checkpoint::open(&fixture("base")).unwrap()),
        compare: Some(VectorInput {
            plus: Checkpoint::open(&fixture("chat")).unwrap(),
            minus: Some(Checkpoint::open(&fixture("base")).unwrap()),
        }),
    };
    let r = inspect(&stored, &NoProgress, &AtomicBool::new(false)).unwrap();
    let base = load_all(&fixture("base"));
    let mut v = HashMap::new();
    load_file(&fixture("expected/chat_vector_f32.safetensors"), &mut v);
    for t in &r.tensors {
        assert!(close(t.stats.delta_norm, norm(&v[&t.name])), "{}", t.name);
        assert!(close(t.stats.weight_norm.unwrap(), norm(&base[&t.name])), "{}", t.name);
        // The same vector twice: cosine 1.
        assert!((t.stats.cosine.unwrap() - 1.0).abs() < 1e-12, "{}", t.name);
    }
    let no_weights = InspectInput {
        vector: VectorInput { plus: Checkpoint::open(dir.path()).unwrap(), minus: None },
        weights: WeightsRef::None,
        compare: None,
    };
    let r = inspect(&no_weights, &NoProgress, &AtomicBool::new(false)).unwrap();
    assert!(!r.has_relative() && r.total.cosine.is_none());
    let h = r.heatmap(false);
    assert_eq!(h.value_label, "RMS Δ");
    assert_eq!(h.rows.len(), 4);
}

#[test]
fn interrupt_stops_the_pass() {
    let input = InspectInput {
        vector: VectorInput {
            plus: Checkpoint::open(&fixture("chat")).unwrap(),
            minus: Some(Checkpoint::open(&fixture("base")).unwrap()),
        },
        weights: WeightsRef::Minus,
        compare: None,
    };
    let err = inspect(&input, &NoProgress, &AtomicBool::new(true)).unwrap_err();
    assert!(err.to_string().contains("interrupted"));
}
