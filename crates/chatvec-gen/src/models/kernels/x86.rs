//! The x86-64 tiles of the GEMMs in `kernels.rs`: AVX2+FMA+F16C, and AVX-512 (VNNI for q8_0).
//!
//! A tile multiplies `RM` weight rows by `RN` input rows along the whole of `k`, one vector
//! accumulator per pair, and sums each accumulator's lanes at the end. `RM` and `RN` are
//! constants, so the accumulators live in registers (16 ymm for AVX2, 32 for AVX-512).

use std::arch::x86_64::*;

use super::q8_0::{Q8Rows, Q8x8Block, TileOut as GroupOut, GROUP, MAX_INPUTS};
use super::{Half, TileOut, MAX_TILE};

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

/// Picks the tile compiled for `inputs` input rows (1 to `MAX_INPUTS`).
macro_rules! by_inputs {
    ($inputs:expr, $f:ident $args:tt) => {
        match $inputs {
            1 => $f::<1> $args,
            2 => $f::<2> $args,
            3 => $f::<3> $args,
            4 => $f::<4> $args,
            5 => $f::<5> $args,
            6 => $f::<6> $args,
            7 => $f::<7> $args,
            8 => $f::<8> $args,
            other => unreachable!("no tile for {other} input rows"),
        }
    };
}

/// Input row `r + j`'s pointers: quants, scales and corrections, for `j < RN`.
struct Inputs<const RN: usize> {
    qs: [*const i8; RN],
    d: [*const f32; RN],
    minus_128_sum: [*const i32; RN],
}

impl<const RN: usize> Inputs<RN> {
    fn new(x: &Q8Rows, r: usize, kb: usize) -> Self {
        assert!(r + RN <= x.rows() && x.k == 32 * kb && RN <= MAX_INPUTS);
        // In bounds: rows r..r+RN exist (asserted), each k quants and kb blocks long.
        Inputs {
            qs: std::array::from_fn(|j| x.qs[(r + j) * x.k..].as_ptr()),
            d: std::array::from_fn(|j| x.d[(r + j) * kb..].as_ptr()),
            minus_128_sum: std::array::from_fn(|j| x.minus_128_sum[(r + j) * kb..].as_ptr()),
        }
    }
}

/// The q8_0 tile for AVX-512 VNNI: eight rows (one group) times `inputs` input rows. `dpbusd`
/// multiplies the stored unsigned quants (w + 128) by four signed input quants broadcast to every
/// row's lane; the sums start at `-128·Σx` so they end at the exact `Σ w·x`.
pub(super) fn q8x8_tile_vnni(group: &[Q8x8Block], x: &Q8Rows, r: usize, inputs: usize, out: &mut GroupOut) {
    assert!(has_vnni() && has_avx2_f16c());
    // SAFETY: the CPU has the features (checked above).
    unsafe { by_inputs!(inputs, q8x8_vnni(group, x, r, out)) }
}

#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8x8_vnni<const RN: usize>(group: &[Q8x8Block], x: &Q8Rows, r: usize, out: &mut GroupOut) {
    let kb = group.len();
    let inp = Inputs::<RN>::new(x, r, kb);
    let mut acc = [_mm256_setzero_ps(); RN];
    for (b, block) in group.iter().enumerate() {
        // SAFETY: block b < kb of rows with kb blocks (`Inputs::new` asserts the shapes); a
        // block's 8 scales are 16 readable bytes and its quants 256.
        let sums = unsafe {
            let mut sums: [__m256i; RN] = std::array::from_fn(|j| _mm256_set1_epi32(*inp.minus_128_sum[j].add(b)));
            for t in 0..GROUP {
                let w = _mm256_loadu_si256(block.qs.as_ptr().add(32 * t) as *const __m256i);
                for (sum, qs) in sums.iter_mut().zip(inp.qs) {
                    let xq = _mm256_set1_epi32((qs.add(32 * b + 4 * t) as *const i32).read_unaligned());
                    *sum = _mm256_dpbusd_epi32(*sum, w, xq);
                }
            }
            sums
        };
        fold_block(block, &inp, b, &sums, &mut acc);
    }
    store_tile(&acc, out);
}

/// The q8_0 tile for AVX-512 VNNI on two groups at once (sixteen rows): as
/// [`q8x8_tile_vnni`] with 512-bit vectors, the two groups' quants side by side. Half the
/// instructions per product (one `dpbusd` and one input broadcast for sixteen rows, one float fold
/// for sixteen), each lane doing what the eight-row tile does, so the bits are the same.
pub(super) fn q8x16_tile_vnni(groups: [&[Q8x8Block]; 2], x: &Q8Rows, r: usize, inputs: usize, out: &mut [GroupOut; 2]) {
    assert!(has_vnni() && has_avx512bw() && groups[0].len() == groups[1].len());
    // SAFETY: the CPU has the features (checked above).
    unsafe { by_inputs!(inputs, q8x16_vnni(groups, x, r, out)) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8x16_vnni<const RN: usize>(groups: [&[Q8x8Block]; 2], x: &Q8Rows, r: usize, out: &mut [GroupOut; 2]) {
    let kb = groups[0].len();
    let inp = Inputs::<RN>::new(x, r, kb);
    let mut acc = [_mm512_setzero_ps(); RN];
    for (b, (lo, hi)) in groups[0].iter().zip(groups[1]).enumerate() {
        // SAFETY: as in `q8x8_vnni`, for each of the two blocks.
        unsafe {
            let mut sums: [__m512i; RN] = std::array::from_fn(|j| _mm512_set1_epi32(*inp.minus_128_sum[j].add(b)));
            for t in 0..GROUP {
                let w_lo = _mm256_loadu_si256(lo.qs.as_ptr().add(32 * t) as *const __m256i);
                let w_hi = _mm256_loadu_si256(hi.qs.as_ptr().add(32 * t) as *const __m256i);
                let w = _mm512_inserti64x4(_mm512_castsi256_si512(w_lo), w_hi, 1);
                for (sum, qs) in sums.iter_mut().zip(inp.qs) {
                    let xq = _mm512_set1_epi32((qs.add(32 * b + 4 * t) as *const i32).read_unaligned());
                    *sum = _mm512_dpbusd_epi32(*sum, w, xq);
                }
            }
            let d_lo = _mm_loadu_si128(lo.d.as_ptr() as *const __m128i);
            let d_hi = _mm_loadu_si128(hi.d.as_ptr() as *const __m128i);
            let dw = _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(d_lo), d_hi, 1));
            for j in 0..RN {
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*inp.d[j].add(b)));
                acc[j] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sums[j]), acc[j]);
            }
        }
    }
    for (j, acc) in acc.iter().enumerate() {
        let [lo, hi] = out;
        // SAFETY: the CPU has AVX-512F; a row of a tile's output is GROUP = 8 floats.
        unsafe {
            _mm256_storeu_ps(lo[j].as_mut_ptr(), _mm512_castps512_ps256(*acc));
            _mm256_storeu_ps(hi[j].as_mut_ptr(), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(*acc), 1)));
        }
    }
}

/// The q8_0 tile for AVX2: as the VNNI tile, with `maddubs` (unsigned × signed bytes, pairs
/// summed in i16) and `madd` for `dpbusd`. The weights' signs move onto the inputs
/// (`|w|·sign(x, w)`; |w| ≤ 128 and |x| ≤ 127 keep the pair sums below i16's limit).
pub(super) fn q8x8_tile_avx2(group: &[Q8x8Block], x: &Q8Rows, r: usize, inputs: usize, out: &mut GroupOut) {
    assert!(has_avx2_f16c());
    // SAFETY: the CPU has the features (checked above).
    unsafe { by_inputs!(inputs, q8x8_avx2(group, x, r, out)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8x8_avx2<const RN: usize>(group: &[Q8x8Block], x: &Q8Rows, r: usize, out: &mut GroupOut) {
    let kb = group.len();
    let inp = Inputs::<RN>::new(x, r, kb);
    let (ones, plus_128) = (_mm256_set1_epi16(1), _mm256_set1_epi8(-128));
    let mut acc = [_mm256_setzero_ps(); RN];
    for (b, block) in group.iter().enumerate() {
        // SAFETY: as in `q8x8_vnni`.
        let sums = unsafe {
            let mut sums = [_mm256_setzero_si256(); RN];
            for t in 0..GROUP {
                let stored = _mm256_loadu_si256(block.qs.as_ptr().add(32 * t) as *const __m256i);
                let w = _mm256_xor_si256(stored, plus_128);
                let w_abs = _mm256_abs_epi8(w);
                for (sum, qs) in sums.iter_mut().zip(inp.qs) {
                    let xq = _mm256_set1_epi32((qs.add(32 * b + 4 * t) as *const i32).read_unaligned());
                    let pairs = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(xq, w));
                    *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, ones));
                }
            }
            sums
        };
        fold_block(block, &inp, b, &sums, &mut acc);
    }
    store_tile(&acc, out);
}

/// Adds one block's integer sums to the tile's float sums in the reference's order:
/// `acc[j] += (d_w · d_x[j]) · sums[j]` for each of the eight rows (both q8_0 tiles).
#[inline(always)]
fn fold_block<const RN: usize>(
    block: &Q8x8Block,
    inp: &Inputs<RN>,
    b: usize,
    sums: &[__m256i; RN],
    acc: &mut [__m256; RN],
) {
    // SAFETY: the callers run with AVX2, FMA and F16C; b < kb (`Inputs::new` asserts the
    // shapes), and a block's 8 scales are 16 readable bytes.
    unsafe {
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(block.d.as_ptr() as *const __m128i));
        for j in 0..RN {
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*inp.d[j].add(b)));
            acc[j] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums[j]), acc[j]);
        }
    }
}

/// Writes a q8_0 tile's sums: input row j's eight row results.
#[inline(always)]
fn store_tile<const RN: usize>(acc: &[__m256; RN], out: &mut GroupOut) {
    for j in 0..RN {
        // SAFETY: the callers run with AVX; a row of the tile's output is GROUP = 8 floats.
        unsafe { _mm256_storeu_ps(out[j].as_mut_ptr(), acc[j]) };
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

/// The 16-bit tile for AVX2: eight weights widened per load, two accumulators per pair (see
/// `AVX2_RUN`). Two weight rows by three input rows: twelve accumulators, two widened weights and
/// one input fill 15 of the 16 registers. (Tried and slower per product on an AMD EPYC: 3x4
/// with the two accumulator sets in turn per block of k. The 3x4 tile with one accumulator per
/// pair, at `e118ea4`, prefills faster and decodes slower: see docs/generation.md.)
pub(super) fn half_tile_avx2<T: Half>(
    rm: usize,
    rn: usize,
    w: &[&[T]; MAX_TILE],
    x: &[&[f32]; MAX_TILE],
    out: &mut TileOut,
) {
    assert!(has_avx2_f16c());
    // SAFETY: the CPU has the features (checked above).
    unsafe { tile_shapes!(rm, rn, half_avx2<T>, (w, x, out), [(2, 3)]) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn half_avx2<T: Half, const RM: usize, const RN: usize>(
    w: &[&[T]; MAX_TILE],
    x: &[&[f32]; MAX_TILE],
    out: &mut TileOut,
) {
    let k = x[0].len();
    assert!(w[..RM].iter().all(|row| row.len() == k) && x[..RN].iter().all(|row| row.len() == k));
    // acc[h][i][jj]: accumulator h (see `AVX2_RUN`) of weight row i and input row jj.
    let mut acc = [[[_mm256_setzero_ps(); RN]; RM]; 2];
    let whole = k / 8 * 8;
    let (wp, xp): ([*const T; RM], [*const f32; RN]) =
        (std::array::from_fn(|i| w[i].as_ptr()), std::array::from_fn(|jj| x[jj].as_ptr()));
    // Weights c (c + 8 ≤ whole ≤ k, the rows' length) into accumulator h.
    let step = |c: usize, h: usize| {
        // SAFETY: as above.
        let wide: [__m256; RM] = std::array::from_fn(|i| widen8(unsafe { wp[i].add(c) }));
        for jj in 0..RN {
            // SAFETY: as above.
            let xv = unsafe { _mm256_loadu_ps(xp[jj].add(c)) };
            for i in 0..RM {
                acc[h][i][jj] = _mm256_fmadd_ps(wide[i], xv, acc[h][i][jj]);
            }
        }
    };
    avx2_order(whole, |_| {}, step);
    for i in 0..RM {
        for jj in 0..RN {
            let sum = _mm256_add_ps(acc[0][i][jj], acc[1][i][jj]);
            out[i][jj] = hsum256(sum) + super::dot_half_scalar(&w[i][whole..], &x[jj][whole..]);
        }
    }
}

/// The AVX2 16-bit kernels sum a row in two accumulators: weights `c` (in runs of eight, below
/// `k / 8 * 8`) go to accumulator `c / AVX2_RUN % 2`, each summed in order, then the two added
/// and the lanes summed, then the scalar tail. The kernels run the two accumulators' runs side
/// by side, so their FMAs form two independent chains.
const AVX2_RUN: usize = 64;

/// The AVX2 kernels' order, the one both follow (so a row alone gets its bits in a tile):
/// `step(c, h)` for weights `c..c + 8` into accumulator `h`, the two accumulators' runs side by
/// side, then the runs left past the last whole pair; `at_pair(base)` before each whole pair.
#[inline(always)]
fn avx2_order(whole: usize, mut at_pair: impl FnMut(usize), mut step: impl FnMut(usize, usize)) {
    let mut base = 0;
    while base + 2 * AVX2_RUN <= whole {
        at_pair(base);
        for c in (base..base + AVX2_RUN).step_by(8) {
            step(c, 0);
            step(c + AVX2_RUN, 1);
        }
        base += 2 * AVX2_RUN;
    }
    for c in (base..whole).step_by(8) {
        step(c, (c - base) / AVX2_RUN);
    }
}

/// One 16-bit weight row times one input row for AVX2 (decode): one sequential stream of
/// weights, summed in the tile's order (the same bits as the row would get in a tile, so a
/// sequence's logits do not depend on how many others share its batch). Two accumulators (see
/// `AVX2_RUN`): with one, each FMA waits for the last (4 cycles for 16 bytes of weights, about
/// 14 GB/s a core), which capped decode below the memory's speed.
pub(super) fn half_row_avx2<T: Half>(w: &[T], x: &[f32]) -> f32 {
    assert!(has_avx2_f16c() && w.len() == x.len());
    // SAFETY: the CPU has the features (checked above).
    unsafe { half_row_avx2_impl(w, x) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn half_row_avx2_impl<T: Half>(w: &[T], x: &[f32]) -> f32 {
    let whole = w.len() / 8 * 8;
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 2];
    // A pair of runs is 256 bytes: four cache lines to ask for, `PREFETCH_AHEAD` on.
    let at_pair =
        |base: usize| (0..2 * AVX2_RUN).step_by(32).for_each(|line| prefetch_l2(wp.wrapping_add(base + line)));
    // Weights c (c + 8 ≤ whole ≤ the rows' length, equal as asserted by the caller) into
    // `acc[h]`. SAFETY: the CPU has the features (the caller's check).
    let step =
        |c: usize, h: usize| acc[h] = unsafe { _mm256_fmadd_ps(widen8(wp.add(c)), _mm256_loadu_ps(xp.add(c)), acc[h]) };
    avx2_order(whole, at_pair, step);
    hsum256(_mm256_add_ps(acc[0], acc[1])) + super::dot_half_scalar(&w[whole..], &x[whole..])
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
        if c % 32 == 0 {
            // Each cache line once (32 weights), `PREFETCH_AHEAD` on.
            prefetch_l2(w.as_ptr().wrapping_add(c));
        }
        // SAFETY: c + 16 ≤ whole ≤ the rows' length (equal, asserted by the caller).
        let xv = unsafe { _mm512_loadu_ps(x.as_ptr().add(c)) };
        acc = _mm512_fmadd_ps(widen16(w[c..].as_ptr()), xv, acc);
    }
    _mm512_reduce_add_ps(acc) + super::dot_half_scalar(&w[whole..], &x[whole..])
}

/// How far ahead of the weight being read the row kernels ask for the cache line, in bytes.
/// A decode step reads each weight once, in rows laid end to end, and the hardware prefetcher
/// alone kept too few lines in flight: 8192-wide rows (`down_proj`, whose 32 KiB of f32
/// activations fill L1) streamed at half the memory's speed. Asked for 16 KiB ahead into L2,
/// they stream at about its speed, and 2048-wide rows no slower (a throwaway microbenchmark on
/// an AMD EPYC; `bench_gen --quantize bf16` shows the effect on whole decode). Past a row's end
/// the line asked for is the next row's.
const PREFETCH_AHEAD: usize = 16 << 10;

/// Asks for the cache line `PREFETCH_AHEAD` bytes past `p` into L2 (a hint: it never faults,
/// so the address may lie past the weights' end; `wrapping_add` keeps it defined).
#[inline(always)]
fn prefetch_l2<T>(p: *const T) {
    let ahead = (p as *const i8).wrapping_add(PREFETCH_AHEAD);
    // SAFETY: a prefetch reads nothing the program sees and does not fault on any address.
    unsafe { _mm_prefetch::<_MM_HINT_T2>(ahead) };
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}
