//! CPU kernels for `x W^T` with compact weights, where candle's are slow: q8_0 and bf16/f16, for
//! one input row (decode) and many (prefill), at the SIMD tier the process runs at (AVX-512,
//! AVX2+FMA+F16C, or the baseline; `CHATVEC_SIMD` forces one).
//!
//! - q8_0 (`q8_0.rs`): weights regrouped eight rows at a time at load, input rows quantized per
//!   32-block as llama.cpp does; integer dot products, one float accumulation per block for eight
//!   rows at once. Every tier gives the scalar reference's bits.
//! - bf16/f16 (here): weights widened in registers (exact), activations in f32, FMA.
//!
//! Both run as a blocked GEMM: the output is cut into rectangles of weight rows × input rows,
//! spread over rayon's threads; inside one, a tile of a few weight rows meets a few input rows, so
//! each weight block loaded is used for every input row of the tile, and the weight rows of a
//! rectangle stay in cache while all its input rows pass. Nothing is widened or copied per call
//! but the quantized input rows.
//!
//! Written by hand because no maintained crate offers these products on ggml blocks or bf16
//! rows (candle's q8_0 kernel is one dot product at a time, its bf16 path widens both operands).
//! The baseline tier is the scalar reference itself.

use candle_core::quantized::k_quants::BlockQ8_0;
use chatvec_format::SimdTier;
use half::{bf16, f16};
use rayon::prelude::*;

pub(crate) mod attention;
pub(crate) mod q8_0;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Weight rows of one rectangle: 64 q8_0 rows of 8192 are 544 KiB, about an L2 cache.
const RECT_WEIGHT_ROWS: usize = 64;
/// Input rows of one rectangle.
const RECT_INPUT_ROWS: usize = 64;
/// The largest tile edge any tier uses.
const MAX_TILE: usize = 8;

/// The layout of a ggml q8_0 block (`BlockQ8_0` is `repr(C)`, 34 bytes, its fields private).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Q8Block {
    pub(crate) d: u16,
    pub(crate) qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<Q8Block>() == std::mem::size_of::<BlockQ8_0>());

/// A 16-bit float weight type the GEMM widens in registers: bf16 (a 16-bit shift, exact) or
/// IEEE f16 (F16C's `cvtph_ps`, exact).
pub(crate) trait Half: Copy + Send + Sync + 'static {
    /// Whether the bits are IEEE binary16 (else bfloat16).
    const IS_F16: bool;
    /// The value as f32 (exact).
    fn widen(self) -> f32;
}

impl Half for bf16 {
    const IS_F16: bool = false;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Half for f16 {
    const IS_F16: bool = true;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// `dst (m, n) = lhs (m, k) · W^T` for bf16 or f16 weights `w` (`n` rows of `k`), activations
/// in f32.
pub(crate) fn matmul_half<T: Half>(m: usize, k: usize, lhs: &[f32], w: &[T], dst: &mut [f32]) {
    matmul_half_with(SimdTier::active(), m, k, lhs, w, dst)
}

/// [`matmul_half`] at a given tier (one the CPU supports).
pub(crate) fn matmul_half_with<T: Half>(tier: SimdTier, m: usize, k: usize, lhs: &[f32], w: &[T], dst: &mut [f32]) {
    let n = w.len() / k.max(1);
    assert!(lhs.len() == m * k && dst.len() == m * n, "16-bit matmul shapes");
    let weight_row = |j: usize| &w[j * k..(j + 1) * k];
    let input_row = |r: usize| &lhs[r * k..(r + 1) * k];
    match tier {
        #[cfg(target_arch = "x86_64")]
        SimdTier::Avx512 => tiled(
            m,
            n,
            dst,
            (4, 4),
            |j, r, out| x86::half_tile_avx512(4, 4, &rows(j, n, weight_row), &rows(r, m, input_row), out),
            |j, r| x86::half_row_avx512(weight_row(j), input_row(r)),
        ),
        #[cfg(target_arch = "x86_64")]
        SimdTier::Avx2 => tiled(
            m,
            n,
            dst,
            (2, 3),
            |j, r, out| x86::half_tile_avx2(2, 3, &rows(j, n, weight_row), &rows(r, m, input_row), out),
            |j, r| x86::half_row_avx2(weight_row(j), input_row(r)),
        ),
        _ => {
            let dot = |j: usize, r: usize| dot_half_scalar(weight_row(j), input_row(r));
            tiled(m, n, dst, (1, 1), |j, r, out| out[0][0] = dot(j, r), dot)
        }
    }
}

/// `MAX_TILE` consecutive rows from `start`, the ones past `len` repeating the last (their
/// results are computed and dropped, which keeps the tiles branch-free).
fn rows<'a, T: ?Sized>(start: usize, len: usize, row: impl Fn(usize) -> &'a T) -> [&'a T; MAX_TILE] {
    std::array::from_fn(|i| row((start + i).min(len - 1)))
}

/// One tile's results, `[weight row][input row]`.
type TileOut = [[f32; MAX_TILE]; MAX_TILE];

/// Fills `dst (m, n)`: `tile(j, r, out)` computes weight rows `j..j+rm` against input rows
/// `r..r+rn` (`full = (rm, rn)`; rows past the ends repeat the last) into `out`, and `dot(j, r)`
/// one weight row against one input row, for decode and the input rows left over. The dot runs
/// one weight row at a time because one sequential stream is what the hardware prefetcher
/// follows best: reading four rows side by side ran at half the memory speed (measured on an
/// AMD EPYC, q8_0 and 2048-wide rows). Rectangles of weight rows × input rows run in parallel.
fn tiled(
    m: usize,
    n: usize,
    dst: &mut [f32],
    full: (usize, usize),
    tile: impl Fn(usize, usize, &mut TileOut) + Sync,
    dot: impl Fn(usize, usize) -> f32 + Sync,
) {
    if m == 0 || n == 0 {
        return;
    }
    let input_rects = m.div_ceil(RECT_INPUT_ROWS);
    let rects = n.div_ceil(RECT_WEIGHT_ROWS) * input_rects;
    let out = SharedOut { ptr: dst.as_mut_ptr(), n };
    (0..rects).into_par_iter().for_each(|t| {
        let js = (t / input_rects) * RECT_WEIGHT_ROWS..((t / input_rects + 1) * RECT_WEIGHT_ROWS).min(n);
        let rs = (t % input_rects) * RECT_INPUT_ROWS..((t % input_rects + 1) * RECT_INPUT_ROWS).min(m);
        let (rm, rn) = full;
        let whole = rs.start + (rs.len() / rn) * rn;
        let mut vals = [[0f32; MAX_TILE]; MAX_TILE];
        for j in js.clone().step_by(rm) {
            for r in (rs.start..whole).step_by(rn) {
                tile(j, r, &mut vals);
                out.store(&vals, j..(j + rm).min(js.end), r..r + rn);
            }
        }
        for r in whole..rs.end {
            for j in js.clone() {
                out.store_one(j, r, dot(j, r));
            }
        }
    });
}

/// The output matrix, written by rayon tasks at disjoint (weight row, input row) rectangles.
struct SharedOut {
    ptr: *mut f32,
    n: usize,
}

// SAFETY: tasks write disjoint elements (each rectangle belongs to one task) and the matrix
// outlives them (`for_each` returns when all are done).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn store_one(&self, j: usize, r: usize, val: f32) {
        // SAFETY: as in `store`.
        unsafe { *self.ptr.add(r * self.n + j) = val };
    }

    /// A q8_0 tile's results, `vals[input row][row of the group]`, at rows `js` × inputs `rs`.
    fn store_transposed(&self, vals: &q8_0::TileOut, js: std::ops::Range<usize>, rs: std::ops::Range<usize>) {
        for (jj, r) in rs.enumerate() {
            for (i, j) in js.clone().enumerate() {
                // SAFETY: as in `store`.
                unsafe { *self.ptr.add(r * self.n + j) = vals[jj][i] };
            }
        }
    }

    fn store(&self, vals: &TileOut, js: std::ops::Range<usize>, rs: std::ops::Range<usize>) {
        for (i, j) in js.enumerate() {
            for (jj, r) in rs.clone().enumerate() {
                // SAFETY: r < m and j < n (the callers clamp both), so the index is inside the
                // m·n matrix; no other task writes this element (see `Sync` above).
                unsafe { *self.ptr.add(r * self.n + j) = vals[i][jj] };
            }
        }
    }
}

/// The reference: widened weights times activations, summed in order.
pub(crate) fn dot_half_scalar<T: Half>(w: &[T], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(a, b)| a.widen() * b).sum()
}

#[cfg(test)]
mod tests;
