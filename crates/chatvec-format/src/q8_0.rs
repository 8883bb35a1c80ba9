//! ggml's q8_0 block rule, as llama.cpp's `quantize_row_q8_0_ref` (and candle's
//! `BlockQ8_0::from_float`) apply it: 32 values share the scale `d = max|x| / 127`, stored as
//! f16, and each is stored as `round(x / d)` (ties away from zero), computed with the unrounded
//! `1 / d`. One definition for the GGUF writer and for generation's activation quantization,
//! written branch-free so the callers' loops vectorize at every SIMD tier.

use crate::dispatch_simd;
use crate::simd::SimdTier;

/// Values per q8_0 block.
pub const Q8_0_BLOCK: usize = 32;

/// Quantizes one block (`x` and `q` of [`Q8_0_BLOCK`] elements); returns the f16 bits of `d`.
///
/// Spelled so that it vectorizes, with the values of the one-element-at-a-time rule (the test
/// below): the maximum is taken in 16 lanes, then halved as a tree (`f32::max` ignores NaN and is
/// associative, so the order does not change it); the quants are clamped and NaN zeroed as the
/// saturating `as i8` does (a subnormal `d` makes `1 / d` infinite), then converted without
/// Rust's per-element saturation checks. Written plainly, LLVM reduced the maximum one element at
/// a time and inserted the quants one byte at a time: half of an 8B model's load time, 4× slower.
#[inline(always)]
pub fn quantize_block(x: &[f32], q: &mut [i8]) -> u16 {
    let (x, q): (&[f32; Q8_0_BLOCK], &mut [i8; Q8_0_BLOCK]) =
        (x.try_into().expect("one q8_0 block"), q.try_into().expect("one q8_0 block"));
    let mut lanes = [0f32; 16];
    for half in x.chunks_exact(16) {
        lanes.iter_mut().zip(half).for_each(|(m, v)| *m = m.max(v.abs()));
    }
    let mut width = 8;
    while width > 0 {
        (0..width).for_each(|i| lanes[i] = lanes[i].max(lanes[i + width]));
        width /= 2;
    }
    let d = lanes[0] / 127.0;
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut wide = [0i32; Q8_0_BLOCK];
    wide.iter_mut().zip(x).for_each(|(w, v)| {
        let r = round_half_away(v * inv).clamp(-128.0, 127.0);
        let r = if r.is_nan() { 0.0 } else { r };
        // SAFETY: `r` is a whole number in -128..=127, so it converts exactly.
        *w = unsafe { r.to_int_unchecked::<i32>() };
    });
    q.iter_mut().zip(wide).for_each(|(q, w)| *q = w as i8);
    half::f16::from_f32(d).to_bits()
}

/// `values` (whole blocks) as ggml q8_0 blocks in `out`, 34 bytes a block: the f16 scale, then
/// the 32 quants, at SIMD tier `tier` (one the CPU supports). The GGUF writer's q8_0 and
/// generation's q8_0 at load both go through it.
pub fn quantize_row_into(tier: SimdTier, values: &[f32], out: &mut [u8]) {
    dispatch_simd!(tier, quantize_row_lanes, (), (values: &[f32], out: &mut [u8]))
}

#[inline(always)]
fn quantize_row_lanes(values: &[f32], out: &mut [u8]) {
    for (o, x) in out.chunks_exact_mut(34).zip(values.chunks_exact(Q8_0_BLOCK)) {
        let mut q = [0i8; Q8_0_BLOCK];
        let d = quantize_block(x, &mut q);
        o[..2].copy_from_slice(&d.to_le_bytes());
        o[2..].iter_mut().zip(q).for_each(|(o, q)| *o = q as u8);
    }
}

/// `f32::round` (ties away from zero, as C's `roundf`) from a truncation, which every tier has
/// as one instruction; exact for every f32.
#[inline(always)]
fn round_half_away(v: f32) -> f32 {
    let t = v.trunc();
    t + if (v - t).abs() >= 0.5 { 1f32 } else { 0.0 }.copysign(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Bits;

    /// The rule as llama.cpp's `quantize_row_q8_0_ref` writes it, one element at a time.
    fn reference_block(x: &[f32], q: &mut [i8]) -> u16 {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        q.iter_mut().zip(x).for_each(|(q, v)| *q = (v * inv).round() as i8);
        half::f16::from_f32(d).to_bits()
    }

    #[test]
    fn a_block_is_quantized_as_the_one_element_at_a_time_rule() {
        let mut g = Bits(0x0ddb_a11c_afe5_eed5);
        let specials = [f32::NAN, f32::INFINITY, -f32::INFINITY, 0.0, -0.0, 1e-40, f32::MAX, -f32::MAX];
        for round in 0..20_000 {
            let scale = f32::from_bits(0x2000_0000 + (g.next_u64() as u32 % 0x3f00_0000));
            let mut x: Vec<f32> =
                (0..32).map(|_| (g.next_u64() as u32 as f32 / u32::MAX as f32 - 0.5) * scale).collect();
            if round % 7 == 0 {
                x[(g.next_u64() % 32) as usize] = specials[round / 7 % specials.len()];
            }
            if round % 11 == 0 {
                // A subnormal scale: 1 / d overflows to infinity and the quants saturate.
                x.iter_mut().for_each(|v| *v *= 1e-38);
            }
            let (mut fast, mut slow) = ([0i8; 32], [0i8; 32]);
            assert_eq!(quantize_block(&x, &mut fast), reference_block(&x, &mut slow), "{x:?}");
            assert_eq!(fast, slow, "{x:?}");
        }
    }

    #[test]
    fn rounding_is_roundf_on_halves_and_random_values() {
        for v in [0.5f32, -0.5, 1.5, 2.5, -2.5, 0.49999997, 126.5, -127.0, 8388607.5, 1e30, -0.0] {
            assert_eq!(round_half_away(v).to_bits(), v.round().to_bits(), "{v}");
        }
        let mut g = Bits(0x1234_5678_9abc_def1);
        for _ in 0..1_000_000 {
            let v = f32::from_bits(g.next_u64() as u32);
            if v.is_finite() {
                assert_eq!(round_half_away(v), v.round(), "{v:e}");
            }
        }
    }
}
