//! Shared helpers for the core's integration tests: fixture paths, reading outputs, and an
//! independent float64 reference.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use chatvec_format::ResolvedModel;
use chatvec_hub::resolve_model;
use chatvec_merge::{OutputOptions, PlanOptions};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llama-tiny").join(name)
}

pub fn model(path: &Path) -> ResolvedModel {
    resolve_model(path.to_str().unwrap(), None).unwrap()
}

pub fn out_opts(path: &Path) -> OutputOptions {
    OutputOptions { path: path.to_path_buf(), force: false, shard_size: 5_000_000_000, dry_run: false }
}

pub fn no_cancel() -> AtomicBool {
    AtomicBool::new(false)
}

pub fn opts() -> PlanOptions {
    PlanOptions::default()
}

/// A tensor read back: dtype name, shape, raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl Raw {
    /// Values as f64 (bf16/f16/f32/f64 only).
    pub fn values(&self) -> Vec<f64> {
        match self.dtype.as_str() {
            "BF16" => self.bytes.chunks(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
            "F16" => self.bytes.chunks(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
            "F32" => self.bytes.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
            "F64" => self.bytes.chunks(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
            d => panic!("no values for {d}"),
        }
    }
}

/// Every tensor of every safetensors file in `dir` (or of the single file `dir`), by name.
pub fn read_tensors(path: &Path) -> BTreeMap<String, Raw> {
    let files: Vec<PathBuf> = if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect()
    };
    let mut out = BTreeMap::new();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let raw =
                Raw { dtype: format!("{:?}", view.dtype()), shape: view.shape().to_vec(), bytes: view.data().to_vec() };
            assert!(out.insert(name.clone(), raw).is_none(), "{name} twice");
        }
    }
    out
}

/// Nearest bf16 to `x`, ties to even, found by comparing neighbours in f64 (independent of the
/// crate's rounding code).
pub fn bf16_nearest(x: f64) -> u16 {
    if x == 0.0 {
        return if x.is_sign_negative() { 0x8000 } else { 0 };
    }
    let guess = half::bf16::from_f32(x as f32).to_bits();
    let mut best = (f64::INFINITY, guess);
    for d in -2i32..=2 {
        let c = (guess as i32 + d) as u16;
        let v = half::bf16::from_bits(c).to_f64();
        if v.is_nan() {
            continue;
        }
        let err = (v - x).abs();
        if err < best.0 || (err == best.0 && c & 1 == 0) {
            best = (err, c);
        }
    }
    best.1
}

/// Nearest f16 to `x`, ties to even, by comparing candidate neighbours in f64.
pub fn f16_nearest(x: f64) -> u16 {
    if x == 0.0 {
        return if x.is_sign_negative() { 0x8000 } else { 0 };
    }
    let guess = half::f16::from_f64(x).to_bits() as i32;
    let mut best = (f64::INFINITY, 0u16);
    let cands = (-2..=2).map(|d| guess + d).chain([0, 1, 0x8000, 0x8001]);
    for c in cands.filter(|c| (0..=0xffff).contains(c)).map(|c| c as u16) {
        let v = half::f16::from_bits(c).to_f64();
        if v.is_nan() || v.is_infinite() {
            continue;
        }
        let err = (v - x).abs();
        if err < best.0 || (err == best.0 && c & 1 == 0) {
            best = (err, c);
        }
    }
    best.1
}

/// Encodes f64 values as bf16 bytes with [`bf16_nearest`].
pub fn bf16_bytes(vals: &[f64]) -> Vec<u8> {
    vals.iter().flat_map(|v| bf16_nearest(*v).to_le_bytes()).collect()
}

/// SHA-256-free fingerprint of a directory tree: every file's path, length and bytes.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// Copies a directory (files only, one level deep).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            let dst = to.join(p.file_name().unwrap());
            std::fs::copy(&p, &dst).unwrap();
            let mut perm = std::fs::metadata(&dst).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&dst, perm).unwrap();
        }
    }
}

/// Writes tensors (values given as f64, stored as `dtype`) to `dir/model.safetensors` with the
/// safetensors crate, plus `config`.
pub fn write_model(dir: &Path, tensors: &BTreeMap<String, Raw>, config: &serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, r)| {
            let dt = match r.dtype.as_str() {
                "BF16" => safetensors::Dtype::BF16,
                "F16" => safetensors::Dtype::F16,
                "F32" => safetensors::Dtype::F32,
                "I64" => safetensors::Dtype::I64,
                d => panic!("{d}"),
            };
            (n.clone(), safetensors::tensor::TensorView::new(dt, r.shape.clone(), &r.bytes).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(config).unwrap()).unwrap();
}

pub fn config_of(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}
