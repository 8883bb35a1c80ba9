//! Quantized weights against the exact f32 path: perplexity on Korean text and greedy
//! continuations, on the trained lab models (random-weight fixtures have near-flat logits, where
//! any rounding flips the argmax) and on the transformers fixtures.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use chatvec_eval::perplexity::{perplexity, Window};
use chatvec_gen::sampling::argmax;
use chatvec_gen::{ChatModel, LoadOptions};
use chatvec_gen::{ModelOptions, WeightFormat};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn model_dir(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn load(dir: &Path, format: &str) -> ChatModel {
    let model =
        ModelOptions { weights: WeightFormat::parse(format).unwrap(), ..ModelOptions::dense(&Device::Cpu, DType::F32) };
    ChatModel::load(dir, &LoadOptions { model, ..LoadOptions::default() }, None).unwrap()
}

fn korean_ids(m: &ChatModel, chars: usize) -> Vec<u32> {
    let text: String = std::fs::read_to_string(model_dir("data/korean/constitution.txt"))
        .unwrap()
        .replace("\r\n", "\n")
        .chars()
        .take(chars)
        .collect();
    m.encode_text(&text).unwrap()
}

fn mean_nll(m: &mut ChatModel, ids: &[u32]) -> f64 {
    perplexity(&mut m.model, ids, Window::new(256, 128).unwrap(), &AtomicBool::new(false)).unwrap().mean_nll
}

/// Relative perplexity change allowed per format: q8_0 and the half formats must be within
/// 0.5 % of f32 (llama.cpp reports about 0.1 % for q8_0 on 7B models), q4 formats within 5 %.
const FORMATS: [(&str, f64); 5] = [("q8_0", 0.005), ("bf16", 0.005), ("f16", 0.005), ("q4_k", 0.05), ("q4_0", 0.05)];

#[test]
fn quantized_perplexity_stays_close_to_f32() {
    let dir = model_dir("models/lab/target");
    let mut exact = load(&dir, "none");
    let ids = korean_ids(&exact, 2000);
    assert!(ids.len() > 300, "{} tokens", ids.len());
    let base = mean_nll(&mut exact, &ids);
    for (format, tolerance) in FORMATS {
        let mut m = load(&dir, format);
        assert_eq!(m.model.weight_format(), WeightFormat::parse(format).unwrap());
        let nll = mean_nll(&mut m, &ids);
        // Perplexity is exp(mean NLL): its relative change is exp(difference) - 1.
        let change = (nll - base).exp() - 1.0;
        eprintln!("{format}: perplexity {:.4} vs f32 {:.4} ({:+.3} %)", nll.exp(), base.exp(), change * 100.0);
        assert!(change.abs() < tolerance, "{format}: perplexity changed by {:.3} %", change * 100.0);
        if format == "bf16" {
            // These weights are stored in bf16: bf16 holds them exactly and its kernel keeps the
            // activations in f32, so it gives the f32 path's numbers up to the order of the f32
            // sums (its GEMM blocks them differently). Every other format rounds the weights.
            assert!(change.abs() < 1e-6, "bf16 of bf16-stored weights differs from f32 by {change:e}");
        } else {
            assert!(change != 0.0, "{format}: identical to f32, so the weights were not converted");
        }
    }
}

/// Share of positions whose most likely next token is the same as f32's, over a text the models
/// read teacher-forced (a free-running greedy comparison diverges at the first near-tie and then
/// compares unrelated texts; at the lab models' perplexity of ~110 near-ties are common).
fn top1_agreement(b: &mut ChatModel, ids: &[u32], want: &[u32]) -> f64 {
    b.model.reset();
    let logits = b.model.forward_all(ids).unwrap().to_vec2::<f32>().unwrap();
    let same = logits.iter().zip(want).filter(|(row, &w)| argmax(row) == w).count();
    same as f64 / want.len() as f64
}

#[test]
fn quantized_models_pick_the_same_next_token_as_f32() {
    // Measured: q8_0 97.7-99.6 %, bf16/f16 98.8-100 %, q4_0 76-97 % (76 % on the random-weight
    // fixture, whose logits are nearly flat). q4_k needs widths that are multiples of 256, which
    // these models lack, so it runs as its q8_0 fallback here.
    let needed = [("q8_0", 0.95), ("bf16", 0.97), ("f16", 0.97), ("q4_k", 0.95), ("q4_0", 0.70)];
    for rel in ["models/lab/target", "models/lab/chat", "fixtures/llama-tiny/target"] {
        let dir = model_dir(rel);
        let mut exact = load(&dir, "none");
        let ids = korean_ids(&exact, 600);
        let ids = &ids[..ids.len().min(256)];
        exact.model.reset();
        let want: Vec<u32> =
            exact.model.forward_all(ids).unwrap().to_vec2::<f32>().unwrap().iter().map(|r| argmax(r)).collect();
        for (format, at_least) in needed {
            let mut m = load(&dir, format);
            let rate = top1_agreement(&mut m, ids, &want);
            eprintln!("{rel} {format}: next token = f32's at {:.1} % of {} positions", rate * 100.0, want.len());
            assert!(rate >= at_least, "{rel} {format}: next token agrees with f32 at only {:.1} %", rate * 100.0);
        }
    }
}
