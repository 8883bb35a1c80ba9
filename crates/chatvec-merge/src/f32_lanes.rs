//! The merge's most common case, bf16 `target + 1·(chat − base)`, in f32 lanes: twice the lanes
//! of the f64 path per vector, and a proof per element that the result is the f64 path's bits.
//!
//! A bf16 value with exponent field `e` is a multiple of `2^(max(e,1) − 134)` below
//! `2^(e − 126)` in magnitude (zero is a multiple of anything). So when the three inputs are
//! below 2^127 and their nonzero exponents lie within [`WINDOW`] binades, `chat − base` and
//! `target + (chat − base)` are multiples of the smallest one's spacing below `2^(emax − 124)`:
//! at most `emax − emin + 10 ≤ 24` significant bits, which f32 holds exactly (the difference is
//! below 2^128; a sum past f32's range is ±infinity, as the exact value rounds to in bf16). Both
//! paths then round the same exact value once, to nearest even. Other elements (NaN, infinite or
//! huge inputs, exponents farther apart) are computed in f64 one by one. In fine-tuned weights
//! chat and base are close, so that is rare (`almost_every_fine_tune_like_element_is_proven`).

use crate::kernel::chat_vector;
use chatvec_format::dtype::{bf16_to_f64, round_bf16};

/// Elements per block: the f32 pass runs over a whole block, then the rare elements it cannot
/// prove are redone in f64.
const BLOCK: usize = 128;

/// The widest spread, in bf16 exponent-field units (`e << 7`), of exponents the f32 sum holds
/// exactly: 14 binades.
const WINDOW: u16 = 14 << 7;

/// One element: the f32 result rounded to bf16, and whether it is proven to be the f64 path's.
#[inline(always)]
fn f32_lane(t: u16, c: u16, b: u16) -> (u16, bool) {
    let exponent = |h: u16| h & 0x7f80;
    // Zero never narrows the window; subnormals have the spacing of exponent 1.
    let lowest = |h: u16| if h & 0x7fff == 0 { 0x7f80 } else { exponent(h).max(0x80) };
    let hi = exponent(t).max(exponent(c)).max(exponent(b));
    let lo = lowest(t).min(lowest(c)).min(lowest(b));
    // Below 2^127 (exponent 254 excluded), `chat − base` cannot overflow f32.
    let proven = (hi < 0x7f00) & (hi <= lo + WINDOW);
    let f = |h: u16| f32::from_bits((h as u32) << 16);
    let bits = (f(t) + (f(c) - f(b))).to_bits();
    // Round to nearest, ties to even; infinity stays infinity.
    (((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16, proven)
}

/// The f64 path for one element (the reference the f32 lanes are proven equal to).
#[inline(always)]
fn f64_lane(t: u16, c: u16, b: u16) -> u16 {
    round_bf16(chat_vector(bf16_to_f64(t), bf16_to_f64(c), bf16_to_f64(b), 1.0))
}

/// Little-endian bf16 `out = target + (chat − base)`, each rounded once, the same bits as the f64
/// path; returns how many results are NaN or infinite.
#[inline(always)]
pub(crate) fn unit_ratio(target: &[u8], chat: &[u8], base: &[u8], out: &mut [u8]) -> usize {
    debug_assert!(target.len() == out.len() && chat.len() == out.len() && base.len() == out.len());
    let n = 2 * BLOCK;
    let inputs = target.chunks(n).zip(chat.chunks(n)).zip(base.chunks(n));
    let mut nonfinite = 0;
    for (o, ((t, c), b)) in out.chunks_mut(n).zip(inputs) {
        nonfinite += match (words(t), words(c), words(b)) {
            (Some(t), Some(c), Some(b)) => block(&t, &c, &b, o),
            _ => tail(t, c, b, o),
        };
    }
    nonfinite
}

/// A whole block of little-endian bf16 bits.
#[inline(always)]
fn words(bytes: &[u8]) -> Option<[u16; BLOCK]> {
    let bytes: &[u8; 2 * BLOCK] = bytes.try_into().ok()?;
    Some(std::array::from_fn(|i| u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])))
}

/// One whole block: every lane in f32, then the unproven ones again in f64.
#[inline(always)]
fn block(t: &[u16; BLOCK], c: &[u16; BLOCK], b: &[u16; BLOCK], out: &mut [u8]) -> usize {
    let mut rounded = [0u16; BLOCK];
    let mut unproven = 0u32;
    for i in 0..BLOCK {
        let (h, proven) = f32_lane(t[i], c[i], b[i]);
        rounded[i] = h;
        unproven += !proven as u32;
    }
    if unproven != 0 {
        // Rare: find the lanes again (cheaper than keeping a mask) and redo them in f64.
        for i in 0..BLOCK {
            if !f32_lane(t[i], c[i], b[i]).1 {
                rounded[i] = f64_lane(t[i], c[i], b[i]);
            }
        }
    }
    // Fixed lengths, so that these loops vectorize too.
    let out: &mut [u8; 2 * BLOCK] = out.try_into().expect("a whole block");
    for i in 0..BLOCK {
        [out[2 * i], out[2 * i + 1]] = rounded[i].to_le_bytes();
    }
    rounded.iter().map(|&h| (h & 0x7f80 == 0x7f80) as u32).sum::<u32>() as usize
}

/// The last, partial block, in f64.
fn tail(t: &[u8], c: &[u8], b: &[u8], out: &mut [u8]) -> usize {
    let word = |x: &[u8], i: usize| u16::from_le_bytes([x[2 * i], x[2 * i + 1]]);
    let mut nonfinite = 0;
    for (i, o) in out.chunks_exact_mut(2).enumerate() {
        let h = f64_lane(word(t, i), word(c, i), word(b, i));
        nonfinite += (h & 0x7f80 == 0x7f80) as usize;
        o.copy_from_slice(&h.to_le_bytes());
    }
    nonfinite
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::one_pass::chat_vector_bytes;
    use chatvec_format::testing::Bits;
    use chatvec_format::{DType, SimdTier};

    fn same_bits_or_both_nan(a: u16, b: u16) -> bool {
        a == b || (a & 0x7fff > 0x7f80 && b & 0x7fff > 0x7f80)
    }

    /// bf16 bits with exponent field `e` (1..=254, or 0 for subnormal) and the given sign and
    /// mantissa.
    fn bf(sign: u16, e: u16, mantissa: u16) -> u16 {
        sign << 15 | e << 7 | (mantissa & 0x7f)
    }

    #[test]
    fn proven_exactly_up_to_the_window_and_left_to_f64_beyond_it() {
        // Every spread of exponents around the window's edge, at the bottom (subnormals), the
        // middle and the top (overflow) of the range, with mantissas that use every bit.
        let mut g = Bits(0x9E37_79B9_7F4A_7C15);
        let mut proven = [0u32; 2];
        for lo in [0u16, 1, 2, 100, 120, 230, 239, 240, 253] {
            for spread in 0..=20u16 {
                let hi = (lo + spread).min(254);
                for _ in 0..2000 {
                    let r = g.next_u64();
                    let e = [lo, hi, if r & 1 == 0 { lo } else { hi }];
                    let mut h = [0u16; 3];
                    for (k, x) in h.iter_mut().enumerate() {
                        *x = bf((r >> (1 + k)) as u16 & 1, e[(k + (r >> 8) as usize) % 3], (r >> (16 + 8 * k)) as u16);
                    }
                    let (got, ok) = f32_lane(h[0], h[1], h[2]);
                    let want = f64_lane(h[0], h[1], h[2]);
                    if ok {
                        assert_eq!(got, want, "{h:04x?}: spread {spread} from exponent {lo}");
                    }
                    // The window in integers: the largest exponent against the smallest of the
                    // nonzero inputs (subnormals count as exponent 1).
                    let exps = h.map(|x| ((x >> 7) & 0xff) as i32);
                    let nonzero = h.iter().zip(exps).filter(|(x, _)| *x & 0x7fff != 0).map(|(_, e)| e.max(1));
                    let spread = exps.iter().max().unwrap() - nonzero.min().unwrap_or(255);
                    assert_eq!(ok, spread <= 14 && exps.iter().all(|&e| e < 254), "{h:04x?}");
                    proven[ok as usize] += 1;
                }
            }
        }
        assert!(proven[0] > 0 && proven[1] > 0);
    }

    #[test]
    fn zeros_do_not_narrow_the_window_and_specials_are_left_to_f64() {
        let one = 0x3f80;
        assert_eq!(f32_lane(0, one, 0), (one, true));
        assert_eq!(f32_lane(0x8000, 0, 0), (0, true), "−0 + (0 − 0) = +0");
        assert_eq!(f32_lane(0x8000, 0x8000, 0), (0x8000, true), "−0 + (−0 − 0) = −0");
        assert!(!f32_lane(one, 0x0001, 0).1, "a subnormal 126 binades below 1");
        for special in [0x7f80, 0xff80, 0x7fc0, 0x7f81] {
            assert!(!f32_lane(special, one, one).1, "{special:#06x}");
            assert!(!f32_lane(one, one, special).1, "{special:#06x}");
        }
        // Exponent 253: the f32 sum overflows, as the exact one rounds to in bf16; exponent 254
        // (a difference that could overflow f32 before the sum comes back in range) goes to f64.
        assert_eq!(f32_lane(0x7eff, 0x7eff, 0xfeff), (0x7f80, true));
        assert_eq!(f64_lane(0x7eff, 0x7eff, 0xfeff), 0x7f80);
        assert!(!f32_lane(0xff7f, 0x7ecd, 0xff7a).1);
        assert_eq!(f64_lane(0xff7f, 0x7ecd, 0xff7a), 0x7ec3);
    }

    #[test]
    fn whole_buffers_equal_the_f64_path_on_any_bits_and_on_fine_tune_like_weights() {
        let mut g = Bits(0x5DEE_CE66_D1CE_4E5B);
        for round in 0..40 {
            let n = 37 * BLOCK + round;
            // Half the rounds any bits (NaN, infinity, subnormals, far exponents: mostly f64),
            // half weights a fine-tune would give (chat within a few ulps of base).
            let words: Vec<[u16; 3]> = (0..n)
                .map(|_| {
                    let r = g.next_u64();
                    if round % 2 == 0 {
                        [r as u16, (r >> 16) as u16, (r >> 32) as u16]
                    } else {
                        let base = (r & 0x807f) as u16 | ((((r >> 16) % 30) + 100) as u16) << 7;
                        [
                            base ^ ((r >> 40) as u16 & 0x83ff),
                            base.wrapping_add((r >> 56) as u16 % 9).wrapping_sub(4),
                            base,
                        ]
                    }
                })
                .collect();
            let bytes = |k: usize| -> Vec<u8> { words.iter().flat_map(|w| w[k].to_le_bytes()).collect() };
            // Each tier this CPU runs, through the merge's entry point.
            for tier in SimdTier::available() {
                let mut out = vec![0u8; 2 * n];
                let nonfinite = chat_vector_bytes(tier, DType::BF16, &bytes(0), &bytes(1), &bytes(2), 1.0, &mut out);
                let mut counted = 0;
                for (i, w) in words.iter().enumerate() {
                    let (got, want) = (u16::from_le_bytes([out[2 * i], out[2 * i + 1]]), f64_lane(w[0], w[1], w[2]));
                    assert!(same_bits_or_both_nan(got, want), "{tier}, round {round}, element {i}: {w:04x?}");
                    counted += (want & 0x7f80 == 0x7f80) as usize;
                }
                assert_eq!(nonfinite, counted, "{tier}, round {round}");
            }
        }
    }

    #[test]
    fn almost_every_fine_tune_like_element_is_proven() {
        // Weights of one scale, chat a few ulps from base, target anywhere near.
        let mut g = Bits(0x2545_F491_4F6C_DD1D);
        let n = 1_000_000;
        let proven = (0..n)
            .filter(|_| {
                let r = g.next_u64();
                let base = (r & 0x807f) as u16 | ((((r >> 16) % 12) + 115) as u16) << 7;
                let chat = base.wrapping_add((r >> 56) as u16 % 9).wrapping_sub(4);
                f32_lane(base ^ ((r >> 40) as u16 & 0x81ff), chat, base).1
            })
            .count();
        assert!(proven >= n * 999 / 1000, "{proven} of {n} proven");
    }
}
