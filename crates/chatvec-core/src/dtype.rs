//! Element types of checkpoint tensors, decoding to f64 and correctly rounded encoding from f64.
//!
//! `half`'s own f64→bf16 conversion drops the low 32 mantissa bits before rounding and its
//! f64→f16 goes through f32 with round-to-nearest, so both round twice. We round once: f64→f32
//! with round-to-odd, then f32→bf16/f16 with `half`'s round-to-nearest-even, which is exact
//! whenever the intermediate format has at least two more bits than the final one (24 ≥ 11 + 2).

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// A tensor element type chatvec can compute with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// bfloat16.
    BF16,
    /// IEEE half.
    F16,
    /// IEEE single.
    F32,
    /// IEEE double.
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::BF16 | DType::F16 => 2,
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }

    /// The name used in safetensors headers.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::F32 => "F32",
            DType::F64 => "F64",
        }
    }

    /// The name used in `config.json` (`torch_dtype` / `dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }

    /// Parses a user or config spelling: `bf16`, `bfloat16`, `f16`, `float16`, `fp16`, `half`, ...
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s.to_ascii_lowercase().trim_start_matches("torch.") {
            "bf16" | "bfloat16" => DType::BF16,
            "f16" | "fp16" | "float16" | "half" => DType::F16,
            "f32" | "fp32" | "float32" | "float" => DType::F32,
            "f64" | "fp64" | "float64" | "double" => DType::F64,
            _ => return None,
        })
    }

    /// From a safetensors dtype; `None` for integer, bool and 8-bit float types.
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        Some(match d {
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F64 => DType::F64,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        })
    }
}

/// Decodes little-endian `bytes` of type `dtype` into `out` (which must hold exactly the elements).
pub fn decode(dtype: DType, bytes: &[u8], out: &mut [f64]) {
    debug_assert_eq!(bytes.len(), out.len() * dtype.size());
    match dtype {
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16) as f64;
            }
        }
        DType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64();
            }
        }
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64;
            }
        }
        DType::F64 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(b.try_into().expect("chunks of 8"));
            }
        }
    }
}

/// f64 → f32 rounding to odd: the truncated value, with its last bit set when inexact.
#[inline]
fn f64_to_f32_round_odd(x: f64) -> f32 {
    let f = x as f32;
    if x.is_nan() || f as f64 == x {
        return f;
    }
    let bits = f.to_bits();
    if bits & 1 == 1 {
        return f;
    }
    // `f` was rounded to an even neighbour; step one ulp towards x to the odd neighbour.
    let away = (f as f64).abs() > x.abs();
    f32::from_bits(if away { bits - 1 } else { bits + 1 })
}

/// `x` rounded once (to nearest, ties to even) to bf16 bits.
#[inline]
pub fn round_bf16(x: f64) -> u16 {
    bf16::from_f32(f64_to_f32_round_odd(x)).to_bits()
}

/// `x` rounded once (to nearest, ties to even) to f16 bits.
#[inline]
pub fn round_f16(x: f64) -> u16 {
    f16::from_f32(f64_to_f32_round_odd(x)).to_bits()
}

/// Encodes `vals` as little-endian `dtype`, each rounded once, into `out`.
pub fn encode(dtype: DType, vals: &[f64], out: &mut [u8]) {
    debug_assert_eq!(out.len(), vals.len() * dtype.size());
    match dtype {
        DType::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(vals) {
                o.copy_from_slice(&round_bf16(*v).to_le_bytes());
            }
        }
        DType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(vals) {
                o.copy_from_slice(&round_f16(*v).to_le_bytes());
            }
        }
        DType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(vals) {
                o.copy_from_slice(&(*v as f32).to_le_bytes());
            }
        }
        DType::F64 => {
            for (o, v) in out.chunks_exact_mut(8).zip(vals) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nearest bf16 by brute force: compare x with both bf16 neighbours in f64.
    fn nearest_bf16_reference(x: f64) -> u16 {
        let lo = bf16::from_f32(x as f32); // some neighbour; search around it
        let mut best = lo.to_bits();
        let mut best_err = f64::INFINITY;
        for d in -2i32..=2 {
            let cand = (lo.to_bits() as i32 + d) as u16;
            let v = bf16::from_bits(cand).to_f64();
            if !v.is_finite() {
                continue;
            }
            let err = (v - x).abs();
            if err < best_err || (err == best_err && cand & 1 == 0) {
                best = cand;
                best_err = err;
            }
        }
        best
    }

    #[test]
    fn bf16_rounding_is_single_and_ties_to_even() {
        // 1 + 2^-8 is a tie between 1 and 1+2^-7: goes to even (1.0).
        assert_eq!(round_bf16(1.0 + 2f64.powi(-8)), bf16::from_f32(1.0).to_bits());
        // Just above the tie, by less than f32 can hold: must round up (double rounding would not).
        let x = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
        assert_eq!(round_bf16(x), bf16::from_f32(1.0 + 2f32.powi(-7)).to_bits());
        assert_ne!(bf16::from_f64(x).to_bits(), round_bf16(x), "half double-rounds here");
        // A pseudo-random sweep against the brute-force nearest value.
        let mut s = 0x9E3779B97F4A7C15u64;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let mant = (s >> 12) as f64 / (1u64 << 52) as f64;
            let exp = ((s & 0x3f) as i32) - 32;
            let x = (1.0 + mant) * 2f64.powi(exp) * if s & 0x40 == 0 { 1.0 } else { -1.0 };
            assert_eq!(round_bf16(x), nearest_bf16_reference(x), "x = {x:e}");
        }
    }

    #[test]
    fn f16_rounding_is_single() {
        // f16 tie at 1 + 2^-11; just above it must round up.
        let x = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        assert_eq!(round_f16(x), f16::from_f64(1.0 + 2f64.powi(-10)).to_bits());
        assert_eq!(round_f16(1.0 + 2f64.powi(-11)), f16::from_f64(1.0).to_bits());
        assert!(f16::from_bits(round_f16(1e6)).is_infinite());
        assert!(f16::from_bits(round_f16(f64::NAN)).is_nan());
    }

    #[test]
    fn decode_encode_round_trip_every_bf16() {
        for bits in 0..=u16::MAX {
            let v = bf16::from_bits(bits);
            if v.is_nan() {
                continue;
            }
            let mut out = [0.0f64];
            decode(DType::BF16, &bits.to_le_bytes(), &mut out);
            assert_eq!(out[0], v.to_f64());
            let mut enc = [0u8; 2];
            encode(DType::BF16, &out, &mut enc);
            assert_eq!(u16::from_le_bytes(enc), bits);
        }
    }
}
