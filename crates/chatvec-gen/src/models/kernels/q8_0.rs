//! q8_0 weights interleaved eight rows at a time, and their GEMM.
//!
//! A q8_0 row is blocks of 32 int8 quants with one f16 scale (ggml's `block_q8_0`). At load the
//! rows are regrouped eight at a time ([`Q8x8Block`]): for each block index, the eight rows'
//! scales, then their quants in runs of four bytes, row after row (`qs[32·t + 4·i + c]` is quant
//! `4·t + c` of row `i`). One 32-byte load then holds four quants of each of the eight rows, and
//! one `dpbusd` (or `maddubs` + `madd`) against four input quants broadcast to every lane adds
//! four products to each row's sum: after eight loads each lane holds its row's whole block dot
//! product. The float work (convert, scale, accumulate) is then done once per eight rows, not
//! once per row as with ggml's layout, which was what bounded the previous tiles. The size is
//! ggml's (272 bytes for eight blocks of 34).
//!
//! The quants are stored plus 128 (as unsigned bytes), the form `dpbusd` multiplies: the input's
//! `128·Σx` per block is subtracted (exact in i32). AVX2 recovers the signed quants with one xor.
//!
//! With AVX-512 VNNI the tile takes two groups at once (sixteen rows in the lanes of 512-bit
//! vectors): half the instructions per product, which were what bounded the eight-row tile
//! (512-token prefill of the 1B shape at q8_0: 4.6–4.8 CPU-seconds instead of 5.7–5.9, on the
//! AMD EPYC, `bench_gen --quantize q8_0 --prompt 512 --new 16`, two alternating runs each).
//!
//! Every output is `Σ_b fma(f16(d_w)·d_x, dot_b, ·)` summed block by block in order, in one lane
//! per row: the integer dot products are exact, so every tier, tile shape and batch gives the
//! bits of the scalar reference [`dot_reference`]. The input rows are quantized as llama.cpp does
//! (`quantize_row_q8_0`).

use chatvec_format::SimdTier;
use half::f16;
use rayon::prelude::*;

use super::{Q8Block, SharedOut};

/// Rows per group.
pub(crate) const GROUP: usize = 8;
/// Groups of one rectangle of work: 64 rows.
const RECT_GROUPS: usize = 8;
/// Input rows of one rectangle.
const RECT_INPUT_ROWS: usize = 64;
/// The most input rows a tile takes at once (the tiles are compiled for `1..=MAX_INPUTS`).
pub(crate) const MAX_INPUTS: usize = 8;
/// Input rows from which the VNNI tile takes two groups at once. With one input row (decode) the
/// weights' bandwidth bounds the tile, and two groups side by side are two memory streams 17 KB
/// apart (k = 2048): 22.3-22.4 tokens/s against 23.4-32.0 with one group, one sequential stream
/// (AMD EPYC, `bench_gen --quantize q8_0 --prompt 16 --new 64`, three alternating runs). From two
/// rows the products bound it.
const PAIR_FROM_INPUTS: usize = 2;
/// Input rows of an AVX2 tile: with four, the sixteen ymm registers spilled to the stack, and
/// prefill at 512 tokens took 1.3x the CPU time it takes with three (two: as three; AMD EPYC,
/// `CHATVEC_SIMD=avx2 bench_gen --quantize q8_0 --prompt 512 --new 1`).
const AVX2_INPUTS: usize = 3;

/// One block index of eight rows: their scales, and their quants plus 128, interleaved four
/// bytes at a time (see the module doc).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Q8x8Block {
    pub(crate) d: [u16; GROUP],
    pub(crate) qs: [u8; 32 * GROUP],
}
const _: () = assert!(std::mem::size_of::<Q8x8Block>() == GROUP * std::mem::size_of::<Q8Block>());

impl Q8x8Block {
    /// Row `i`'s block, as ggml stores it.
    pub(crate) fn get(&self, i: usize) -> Q8Block {
        Q8Block { d: self.d[i], qs: std::array::from_fn(|q| (self.qs[32 * (q / 4) + 4 * i + q % 4] ^ 0x80) as i8) }
    }

    /// Sets row `i`'s block.
    pub(crate) fn set(&mut self, i: usize, block: &Q8Block) {
        self.d[i] = block.d;
        for (q, &v) in block.qs.iter().enumerate() {
            self.qs[32 * (q / 4) + 4 * i + q % 4] = v as u8 ^ 0x80;
        }
    }

    /// Sets row `i`'s block from its 34 bytes as ggml stores them (f16 scale, 32 quants), four
    /// quants at a time.
    pub(crate) fn set_ggml(&mut self, i: usize, block: &[u8; 34]) {
        self.d[i] = u16::from_le_bytes([block[0], block[1]]);
        for (quad, qs) in block[2..].chunks_exact(4).enumerate() {
            let q = u32::from_le_bytes(qs.try_into().expect("four bytes")) ^ 0x8080_8080;
            self.qs[32 * quad + 4 * i..][..4].copy_from_slice(&q.to_le_bytes());
        }
    }
}

/// A `(n, k)` q8_0 matrix in groups of eight rows (the last group padded with zero rows).
#[derive(Debug)]
pub(crate) struct Q8x8Matrix {
    n: usize,
    k: usize,
    blocks: Vec<Q8x8Block>,
}

impl Q8x8Matrix {
    /// `n` rows of `k` (a multiple of 32) with zero scales, from zeroed memory on huge pages
    /// ([`crate::alloc::zeroed_weights`]). The padding rows of the last group keep their zero
    /// scales, so they add nothing.
    pub(crate) fn zeros(n: usize, k: usize) -> Q8x8Matrix {
        assert!(k.is_multiple_of(32), "q8_0 rows are whole blocks");
        let len = n.div_ceil(GROUP) * (k / 32);
        // SAFETY: all-zero bytes are a valid block (plain integers: zero scales).
        let blocks = unsafe { crate::alloc::zeroed_weights::<Q8x8Block>(len) };
        Q8x8Matrix { n, k, blocks }
    }

    /// Regroups ggml q8_0 rows (`n` rows of `k / 32` blocks).
    pub(crate) fn from_rows(n: usize, k: usize, rows: &[Q8Block]) -> Q8x8Matrix {
        let mut m = Q8x8Matrix::zeros(n, k);
        let kb = k / 32;
        assert_eq!(rows.len(), n * kb, "q8_0 blocks of a ({n}, {k}) matrix");
        m.blocks.par_chunks_mut(kb.max(1)).enumerate().for_each(|(g, group)| {
            for (i, row) in rows.chunks_exact(kb).skip(g * GROUP).take(GROUP).enumerate() {
                group.iter_mut().zip(row).for_each(|(dst, block)| dst.set(i, block));
            }
        });
        m
    }

    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The groups, each `k / 32` blocks long, for filling in parallel.
    pub(crate) fn groups_mut(&mut self) -> std::slice::ChunksExactMut<'_, Q8x8Block> {
        let kb = (self.k / 32).max(1);
        self.blocks.chunks_exact_mut(kb)
    }

    fn group(&self, g: usize) -> &[Q8x8Block] {
        let kb = self.k / 32;
        &self.blocks[g * kb..(g + 1) * kb]
    }

    /// Row `r` as ggml's blocks.
    #[cfg(test)]
    pub(crate) fn row(&self, r: usize) -> Vec<Q8Block> {
        self.group(r / GROUP).iter().map(|b| b.get(r % GROUP)).collect()
    }

    /// Row `r` dequantized into `out` (`k` long), as ggml's `dequantize_row_q8_0`.
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        for (block, out) in self.group(r / GROUP).iter().zip(out.chunks_exact_mut(32)) {
            let b = block.get(r % GROUP);
            let d = f16::from_bits(b.d).to_f32();
            out.iter_mut().zip(b.qs).for_each(|(o, q)| *o = q as f32 * d);
        }
    }
}

/// Input rows quantized to q8_0 for the GEMM: each row's quants contiguous; per block its scale
/// (f16-rounded as llama.cpp stores it) as f32, and `-128·Σq` (the correction for weights stored
/// plus 128).
pub(crate) struct Q8Rows {
    pub(crate) k: usize,
    pub(crate) qs: Vec<i8>,
    pub(crate) d: Vec<f32>,
    pub(crate) minus_128_sum: Vec<i32>,
}

impl Q8Rows {
    /// Quantizes the rows of `lhs` (each `k` long, `k` a multiple of 32) as llama.cpp's
    /// `quantize_row_q8_0_ref` does.
    pub(crate) fn quantize(tier: SimdTier, lhs: &[f32], k: usize) -> Q8Rows {
        let blocks = lhs.len() / 32;
        let (mut qs, mut d, mut minus_128_sum) = (vec![0i8; lhs.len()], vec![0f32; blocks], vec![0i32; blocks]);
        let outs = qs.par_chunks_mut(k).zip(d.par_chunks_mut(k / 32)).zip(minus_128_sum.par_chunks_mut(k / 32));
        outs.zip(lhs.par_chunks(k)).for_each(|(((q, d), s), x)| {
            chatvec_format::dispatch_simd!(tier, quantize_row, (), (x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [i32]))
        });
        Q8Rows { k, qs, d, minus_128_sum }
    }

    pub(crate) fn rows(&self) -> usize {
        self.qs.len() / self.k.max(1)
    }

    /// Row `r`'s quants and scales.
    pub(crate) fn row(&self, r: usize) -> (&[i8], &[f32]) {
        (&self.qs[r * self.k..(r + 1) * self.k], &self.d[r * self.k / 32..(r + 1) * self.k / 32])
    }
}

/// One row, block by block (the rule is `chatvec_format::q8_0`'s, inlined so it vectorizes).
#[inline(always)]
fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [i32]) {
    for (((x, q), d), s) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)).zip(d).zip(s) {
        *d = f16::from_bits(chatvec_format::q8_0::quantize_block(x, q)).to_f32();
        *s = -128 * q.iter().map(|&v| v as i32).sum::<i32>();
    }
}

/// The reference for one output: weight row `w` (ggml blocks) times quantized input row `x`,
/// each block's exact integer dot product scaled by `f16(d_w)·d_x` and accumulated with one
/// rounding (a fused multiply-add), block by block in order.
pub(crate) fn dot_reference(w: &[Q8Block], (xq, xd): (&[i8], &[f32])) -> f32 {
    w.iter().zip(xq.chunks_exact(32).zip(xd)).fold(0f32, |acc, (block, (q, d))| {
        let dot: i32 = block.qs.iter().zip(q).map(|(&a, &b)| a as i32 * b as i32).sum();
        (f16::from_bits(block.d).to_f32() * d).mul_add(dot as f32, acc)
    })
}

/// One tile's results, `[input row][row of the group]`.
pub(crate) type TileOut = [[f32; GROUP]; MAX_INPUTS];

/// The baseline tile: the reference for each of the group's rows and each input row.
fn tile_reference(group: &[Q8x8Block], x: &Q8Rows, r: usize, inputs: usize, out: &mut TileOut) {
    for (j, out) in out.iter_mut().enumerate().take(inputs) {
        for (i, out) in out.iter_mut().enumerate() {
            let row: Vec<Q8Block> = group.iter().map(|b| b.get(i)).collect();
            *out = dot_reference(&row, x.row(r + j));
        }
    }
}

/// `dst (m, n) = lhs (m, k) · W^T` for a q8_0 matrix `w`.
pub(crate) fn matmul_q8_0(m: usize, lhs: &[f32], w: &Q8x8Matrix, dst: &mut [f32]) {
    matmul_q8_0_with(SimdTier::active(), m, lhs, w, dst)
}

/// [`matmul_q8_0`] at a given tier (one the CPU supports).
pub(crate) fn matmul_q8_0_with(tier: SimdTier, m: usize, lhs: &[f32], w: &Q8x8Matrix, dst: &mut [f32]) {
    let (n, k) = w.shape();
    assert!(lhs.len() == m * k && dst.len() == m * n, "q8_0 matmul shapes");
    let x = Q8Rows::quantize(tier, lhs, k);
    match tier {
        #[cfg(target_arch = "x86_64")]
        SimdTier::Avx512 if super::x86::has_vnni() => {
            tiled(m, w, dst, 8, PAIR_FROM_INPUTS, |g, groups, r, inputs, out| {
                if groups == 2 {
                    super::x86::q8x16_tile_vnni([w.group(g), w.group(g + 1)], &x, r, inputs, out)
                } else {
                    super::x86::q8x8_tile_vnni(w.group(g), &x, r, inputs, &mut out[0])
                }
            })
        }
        #[cfg(target_arch = "x86_64")]
        SimdTier::Avx2 | SimdTier::Avx512 => tiled(m, w, dst, AVX2_INPUTS, usize::MAX, |g, _, r, inputs, out| {
            super::x86::q8x8_tile_avx2(w.group(g), &x, r, inputs, &mut out[0])
        }),
        _ => tiled(m, w, dst, 1, usize::MAX, |g, _, r, inputs, out| {
            tile_reference(w.group(g), &x, r, inputs, &mut out[0])
        }),
    }
}

/// Fills `dst (m, n)`: `tile(g, groups, r, inputs, out)` multiplies groups `g..g + groups` by
/// input rows `r..r + inputs` (at most `most_inputs`) into `out[..groups]`; `groups` is 2 where a
/// rectangle has at least `pairs_from` input rows and two groups remain, else 1. Rectangles of
/// groups × input rows run in parallel; inside one, each group meets all its input rows while it
/// is in cache.
fn tiled(
    m: usize,
    w: &Q8x8Matrix,
    dst: &mut [f32],
    most_inputs: usize,
    pairs_from: usize,
    tile: impl Fn(usize, usize, usize, usize, &mut [TileOut; 2]) + Sync,
) {
    let groups = w.n.div_ceil(GROUP);
    if m == 0 || groups == 0 {
        return;
    }
    let input_rects = m.div_ceil(RECT_INPUT_ROWS);
    let rects = groups.div_ceil(RECT_GROUPS) * input_rects;
    let out = SharedOut { ptr: dst.as_mut_ptr(), n: w.n };
    (0..rects).into_par_iter().for_each(|t| {
        let gs = (t / input_rects) * RECT_GROUPS..((t / input_rects + 1) * RECT_GROUPS).min(groups);
        let rs = (t % input_rects) * RECT_INPUT_ROWS..((t % input_rects + 1) * RECT_INPUT_ROWS).min(m);
        let mut vals = [[[0f32; GROUP]; MAX_INPUTS]; 2];
        let mut g = gs.start;
        while g < gs.end {
            let taken = if rs.len() >= pairs_from { 2.min(gs.end - g) } else { 1 };
            for r in rs.clone().step_by(most_inputs) {
                let inputs = most_inputs.min(rs.end - r);
                tile(g, taken, r, inputs, &mut vals);
                for (i, vals) in vals[..taken].iter().enumerate() {
                    let rows = (g + i) * GROUP..((g + i + 1) * GROUP).min(w.n);
                    out.store_transposed(vals, rows, r..r + inputs);
                }
            }
            g += taken;
        }
    });
}

#[cfg(test)]
#[path = "q8_0_tests.rs"]
mod tests;
