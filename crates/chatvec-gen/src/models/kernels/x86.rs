//! The x86-64 tiles of the GEMMs in `kernels.rs`: AVX2+FMA+F16C, and AVX-512 (VNNI for q8_0).
//!
//! A tile multiplies `RM` weight rows by `RN` input rows along the whole of `k`, one vector
//! accumulator per pair, and sums each accumulator's lanes at the end. `RM` and `RN` are
//! constants, so the accumulators live in registers (16 ymm for AVX2, 32 for AVX-512).

use std::arch::x86_64::*;

use half::bf16;

use super::{Q8Block, Q8Rows, TileOut, MAX_TILE};

/// Whether the CPU has AVX-512 VNNI (`vpdpbusd`) for 256-bit vectors.
pub(super) fn has_vnni() -> bool {
    is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
}

/// Picks the compiled tile for a runtime shape (the shapes `kernels.rs` asks for).
macro_rules! tile_shapes {
    ($rm:expr, $rn:expr, $f:ident, $args:tt, [$(($m:literal, $n:literal)),*]) => {
        match ($rm, $rn) {
            $(($m, $n) => $f::<$m, $n> $args,)*
            other => unreachable!("no tile of shape {other:?}"),
        }
    };
}

/// The q8_0 tile for AVX2: products by `maddubs`, which multiplies unsigned by signed bytes, so
/// the weights' signs move onto the inputs (`|w|·sign(x, w)`; |w| ≤ 128 and |x| ≤ 127 keep the
/// pair sums below i16's limit).
pub(super) fn q8_tile_avx2(rm: usize, rn: usize, w: &[&[Q8Block]; MAX_TILE], x: &Q8Rows, r: usize, out: &mut TileOut) {
    assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"));
    // SAFETY: the CPU has the features (checked above; `std` caches the check).
    unsafe { tile_shapes!(rm, rn, q8_avx2, (w, x, r, out), [(2, 4), (4, 1)]) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_avx2<const RM: usize, const RN: usize>(w: &[&[Q8Block]; MAX_TILE], x: &Q8Rows, r: usize, out: &mut TileOut) {
    let kb = x.k / 32;
    let inputs: [(&[i8], &[f32]); RN] = std::array::from_fn(|jj| x.row((r + jj).min(x.qs.len() / x.k - 1)));
    assert!(w[..RM].iter().all(|row| row.len() == kb));
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); RN]; RM];
    for b in 0..kb {
        let mut wq = [_mm256_setzero_si256(); RM];
        let mut wabs = [_mm256_setzero_si256(); RM];
        let mut wd = [_mm256_setzero_ps(); RM];
        for i in 0..RM {
            let block = &w[i][b];
            // SAFETY: a block's 32 quants are 32 readable bytes.
            wq[i] = unsafe { _mm256_loadu_si256(block.qs.as_ptr() as *const __m256i) };
            wabs[i] = _mm256_sign_epi8(wq[i], wq[i]);
            wd[i] = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(block.d as i32)));
        }
        for (jj, (q, d)) in inputs.iter().enumerate() {
            // SAFETY: block b of a row of k = 32·kb quants.
            let xq = unsafe { _mm256_loadu_si256(q.as_ptr().add(32 * b) as *const __m256i) };
            let xd = _mm256_set1_ps(d[b]);
            for i in 0..RM {
                let pairs = _mm256_maddubs_epi16(wabs[i], _mm256_sign_epi8(xq, wq[i]));
                let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                acc[i][jj] = _mm256_fmadd_ps(_mm256_mul_ps(wd[i], xd), sums, acc[i][jj]);
            }
        }
    }
    for i in 0..RM {
        for jj in 0..RN {
            out[i][jj] = hsum256(acc[i][jj]);
        }
    }
}

/// The q8_0 tile for AVX-512 VNNI: `dpbusd` multiplies unsigned by signed bytes into i32 lanes
/// without saturating, so the inputs are offset to `x + 128` and `128·Σw` (one more `dpbusd`
/// per weight block) is subtracted up front: exact.
pub(super) fn q8_tile_vnni(rm: usize, rn: usize, w: &[&[Q8Block]; MAX_TILE], x: &Q8Rows, r: usize, out: &mut TileOut) {
    assert!(has_vnni() && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c"));
    // SAFETY: the CPU has the features (checked above).
    unsafe { tile_shapes!(rm, rn, q8_vnni, (w, x, r, out), [(4, 4), (4, 1)]) }
}

#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8_vnni<const RM: usize, const RN: usize>(w: &[&[Q8Block]; MAX_TILE], x: &Q8Rows, r: usize, out: &mut TileOut) {
    let kb = x.k / 32;
    let inputs: [(&[i8], &[f32]); RN] = std::array::from_fn(|jj| x.row((r + jj).min(x.qs.len() / x.k - 1)));
    assert!(w[..RM].iter().all(|row| row.len() == kb));
    let offset = _mm256_set1_epi8(-128);
    let zero = _mm256_setzero_si256();
    let mut acc = [[_mm256_setzero_ps(); RN]; RM];
    for b in 0..kb {
        let mut wq = [zero; RM];
        let mut minus_offset = [zero; RM];
        let mut wd = [_mm256_setzero_ps(); RM];
        for i in 0..RM {
            let block = &w[i][b];
            // SAFETY: a block's 32 quants are 32 readable bytes.
            wq[i] = unsafe { _mm256_loadu_si256(block.qs.as_ptr() as *const __m256i) };
            // 0x80 read as unsigned is 128: 128·Σw per group of four, negated.
            minus_offset[i] = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, offset, wq[i]));
            wd[i] = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(block.d as i32)));
        }
        for (jj, (q, d)) in inputs.iter().enumerate() {
            // SAFETY: block b of a row of k = 32·kb quants.
            let xq = unsafe { _mm256_loadu_si256(q.as_ptr().add(32 * b) as *const __m256i) };
            // x ^ 0x80 read as unsigned is x + 128.
            let xu = _mm256_xor_si256(xq, offset);
            let xd = _mm256_set1_ps(d[b]);
            for i in 0..RM {
                let sums = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(minus_offset[i], xu, wq[i]));
                acc[i][jj] = _mm256_fmadd_ps(_mm256_mul_ps(wd[i], xd), sums, acc[i][jj]);
            }
        }
    }
    for i in 0..RM {
        for jj in 0..RN {
            out[i][jj] = hsum256(acc[i][jj]);
        }
    }
}

/// The bf16 tile for AVX2: eight weights widened per load (bf16 is the top half of an f32).
pub(super) fn bf16_tile_avx2(rm: usize, rn: usize, w: &[&[bf16]; MAX_TILE], x: &[&[f32]; MAX_TILE], out: &mut TileOut) {
    assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
    // SAFETY: the CPU has the features (checked above).
    unsafe { tile_shapes!(rm, rn, bf16_avx2, (w, x, out), [(3, 4), (4, 1)]) }
}

#[target_feature(enable = "avx2,fma")]
fn bf16_avx2<const RM: usize, const RN: usize>(w: &[&[bf16]; MAX_TILE], x: &[&[f32]; MAX_TILE], out: &mut TileOut) {
    let k = x[0].len();
    assert!(w[..RM].iter().all(|row| row.len() == k) && x[..RN].iter().all(|row| row.len() == k));
    let mut acc = [[_mm256_setzero_ps(); RN]; RM];
    let whole = k / 8 * 8;
    for c in (0..whole).step_by(8) {
        let mut wide = [_mm256_setzero_ps(); RM];
        for i in 0..RM {
            // SAFETY: c + 8 ≤ k, the row's length (asserted above).
            let raw = unsafe { _mm_loadu_si128(w[i].as_ptr().add(c) as *const __m128i) };
            wide[i] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
        }
        for jj in 0..RN {
            // SAFETY: as above.
            let xv = unsafe { _mm256_loadu_ps(x[jj].as_ptr().add(c)) };
            for i in 0..RM {
                acc[i][jj] = _mm256_fmadd_ps(wide[i], xv, acc[i][jj]);
            }
        }
    }
    for i in 0..RM {
        for jj in 0..RN {
            out[i][jj] = hsum256(acc[i][jj]) + super::dot_bf16_scalar(&w[i][whole..], &x[jj][whole..]);
        }
    }
}

/// The bf16 tile for AVX-512: sixteen weights widened per load.
pub(super) fn bf16_tile_avx512(
    rm: usize,
    rn: usize,
    w: &[&[bf16]; MAX_TILE],
    x: &[&[f32]; MAX_TILE],
    out: &mut TileOut,
) {
    assert!(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"));
    // SAFETY: the CPU has the features (checked above).
    unsafe { tile_shapes!(rm, rn, bf16_avx512, (w, x, out), [(4, 4), (4, 1)]) }
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
fn bf16_avx512<const RM: usize, const RN: usize>(w: &[&[bf16]; MAX_TILE], x: &[&[f32]; MAX_TILE], out: &mut TileOut) {
    let k = x[0].len();
    assert!(w[..RM].iter().all(|row| row.len() == k) && x[..RN].iter().all(|row| row.len() == k));
    let mut acc = [[_mm512_setzero_ps(); RN]; RM];
    let whole = k / 16 * 16;
    for c in (0..whole).step_by(16) {
        let mut wide = [_mm512_setzero_ps(); RM];
        for i in 0..RM {
            // SAFETY: c + 16 ≤ k, the row's length (asserted above).
            let raw = unsafe { _mm256_loadu_si256(w[i].as_ptr().add(c) as *const __m256i) };
            wide[i] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
        }
        for jj in 0..RN {
            // SAFETY: as above.
            let xv = unsafe { _mm512_loadu_ps(x[jj].as_ptr().add(c)) };
            for i in 0..RM {
                acc[i][jj] = _mm512_fmadd_ps(wide[i], xv, acc[i][jj]);
            }
        }
    }
    for i in 0..RM {
        for jj in 0..RN {
            out[i][jj] = _mm512_reduce_add_ps(acc[i][jj]) + super::dot_bf16_scalar(&w[i][whole..], &x[jj][whole..]);
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}
