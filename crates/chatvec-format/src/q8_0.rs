//! ggml's q8_0 block rule, as llama.cpp's `quantize_row_q8_0_ref` (and candle's
//! `BlockQ8_0::from_float`) apply it: 32 values share the scale `d = max|x| / 127`, stored as
//! f16, and each is stored as `round(x / d)` (ties away from zero), computed with the unrounded
//! `1 / d`. One definition for the GGUF writer and for generation's activation quantization,
//! written branch-free so the callers' loops vectorize at every SIMD tier.

/// Values per q8_0 block.
pub const Q8_0_BLOCK: usize = 32;

/// Quantizes one block (`x` and `q` of [`Q8_0_BLOCK`] elements); returns the f16 bits of `d`.
#[inline(always)]
pub fn quantize_block(x: &[f32], q: &mut [i8]) -> u16 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in q.iter_mut().zip(x) {
        *q = round_half_away(v * inv) as i8;
    }
    half::f16::from_f32(d).to_bits()
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
