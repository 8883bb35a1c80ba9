//! Element types of checkpoint tensors, decoding to f64 and correctly rounded encoding from f64.
//!
//! `half`'s own f64→bf16 conversion drops the low 32 mantissa bits before rounding and its
//! f64→f16 goes through f32 with round-to-nearest, so both round twice. We round once: f64→f32
//! with round-to-odd, then f32→bf16/f16 with `half`'s round-to-nearest-even, which is exact
//! whenever the intermediate format has at least two more bits than the final one (24 ≥ 11 + 2).

use serde::{Deserialize, Serialize};

use crate::dispatch_simd;
use crate::simd::SimdTier;

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
/// Every conversion is exact and branch-free, so the loops vectorize.
pub fn decode(dtype: DType, bytes: &[u8], out: &mut [f64]) {
    decode_with(SimdTier::active(), dtype, bytes, out)
}

/// [`decode`] at a given tier (one the CPU supports), for the tests and benches of each tier.
pub fn decode_with(tier: SimdTier, dtype: DType, bytes: &[u8], out: &mut [f64]) {
    dispatch_simd!(tier, decode_lanes, (), (dtype: DType, bytes: &[u8], out: &mut [f64]))
}

#[inline(always)]
fn decode_lanes(dtype: DType, bytes: &[u8], out: &mut [f64]) {
    debug_assert_eq!(bytes.len(), out.len() * dtype.size());
    match dtype {
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16_to_f64(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        DType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_to_f64(u16::from_le_bytes([b[0], b[1]]));
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

/// Little-endian `bytes` of type `dtype` widened to f32 in `out` at a given tier (one the CPU
/// supports), as torch's `.to(torch.float32)` (f64 rounds to nearest): the GGUF writer's input
/// and generation's rows converted at load.
pub fn decode_f32_with(tier: SimdTier, dtype: DType, bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if dtype == DType::F16 && tier >= SimdTier::Avx2 {
        return f16c::f16_to_f32(bytes, out);
    }
    dispatch_simd!(tier, decode_f32_lanes, (), (dtype: DType, bytes: &[u8], out: &mut [f32]))
}

#[inline(always)]
fn decode_f32_lanes(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        DType::F16 => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::F64 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32;
            }
        }
    }
}

/// F16C's eight-at-a-time f16 widening, for the AVX2 and AVX-512 tiers of [`decode_f32_with`].
#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::*;

    pub(super) fn f16_to_f32(bytes: &[u8], out: &mut [f32]) {
        assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c"));
        // SAFETY: the CPU has the features (checked above).
        unsafe { f16_to_f32_f16c(bytes, out) }
    }

    #[target_feature(enable = "avx2,f16c")]
    fn f16_to_f32_f16c(bytes: &[u8], out: &mut [f32]) {
        let n = out.len().min(bytes.len() / 2);
        let whole = n / 8 * 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: elements i..i+8 of both buffers exist (i + 8 ≤ n).
            unsafe {
                let h = _mm_loadu_si128(bytes.as_ptr().add(2 * i) as *const __m128i);
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
        }
        for i in whole..n {
            out[i] = half::f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32();
        }
    }
}

/// The value of bf16 bits (exact: bf16 is the top half of an f32).
#[inline(always)]
pub fn bf16_to_f64(h: u16) -> f64 {
    f32::from_bits((h as u32) << 16) as f64
}

/// The value of f16 bits, built from its fields with selects instead of `half`'s branches (the
/// same bits as `half::f16::to_f64`, NaN payloads included).
#[inline(always)]
pub fn f16_to_f64(h: u16) -> f64 {
    let h = h as u64;
    let sign = (h & 0x8000) << 48;
    let exp = (h >> 10) & 0x1f;
    let man = h & 0x3ff;
    let normal = ((exp + (1023 - 15)) << 52) | (man << 42);
    let subnormal = (man as i32 as f64 * TWO_POW_M24).to_bits();
    let special = 0x7ff0_0000_0000_0000 | (man << 42) | (((man != 0) as u64) << 51);
    let bits = if exp == 0 {
        subnormal
    } else if exp == 0x1f {
        special
    } else {
        normal
    };
    f64::from_bits(sign | bits)
}

const TWO_POW_M24: f64 = 1.0 / (1u64 << 24) as f64;
const F64_ABS: u64 = 0x7fff_ffff_ffff_ffff;
/// The exponent bits of an f64: all set means NaN or infinite.
pub const F64_INF: u64 = 0x7ff0_0000_0000_0000;

/// `x` rounded once (to nearest, ties to even) to bf16 bits, branch-free.
///
/// Normal results: round the f64 bits at bit 45 with the usual `+ (half − 1) + lsb` carry, which
/// also carries into the exponent (and to infinity). Subnormal results: adding 2^-81 (whose ulp is
/// bf16's smallest subnormal, 2^-133) makes the FPU round `|x|` to a multiple of that ulp. NaN
/// keeps its sign and top payload bits and is made quiet (as `half` does after an f64→f32 cast).
#[inline(always)]
pub fn round_bf16(x: f64) -> u16 {
    round_to_16(x, &BF16_FIELDS)
}

/// `x` rounded once (to nearest, ties to even) to f16 bits, branch-free (as [`round_bf16`], with
/// f16's fields: rounding at bit 42, subnormal ulp 2^-24 from adding 2^28).
#[inline(always)]
pub fn round_f16(x: f64) -> u16 {
    round_to_16(x, &F16_FIELDS)
}

/// What [`round_to_16`] needs to know of a 16-bit float format.
struct Fields16 {
    /// f64 mantissa bits dropped (52 − the format's mantissa bits).
    shift: u32,
    /// The f64 exponent bias minus the format's, in the format's exponent position.
    rebias: u64,
    /// Smallest normal value.
    min_normal: f64,
    /// From this magnitude on, the result is infinite whatever the rounding.
    overflow: f64,
    /// Adding it to a value below `min_normal` rounds to the format's subnormal spacing.
    subnormal_magic: f64,
    /// Exponent bits all set (infinity), and the quiet-NaN bit.
    inf: u16,
    quiet: u16,
}

const BF16_FIELDS: Fields16 = Fields16 {
    shift: 45,
    rebias: (1023 - 127) << 7,
    min_normal: 1.0 / (1u128 << 126) as f64,
    overflow: (1u128 << 127) as f64 * 2.0,
    subnormal_magic: 1.0 / (1u128 << 81) as f64,
    inf: 0x7f80,
    quiet: 0x0040,
};

const F16_FIELDS: Fields16 = Fields16 {
    shift: 42,
    rebias: (1023 - 15) << 10,
    min_normal: 1.0 / (1u64 << 14) as f64,
    overflow: (1u64 << 16) as f64,
    subnormal_magic: (1u64 << 28) as f64,
    inf: 0x7c00,
    quiet: 0x0200,
};

/// The shared body of [`round_bf16`] and [`round_f16`]. Comparisons are made on the f64 magnitude
/// (one vector compare per lane; false for NaN, which the last select handles).
#[inline(always)]
fn round_to_16(x: f64, f: &Fields16) -> u16 {
    let bits = x.to_bits();
    let abs_bits = bits & F64_ABS;
    let abs = f64::from_bits(abs_bits);
    let sign = ((bits >> 48) & 0x8000) as u16;
    let lsb = (abs_bits >> f.shift) & 1;
    let normal = ((abs_bits + ((1u64 << (f.shift - 1)) - 1) + lsb) >> f.shift).wrapping_sub(f.rebias) as u16;
    let subnormal = (abs + f.subnormal_magic).to_bits().wrapping_sub(f.subnormal_magic.to_bits()) as u16;
    let nan = f.inf | f.quiet | ((bits >> f.shift) as u16 & (f.quiet * 2 - 1));
    let r = if abs < f.min_normal { subnormal } else { normal };
    let r = if abs >= f.overflow { f.inf } else { r };
    sign | if abs.is_nan() { nan } else { r }
}

/// Encodes `vals` as little-endian `dtype`, each rounded once, into `out`; returns how many of
/// the written values are NaN or infinite (counted in the same pass, so checking costs nothing).
pub fn encode(dtype: DType, vals: &[f64], out: &mut [u8]) -> usize {
    encode_with(SimdTier::active(), dtype, vals, out)
}

/// [`encode`] at a given tier (one the CPU supports).
pub fn encode_with(tier: SimdTier, dtype: DType, vals: &[f64], out: &mut [u8]) -> usize {
    dispatch_simd!(tier, encode_lanes, usize, (dtype: DType, vals: &[f64], out: &mut [u8]))
}

#[inline(always)]
fn encode_lanes(dtype: DType, vals: &[f64], out: &mut [u8]) -> usize {
    debug_assert_eq!(out.len(), vals.len() * dtype.size());
    let mut nonfinite = 0;
    match dtype {
        DType::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(vals) {
                let h = round_bf16(*v);
                nonfinite += (h & 0x7f80 == 0x7f80) as usize;
                o.copy_from_slice(&h.to_le_bytes());
            }
        }
        DType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(vals) {
                let h = round_f16(*v);
                nonfinite += (h & 0x7c00 == 0x7c00) as usize;
                o.copy_from_slice(&h.to_le_bytes());
            }
        }
        DType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(vals) {
                let f = *v as f32;
                nonfinite += (f.to_bits() & 0x7f80_0000 == 0x7f80_0000) as usize;
                o.copy_from_slice(&f.to_le_bytes());
            }
        }
        DType::F64 => {
            for (o, v) in out.chunks_exact_mut(8).zip(vals) {
                nonfinite += (v.to_bits() & F64_INF == F64_INF) as usize;
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    nonfinite
}

/// How many of `vals` are NaN or infinite.
pub fn count_nonfinite(vals: &[f64]) -> usize {
    vals.iter().map(|v| (v.to_bits() & F64_INF == F64_INF) as usize).sum()
}

/// How many little-endian `dtype` values in `bytes` are NaN or infinite (for copied tensors).
pub fn count_nonfinite_bytes(dtype: DType, bytes: &[u8]) -> usize {
    match dtype {
        DType::BF16 => {
            bytes.chunks_exact(2).map(|b| (u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80) as usize).sum()
        }
        DType::F16 => {
            bytes.chunks_exact(2).map(|b| (u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00) as usize).sum()
        }
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000) as usize)
            .sum(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|b| (u64::from_le_bytes(b.try_into().expect("chunks of 8")) & F64_INF == F64_INF) as usize)
            .sum(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use half::{bf16, f16};

    /// f64 → f32 rounding to odd: the truncated value, with its last bit set when inexact.
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

    /// The scalar reference: round to odd into f32 (24 bits ≥ 11 + 2, so no double rounding),
    /// then `half`'s round-to-nearest-even.
    fn bf16_reference(x: f64) -> u16 {
        bf16::from_f32(f64_to_f32_round_odd(x)).to_bits()
    }

    fn f16_reference(x: f64) -> u16 {
        f16::from_f32(f64_to_f32_round_odd(x)).to_bits()
    }

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

    use crate::testing::Bits;

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
    fn branch_free_rounding_equals_the_round_to_odd_reference_on_random_bit_patterns() {
        let mut g = Bits(0x2545_F491_4F6C_DD1D);
        let vals: Vec<f64> = (0..2_000_000).map(|_| f64::from_bits(g.f64_bits())).collect();
        for dtype in [DType::BF16, DType::F16] {
            // Through every tier this CPU runs (each compiled from the same source).
            for tier in SimdTier::available() {
                let mut simd = vec![0u8; vals.len() * 2];
                let nonfinite = encode_with(tier, dtype, &vals, &mut simd);
                let mut counted = 0;
                for (i, x) in vals.iter().enumerate() {
                    let want = if dtype == DType::BF16 { bf16_reference(*x) } else { f16_reference(*x) };
                    let got = u16::from_le_bytes([simd[2 * i], simd[2 * i + 1]]);
                    assert_eq!(got, want, "{tier} {dtype} of {x:e} ({:#018x})", x.to_bits());
                    counted += (got & want_inf(dtype) == want_inf(dtype)) as usize;
                }
                assert_eq!(nonfinite, counted, "{tier} {dtype}");
            }
        }
    }

    fn want_inf(dtype: DType) -> u16 {
        if dtype == DType::BF16 {
            0x7f80
        } else {
            0x7c00
        }
    }

    #[test]
    fn every_tie_and_its_neighbours_round_like_the_reference() {
        // Midpoints between consecutive values (subnormal, normal, up to the overflow threshold)
        // and the f64 values one ulp either side of them.
        for bits in 0..0x7f80u16 {
            let (lo, hi) = (bf16::from_bits(bits).to_f64(), bf16::from_bits(bits + 1).to_f64());
            let mid = lo + (hi - lo) / 2.0;
            for x in [mid, f64::from_bits(mid.to_bits() - 1), f64::from_bits(mid.to_bits() + 1), lo, hi] {
                assert_eq!(round_bf16(x), bf16_reference(x), "bf16 of {x:e}");
                assert_eq!(round_bf16(-x), bf16_reference(-x), "bf16 of {:e}", -x);
            }
        }
        for bits in 0..0x7c00u16 {
            let (lo, hi) = (f16::from_bits(bits).to_f64(), f16::from_bits(bits + 1).to_f64());
            let mid = lo + (hi - lo) / 2.0;
            for x in [mid, f64::from_bits(mid.to_bits() - 1), f64::from_bits(mid.to_bits() + 1), lo, hi] {
                assert_eq!(round_f16(x), f16_reference(x), "f16 of {x:e}");
                assert_eq!(round_f16(-x), f16_reference(-x), "f16 of {:e}", -x);
            }
        }
    }

    #[test]
    fn decoding_equals_half_for_every_16_bit_pattern() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
        for dtype in [DType::BF16, DType::F16] {
            for tier in SimdTier::available() {
                let mut simd = vec![0f64; 65536];
                decode_with(tier, dtype, &bytes, &mut simd);
                for bits in 0..=u16::MAX {
                    let want = match dtype {
                        DType::BF16 => bf16::from_bits(bits).to_f64(),
                        _ => f16::from_bits(bits).to_f64(),
                    };
                    assert_eq!(simd[bits as usize].to_bits(), want.to_bits(), "{tier} {dtype} {bits:#06x}");
                }
            }
        }
    }

    #[test]
    fn decode_encode_round_trip_every_bf16_and_f16() {
        for dtype in [DType::BF16, DType::F16] {
            for bits in 0..=u16::MAX {
                let mut out = [0.0f64];
                decode(dtype, &bits.to_le_bytes(), &mut out);
                let mut enc = [0u8; 2];
                let nonfinite = encode(dtype, &out, &mut enc);
                assert_eq!(nonfinite, !out[0].is_finite() as usize);
                if !out[0].is_nan() {
                    assert_eq!(u16::from_le_bytes(enc), bits, "{dtype} {bits:#06x}");
                }
            }
        }
    }

    #[test]
    fn nonfinite_counts_agree_between_values_and_bytes() {
        let vals = [1.0, f64::NAN, f64::INFINITY, -0.0, f64::NEG_INFINITY, 1e300, f64::MIN_POSITIVE];
        assert_eq!(count_nonfinite(&vals), 3);
        for dtype in [DType::BF16, DType::F16, DType::F32, DType::F64] {
            let mut bytes = vec![0u8; vals.len() * dtype.size()];
            let written = encode(dtype, &vals, &mut bytes);
            // 1e300 overflows every type but f64.
            assert_eq!(written, if dtype == DType::F64 { 3 } else { 4 }, "{dtype}");
            assert_eq!(count_nonfinite_bytes(dtype, &bytes), written, "{dtype}");
        }
    }
}
