//! The x86-64 tiles of the GEMMs in `kernels.rs`: AVX2+FMA+F16C, and AVX-512 (VNNI for q8_0).
//!
//! A tile multiplies `RM` weight rows by `RN` input rows along the whole of `k`, one vector
//! accumulator per pair, and sums each accumulator's lanes at the end. `RM` and `RN` are
//! constants, so the accumulators live in registers (16 ymm for AVX2, 32 for AVX-512).

use std::arch::x86_64::*;

use super::{Half, Q8Block, Q8Rows, TileOut, MAX_TILE};

/// Whether the CPU has AVX-512 VNNI (`vpdpbusd`) for 256-bit vectors.
pub(super) fn has_vnni() -> bool {
    is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
}

/// Picks the compiled tile for a runtime shape (the shapes `kernels.rs` asks for).
macro_rules! tile_shapes {
    ($rm:expr, $rn:expr, $f:ident<$t:ty>, $args:tt, [$(($m:literal, $n:literal)),*]) => {
        match ($rm, $rn) {
            $(($m, $n) => $f::<$t, $m, $n> $args,)*
            other => unreachable!("no tile of shape {other:?}"),
        }
    };
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
    unsafe { tile_shapes!(rm, rn, q8_avx2, (w, x, r, out), [(2, 4)]) }
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
    unsafe { tile_shapes!(rm, rn, q8_vnni, (w, x, r, out), [(4, 4)]) }
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

/// Eight 16-bit weights from `p` widened to f32: bf16 is the top half of an f32, f16 goes
/// through F16C.
#[inline(always)]
fn widen8<T: Half>(p: *const T) -> __m256 {
    // SAFETY: the callers pass a pointer to eight readable weights and run with AVX2 and F16C.
    unsafe {
        let raw = _mm_loadu_si128(p as *const __m128i);
        if T::IS_F16 {
            _mm256_cvtph_ps(raw)
        } else {
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
        }
    }
}

/// Sixteen 16-bit weights from `p` widened to f32.
#[inline(always)]
fn widen16<T: Half>(p: *const T) -> __m512 {
    // SAFETY: the callers pass a pointer to sixteen readable weights and run with AVX-512F/BW.
    unsafe {
        let raw = _mm256_loadu_si256(p as *const __m256i);
        if T::IS_F16 {
            _mm512_cvtph_ps(raw)
        } else {
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16))
        }
    }
}

fn has_avx2_f16c() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

fn has_avx512bw() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && has_avx2_f16c()
}

/// The 16-bit tile for AVX2: eight weights widened per load.
pub(super) fn half_tile_avx2<T: Half>(
    rm: usize,
    rn: usize,
    w: &[&[T]; MAX_TILE],
    x: &[&[f32]; MAX_TILE],
    out: &mut TileOut,
) {
    assert!(has_avx2_f16c());
    // SAFETY: the CPU has the features (checked above).
    unsafe { tile_shapes!(rm, rn, half_avx2<T>, (w, x, out), [(3, 4)]) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn half_avx2<T: Half, const RM: usize, const RN: usize>(
    w: &[&[T]; MAX_TILE],
    x: &[&[f32]; MAX_TILE],
    out: &mut TileOut,
) {
    let k = x[0].len();
    assert!(w[..RM].iter().all(|row| row.len() == k) && x[..RN].iter().all(|row| row.len() == k));
    let mut acc = [[_mm256_setzero_ps(); RN]; RM];
    let whole = k / 8 * 8;
    for c in (0..whole).step_by(8) {
        // c + 8 ≤ k, the rows' length (asserted above).
        let wide: [__m256; RM] = std::array::from_fn(|i| widen8(w[i][c..].as_ptr()));
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
            out[i][jj] = hsum256(acc[i][jj]) + super::dot_half_scalar(&w[i][whole..], &x[jj][whole..]);
        }
    }
}

/// One 16-bit weight row times one input row for AVX2 (decode): one sequential stream of
/// weights, summed in the tile's order (the same bits as the row would get in a tile, so a
/// sequence's logits do not depend on how many others share its batch).
pub(super) fn half_row_avx2<T: Half>(w: &[T], x: &[f32]) -> f32 {
    assert!(has_avx2_f16c() && w.len() == x.len());
    // SAFETY: the CPU has the features (checked above).
    unsafe { half_row_avx2_impl(w, x) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn half_row_avx2_impl<T: Half>(w: &[T], x: &[f32]) -> f32 {
    let whole = w.len() / 8 * 8;
    let mut acc = _mm256_setzero_ps();
    for c in (0..whole).step_by(8) {
        // SAFETY: c + 8 ≤ whole ≤ the rows' length (equal, asserted by the caller).
        let xv = unsafe { _mm256_loadu_ps(x.as_ptr().add(c)) };
        acc = _mm256_fmadd_ps(widen8(w[c..].as_ptr()), xv, acc);
    }
    hsum256(acc) + super::dot_half_scalar(&w[whole..], &x[whole..])
}

/// The 16-bit tile for AVX-512: sixteen weights widened per load.
pub(super) fn half_tile_avx512<T: Half>(
    rm: usize,
    rn: usize,
    w: &[&[T]; MAX_TILE],
    x: &[&[f32]; MAX_TILE],
    out: &mut TileOut,
) {
    assert!(has_avx512bw());
    // SAFETY: the CPU has the features (checked above).
    unsafe { tile_shapes!(rm, rn, half_avx512<T>, (w, x, out), [(4, 4)]) }
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
fn half_avx512<T: Half, const RM: usize, const RN: usize>(
    w: &[&[T]; MAX_TILE],
    x: &[&[f32]; MAX_TILE],
    out: &mut TileOut,
) {
    let k = x[0].len();
    assert!(w[..RM].iter().all(|row| row.len() == k) && x[..RN].iter().all(|row| row.len() == k));
    let mut acc = [[_mm512_setzero_ps(); RN]; RM];
    let whole = k / 16 * 16;
    for c in (0..whole).step_by(16) {
        // c + 16 ≤ k, the rows' length (asserted above).
        let wide: [__m512; RM] = std::array::from_fn(|i| widen16(w[i][c..].as_ptr()));
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
            out[i][jj] = _mm512_reduce_add_ps(acc[i][jj]) + super::dot_half_scalar(&w[i][whole..], &x[jj][whole..]);
        }
    }
}

/// One 16-bit weight row times one input row for AVX-512 (decode).
pub(super) fn half_row_avx512<T: Half>(w: &[T], x: &[f32]) -> f32 {
    assert!(has_avx512bw() && w.len() == x.len());
    // SAFETY: the CPU has the features (checked above).
    unsafe { half_row_avx512_impl(w, x) }
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
fn half_row_avx512_impl<T: Half>(w: &[T], x: &[f32]) -> f32 {
    let whole = w.len() / 16 * 16;
    let mut acc = _mm512_setzero_ps();
    for c in (0..whole).step_by(16) {
        // SAFETY: c + 16 ≤ whole ≤ the rows' length (equal, asserted by the caller).
        let xv = unsafe { _mm512_loadu_ps(x.as_ptr().add(c)) };
        acc = _mm512_fmadd_ps(widen16(w[c..].as_ptr()), xv, acc);
    }
    _mm512_reduce_add_ps(acc) + super::dot_half_scalar(&w[whole..], &x[whole..])
}

/// One q8_0 weight row times one quantized input row for AVX2 (decode): `maddubs` on |w| and
/// the inputs with w's signs (exact: the inputs' quants are within ±127); one sequential
/// stream of weights, summed in the tile's order (the same bits as in a tile).
pub(super) fn q8_row_avx2(w: &[Q8Block], x: (&[i8], &[f32])) -> f32 {
    assert!(has_avx2_f16c() && x.0.len() == 32 * w.len() && x.1.len() == w.len());
    // SAFETY: the CPU has the features (checked above).
    unsafe { q8_row_avx2_impl(w, x.0, x.1) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_row_avx2_impl(w: &[Q8Block], xq: &[i8], xd: &[f32]) -> f32 {
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for (b, block) in w.iter().enumerate() {
        // SAFETY: a block's 32 quants, and block b of the input's 32·len quants (asserted).
        let (wq, xv) = unsafe {
            (
                _mm256_loadu_si256(block.qs.as_ptr() as *const __m256i),
                _mm256_loadu_si256(xq.as_ptr().add(32 * b) as *const __m256i),
            )
        };
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xv, wq));
        let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
        acc = _mm256_fmadd_ps(scales(block.d, xd[b]), sums, acc);
    }
    hsum256(acc)
}

/// One q8_0 weight row times one quantized input row for AVX-512 VNNI (decode): `dpbusd` on
/// |w| and the inputs with w's signs (exact, as in `q8_row_avx2`).
pub(super) fn q8_row_vnni(w: &[Q8Block], x: (&[i8], &[f32])) -> f32 {
    assert!(has_vnni() && has_avx2_f16c() && x.0.len() == 32 * w.len() && x.1.len() == w.len());
    // SAFETY: the CPU has the features (checked above).
    unsafe { q8_row_vnni_impl(w, x.0, x.1) }
}

#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8_row_vnni_impl(w: &[Q8Block], xq: &[i8], xd: &[f32]) -> f32 {
    let zero = _mm256_setzero_si256();
    let mut acc = _mm256_setzero_ps();
    for (b, block) in w.iter().enumerate() {
        // SAFETY: as in `q8_row_avx2_impl`.
        let (wq, xv) = unsafe {
            (
                _mm256_loadu_si256(block.qs.as_ptr() as *const __m256i),
                _mm256_loadu_si256(xq.as_ptr().add(32 * b) as *const __m256i),
            )
        };
        let sums = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(zero, _mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xv, wq)));
        acc = _mm256_fmadd_ps(scales(block.d, xd[b]), sums, acc);
    }
    hsum256(acc)
}

/// The weight block's f16 scale times the input block's, in every lane (broadcast before the
/// conversion: converting one lane let the compiler merge into the accumulator's register, a
/// false dependency that made the loop wait on every FMA).
#[inline(always)]
fn scales(wd: u16, xd: f32) -> __m256 {
    // SAFETY: the callers run with AVX2 and F16C.
    unsafe { _mm256_mul_ps(_mm256_cvtph_ps(_mm_set1_epi16(wd as i16)), _mm256_set1_ps(xd)) }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}
