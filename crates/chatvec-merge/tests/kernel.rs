//! The vectorized merge kernel against a scalar float64 reference on random bit patterns
//! (subnormals, ±0, NaN, Inf and extreme exponents included), and the NaN/Inf policy.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chatvec_format::{DType, NoProgress};
use chatvec_merge::{ops, MergeJob, OutputOptions, PlanOptions};
use common::*;
use half::{bf16, f16};

/// xorshift64: repeatable pseudo-random bits.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A 16-bit pattern: uniform (so NaN, Inf and subnormals of both formats appear), near 1 (the
    /// typical weight), at the largest exponents (so sums overflow) or one of the special values.
    fn bits16(&mut self) -> u16 {
        let r = self.next();
        let low = (r >> 8) as u16;
        match r & 7 {
            0 => [0x0000, 0x8000, 0x0001, 0x8001, 0x7f80, 0xff80, 0x7fc0, 0x7f7f, 0x7c00, 0x7bff, 0x03ff]
                [(low % 11) as usize],
            1 | 2 => low,
            3 => 0x7f00 | (low & 0x80ff), // bf16 exponents 254..255 (f16: NaN/Inf region)
            4 => 0x7800 | (low & 0x83ff), // f16 exponents 30..31
            _ => 0x3c00 | (low & 0x83ff), // around 1 in both formats
        }
    }
}

/// The fixture triple with every float tensor's bytes replaced by random 16-bit patterns.
fn random_triple(dir: &Path, seed: u64) -> [PathBuf; 3] {
    let mut rng = Rng(seed);
    ["base", "chat", "target"].map(|name| {
        let mut tensors = read_tensors(&fixture(name));
        for raw in tensors.values_mut().filter(|r| r.dtype == "BF16") {
            raw.bytes = (0..raw.bytes.len() / 2).flat_map(|_| rng.bits16().to_le_bytes()).collect();
        }
        let out = dir.join(name);
        write_model(&out, &tensors, &config_of(&fixture(name)));
        out
    })
}

/// The correctly rounded encoding of `x`, found without the crate's rounding code: the nearest
/// value by search, infinity from the overflow threshold on, and NaN as any NaN.
fn reference_bits(dtype: DType, x: f64) -> Option<u64> {
    if x.is_nan() {
        return None;
    }
    let sign = |inf: u64, shift: u32| if x < 0.0 { inf | (1 << shift) } else { inf };
    Some(match dtype {
        DType::BF16 if x.abs() >= (2.0 - 2f64.powi(-8)) * 2f64.powi(127) => sign(0x7f80, 15),
        DType::BF16 => bf16_nearest(x) as u64,
        DType::F16 if x.abs() >= 65520.0 => sign(0x7c00, 15),
        // A result that rounds to zero keeps the sign of x (the search may pick either zero).
        DType::F16 => (f16_nearest(x) & if x < 0.0 { 0xffff } else { 0x7fff }) as u64,
        DType::F32 => (x as f32).to_bits() as u64,
        DType::F64 => x.to_bits(),
    })
}

fn value(dtype: &str, b: &[u8]) -> (f64, u64) {
    match dtype {
        "BF16" => {
            let h = u16::from_le_bytes([b[0], b[1]]);
            (bf16::from_bits(h).to_f64(), h as u64)
        }
        "F16" => {
            let h = u16::from_le_bytes([b[0], b[1]]);
            (f16::from_bits(h).to_f64(), h as u64)
        }
        "F32" => {
            let f = f32::from_le_bytes(b.try_into().unwrap());
            (f as f64, f.to_bits() as u64)
        }
        d => panic!("{d}"),
    }
}

/// Checks every element of every merged tensor of `out` against the scalar reference.
fn assert_matches_reference(out: &Path, triple: &[PathBuf; 3], ratio: f64, dtype: DType) -> usize {
    let [b, c, t] = triple.clone().map(|p| read_tensors(&p));
    let got = read_tensors(out);
    let mut checked = 0;
    for (name, g) in &got {
        let w = dtype.size();
        assert_eq!(g.dtype, dtype.safetensors_name(), "{name}");
        for i in 0..g.bytes.len() / w {
            let el = |r: &BTreeMap<String, Raw>| value("BF16", &r[name].bytes[i * 2..i * 2 + 2]).0;
            let x = el(&t) + ratio * (el(&c) - el(&b));
            let (v, bits) = value(&g.dtype, &g.bytes[i * w..(i + 1) * w]);
            match reference_bits(dtype, x) {
                None => assert!(v.is_nan(), "{name}[{i}]: expected NaN, got {v:e}"),
                Some(want) => assert_eq!(bits, want, "{dtype} {name}[{i}]: {x:e} → {v:e}"),
            }
            checked += 1;
        }
    }
    checked
}

fn allow_nonfinite(dtype: Option<DType>) -> PlanOptions {
    PlanOptions { allow_nonfinite: true, dtype, ..opts() }
}

fn job(triple: &[PathBuf; 3], out: &Path, ratio: f64, plan: PlanOptions) -> MergeJob {
    MergeJob {
        base: model(&triple[0]),
        chat: model(&triple[1]),
        target: model(&triple[2]),
        ratio,
        plan,
        output: out_opts(out),
    }
}

#[test]
fn random_bit_patterns_merge_like_the_scalar_float64_reference() {
    let dir = tempfile::tempdir().unwrap();
    let triple = random_triple(dir.path(), 0x5DEE_CE66_D1CE_F00D);
    // Several ratios in one pass (each output from the same blocks), bf16 as stored.
    let ratios = [1.0, 0.3, -0.5, 0.0];
    let outputs: Vec<(f64, OutputOptions)> =
        ratios.iter().map(|&r| (r, out_opts(&dir.path().join(format!("bf16-{r}"))))).collect();
    let j = job(&triple, &outputs[0].1.path, 1.0, allow_nonfinite(None));
    let summaries = ops::merge_ratios(&j, &outputs, &NoProgress, &no_cancel()).unwrap();
    assert_eq!(summaries.len(), ratios.len());
    for (ratio, out) in &outputs {
        let n = assert_matches_reference(&out.path, &triple, *ratio, DType::BF16);
        assert!(n > 300_000, "{n} elements checked");
    }
    assert!(summaries[0].warnings.iter().any(|w| w.contains("NaN/Inf")), "{:?}", summaries[0].warnings);
    // Rounding into the other output types.
    for dtype in [DType::F16, DType::F32] {
        let out = dir.path().join(format!("{dtype}"));
        ops::merge(&job(&triple, &out, 0.7, allow_nonfinite(Some(dtype))), &NoProgress, &no_cancel()).unwrap();
        assert_matches_reference(&out, &triple, 0.7, dtype);
    }
}

/// The fixture triple, with `edit` applied to the named model's tensor (as f64 values).
fn edited_triple(dir: &Path, model_name: &str, tensor: &str, edit: impl Fn(&mut [f64])) -> [PathBuf; 3] {
    ["base", "chat", "target"].map(|name| {
        let mut tensors = read_tensors(&fixture(name));
        if name == model_name {
            let raw = tensors.get_mut(tensor).unwrap();
            let mut vals = raw.values();
            edit(&mut vals);
            raw.bytes = vals.iter().flat_map(|v| bf16::from_f64(*v).to_bits().to_le_bytes()).collect();
        }
        let out = dir.join(name);
        write_model(&out, &tensors, &config_of(&fixture(name)));
        out
    })
}

const UP: &str = "model.layers.0.mlp.up_proj.weight";

#[test]
fn nan_in_an_input_is_refused_naming_the_tensor_and_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let triple = edited_triple(dir.path(), "chat", UP, |v| v[1234] = f64::NAN);
    let out = dir.path().join("out");
    let err = ops::merge(&job(&triple, &out, 0.5, opts()), &NoProgress, &no_cancel()).unwrap_err().to_string();
    assert!(err.contains(UP) && err.contains("chat model") && err.contains("--allow-nonfinite"), "{err}");
    assert!(!err.contains("created by the merge"), "{err}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3, "no temporary output left");
}

#[test]
fn overflow_made_by_the_merge_is_refused_as_created_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let big = 3.0e38; // finite in bf16; target + (chat − base) is not
    let t = edited_triple(dir.path(), "target", UP, |v| v[7] = big);
    let c = edited_triple(&dir.path().join("c"), "chat", UP, |v| v[7] = big);
    let triple = [t[0].clone(), c[1].clone(), t[2].clone()];
    let err = ops::merge(&job(&triple, &dir.path().join("out"), 1.0, opts()), &NoProgress, &no_cancel())
        .unwrap_err()
        .to_string();
    assert!(err.contains(UP) && err.contains("1 NaN/Inf") && err.contains("created by the merge"), "{err}");
    assert!(!err.contains("from the"), "no input had any: {err}");
}

#[test]
fn allow_nonfinite_writes_them_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let triple = edited_triple(dir.path(), "base", UP, |v| v[99] = f64::INFINITY);
    let out = dir.path().join("out");
    let s = ops::merge(&job(&triple, &out, 1.0, allow_nonfinite(None)), &NoProgress, &no_cancel()).unwrap();
    let warning = s.warnings.iter().find(|w| w.contains(UP)).expect("a warning names the tensor");
    assert!(warning.contains("1 NaN/Inf") && warning.contains("base model"), "{warning}");
    let v = read_tensors(&out)[UP].values();
    assert!(v[99].is_infinite() && v[99] < 0.0, "T + (C − ∞) = −∞, got {}", v[99]);
    assert_eq!(v.iter().filter(|x| !x.is_finite()).count(), 1);
}

#[test]
fn nan_in_a_copied_target_tensor_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    let triple = edited_triple(dir.path(), "target", UP, |v| v[0] = f64::NAN);
    let plan = PlanOptions { selection: chatvec_merge::Selection::new(None, Some("mlp")).unwrap(), ..opts() };
    let err = ops::merge(&job(&triple, &dir.path().join("out"), 1.0, plan), &NoProgress, &no_cancel())
        .unwrap_err()
        .to_string();
    assert!(err.contains(UP) && err.contains("target model"), "{err}");
}
