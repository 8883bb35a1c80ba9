//! The merge's one-pass kernel over little-endian bytes: decode exactly, apply the paper's
//! formula ([`chat_vector`]) in f64, round once, with no f64 scratch buffer. The bf16 ratio-1
//! case runs in f32 lanes proven exact ([`crate::f32_lanes`]).

use chatvec_format::dtype::{bf16_to_f64, f16_to_f64, round_bf16, round_f16, DType, F64_INF};
use chatvec_format::{dispatch_simd, SimdTier};

use crate::f32_lanes;
use crate::kernel::chat_vector;

/// [`chat_vector`] from and to little-endian bytes of one `dtype`: `out = round(target +
/// ratio·(chat − base))`, each element decoded exactly, computed in f64 and rounded once, the same
/// bits as [`decode`], [`chat_vector`] and [`encode`] one after the other. The merge's common
/// case (one vector, every input in the output's dtype) in one pass through registers, with no
/// f64 scratch; returns how many results are NaN or infinite.
pub(crate) fn chat_vector_bytes(
    tier: SimdTier,
    dtype: DType,
    target: &[u8],
    chat: &[u8],
    base: &[u8],
    ratio: f64,
    out: &mut [u8],
) -> usize {
    // The most common case, in f32 lanes proven exact element by element.
    if dtype == DType::BF16 && ratio == 1.0 {
        return dispatch_simd!(
            tier,
            f32_lanes::unit_ratio,
            usize,
            (target: &[u8], chat: &[u8], base: &[u8], out: &mut [u8])
        );
    }
    dispatch_simd!(
        tier,
        chat_vector_bytes_lanes,
        usize,
        (dtype: DType, target: &[u8], chat: &[u8], base: &[u8], ratio: f64, out: &mut [u8])
    )
}

#[inline(always)]
fn chat_vector_bytes_lanes(dtype: DType, target: &[u8], chat: &[u8], base: &[u8], ratio: f64, out: &mut [u8]) -> usize {
    debug_assert!(target.len() == out.len() && chat.len() == out.len() && base.len() == out.len());
    let inputs = (target, chat, base);
    match dtype {
        DType::BF16 => chat_vector_elements(
            inputs,
            ratio,
            out,
            |b: [u8; 2]| bf16_to_f64(u16::from_le_bytes(b)),
            |v| {
                let h = round_bf16(v);
                (h.to_le_bytes(), h & 0x7f80 == 0x7f80)
            },
        ),
        DType::F16 => chat_vector_elements(
            inputs,
            ratio,
            out,
            |b: [u8; 2]| f16_to_f64(u16::from_le_bytes(b)),
            |v| {
                let h = round_f16(v);
                (h.to_le_bytes(), h & 0x7c00 == 0x7c00)
            },
        ),
        DType::F32 => chat_vector_elements(
            inputs,
            ratio,
            out,
            |b: [u8; 4]| f32::from_le_bytes(b) as f64,
            |v| {
                let f = v as f32;
                (f.to_le_bytes(), f.to_bits() & 0x7f80_0000 == 0x7f80_0000)
            },
        ),
        DType::F64 => chat_vector_elements(inputs, ratio, out, f64::from_le_bytes, |v| {
            (v.to_le_bytes(), v.to_bits() & F64_INF == F64_INF)
        }),
    }
}

/// The loop of [`chat_vector_bytes`] for elements of `N` bytes: `decode` is exact, `encode`
/// rounds once and says whether the result is NaN or infinite.
#[inline(always)]
fn chat_vector_elements<const N: usize>(
    (target, chat, base): (&[u8], &[u8], &[u8]),
    ratio: f64,
    out: &mut [u8],
    decode: impl Fn([u8; N]) -> f64,
    encode: impl Fn(f64) -> ([u8; N], bool),
) -> usize {
    let element = |b: &[u8]| -> [u8; N] { b.try_into().expect("chunks of N") };
    let mut nonfinite = 0;
    let inputs = target.chunks_exact(N).zip(chat.chunks_exact(N)).zip(base.chunks_exact(N));
    for (o, ((t, c), b)) in out.chunks_exact_mut(N).zip(inputs) {
        let v = chat_vector(decode(element(t)), decode(element(c)), decode(element(b)), ratio);
        let (bytes, special) = encode(v);
        nonfinite += special as usize;
        o.copy_from_slice(&bytes);
    }
    nonfinite
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatvec_format::dtype::{decode, encode};
    use chatvec_format::testing::Bits;

    /// Whether two encoded values are the same bits, or both NaN (whose payload depends on the
    /// order the compiler gives an addition's operands).
    fn same_value(dtype: DType, a: &[u8], b: &[u8]) -> bool {
        let mut buf = [0f64; 2];
        decode(dtype, a, &mut buf[..1]);
        decode(dtype, b, &mut buf[1..]);
        a == b || (buf[0].is_nan() && buf[1].is_nan())
    }

    #[test]
    fn one_pass_chat_vector_equals_decode_compute_encode_on_random_bit_patterns() {
        let mut g = Bits(0x9E37_79B9_7F4A_7C15);
        for dtype in [DType::BF16, DType::F16, DType::F32, DType::F64] {
            let n = 200_000;
            let w = dtype.size();
            // Raw bits for the narrow types (every pattern: subnormals, ±0, NaN, Inf, extremes),
            // the f64 generator's mix for f64.
            let mut input = || -> Vec<u8> {
                (0..n)
                    .flat_map(|_| {
                        let bits = if dtype == DType::F64 { g.f64_bits() } else { g.next_u64() };
                        bits.to_le_bytes().into_iter().take(w)
                    })
                    .collect()
            };
            let (t, c, b) = (input(), input(), input());
            for ratio in [1.0, 0.3, -0.5, 0.0, 1e30] {
                let (mut tv, mut cv, mut bv) = (vec![0f64; n], vec![0f64; n], vec![0f64; n]);
                decode(dtype, &t, &mut tv);
                decode(dtype, &c, &mut cv);
                decode(dtype, &b, &mut bv);
                let v: Vec<f64> = (0..n).map(|i| chat_vector(tv[i], cv[i], bv[i], ratio)).collect();
                let mut want = vec![0u8; n * w];
                let want_nonfinite = encode(dtype, &v, &mut want);
                // Every tier this CPU runs.
                for tier in SimdTier::available() {
                    let mut simd = vec![0u8; n * w];
                    let nonfinite = chat_vector_bytes(tier, dtype, &t, &c, &b, ratio, &mut simd);
                    assert_eq!(nonfinite, want_nonfinite, "{tier} {dtype}");
                    for i in 0..n {
                        let e = i * w..(i + 1) * w;
                        let what = || format!("{tier} {dtype}, ratio {ratio}: {} + r·({} − {})", tv[i], cv[i], bv[i]);
                        assert!(same_value(dtype, &simd[e.clone()], &want[e]), "{}", what());
                    }
                }
            }
        }
    }
}
