//! CPU kernels for `x W^T` where candle's are slow, each checked against a scalar reference in
//! the tests below.
//!
//! - q8_0 with a few input rows (decode): candle's `vec_dot_q8_0_q8_0` keeps one accumulator chain
//!   and converts each block's f16 scale through a non-inlined call; profiling a 1B decode put
//!   55 % of the time in it and 7 % in the scale conversion. Here two accumulator chains hide
//!   the FMA latency, the scales are converted inline (F16C), and rayon spreads the rows.
//! - bf16: candle has no bf16 CPU matmul (it widens both operands to f32 on every call, or, for
//!   ggml bf16 blocks, runs a scalar loop). Here decode widens 8 weights at a time in registers
//!   and keeps the activations in f32.
//! - Prefill (more than four input rows) of both: a slice of weight rows is widened to f32 once
//!   and handed to candle's f32 GEMM, instead of quantizing every input row and walking every
//!   block once per row.
//!
//! Written by hand because no maintained crate offers these products on ggml blocks or bf16
//! rows; the activation quantization is candle's own (`BlockQ8_0::from_float`), so a row's
//! integer dot products are the same as candle's and only the float summation order differs.

use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
use candle_core::{Device, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Weight rows per parallel task: enough work to amortize scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 64;

/// The layout of a ggml q8_0 block (`BlockQ8_0` is `repr(C)`, 34 bytes, its fields private).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Q8Block {
    d: u16,
    qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<Q8Block>() == std::mem::size_of::<BlockQ8_0>());

/// `dst (m, n) = lhs (m, k) · W^T` for q8_0 weights `w` (`n` rows of `k / 32` blocks).
pub(crate) fn matmul_q8_0(m: usize, k: usize, lhs: &[f32], w: &[Q8Block], dst: &mut [f32]) -> candle_core::Result<()> {
    let per_row = k / 32;
    let n = w.len() / per_row;
    if m > 4 {
        // SAFETY: same size and layout as candle's block (checked above).
        let blocks: &[BlockQ8_0] = unsafe { std::slice::from_raw_parts(w.as_ptr() as *const BlockQ8_0, w.len()) };
        return widened_gemm(m, k, n, lhs, dst, |j, out| {
            BlockQ8_0::to_float(&blocks[j * per_row..(j + 1) * per_row], out)
        });
    }
    let mut x = vec![BlockQ8_0::zeros(); m * per_row];
    for (row, out) in lhs.chunks(k).zip(x.chunks_mut(per_row)) {
        BlockQ8_0::from_float(row, out);
    }
    // SAFETY: same size and layout (checked above), and Q8Block has no invalid bit patterns.
    let x: &[Q8Block] = unsafe { std::slice::from_raw_parts(x.as_ptr() as *const Q8Block, x.len()) };
    let dot = dot_q8_0_fn();
    rows_times_inputs(m, n, dst, |j, r| dot(&w[j * per_row..(j + 1) * per_row], &x[r * per_row..(r + 1) * per_row]));
    Ok(())
}

/// `dst (m, n) = lhs (m, k) · W^T` for bf16 weights `w` (`n` rows of `k`), activations in f32.
pub(crate) fn matmul_bf16(m: usize, k: usize, lhs: &[f32], w: &[bf16], dst: &mut [f32]) -> candle_core::Result<()> {
    let n = w.len() / k;
    if m > 4 {
        return widened_gemm(m, k, n, lhs, dst, |j, out| {
            out.iter_mut().zip(&w[j * k..(j + 1) * k]).for_each(|(o, i)| *o = i.to_f32())
        });
    }
    let dot = dot_bf16_fn();
    rows_times_inputs(m, n, dst, |j, r| dot(&w[j * k..(j + 1) * k], &lhs[r * k..(r + 1) * k]));
    Ok(())
}

/// Many input rows (prefill): widens a slice of weight rows to f32 once (`widen(j, out)` writes
/// row `j`) and lets candle's f32 GEMM reuse it across all inputs, so the weights are converted
/// once per call instead of the activations being quantized and every block walked per row.
fn widened_gemm(
    m: usize,
    k: usize,
    n: usize,
    lhs: &[f32],
    dst: &mut [f32],
    widen: impl Fn(usize, &mut [f32]) + Sync,
) -> candle_core::Result<()> {
    let x = Tensor::from_slice(lhs, (m, k), &Device::Cpu)?;
    let rows = (1 << 18) / k.max(1) + 1;
    for j0 in (0..n).step_by(rows) {
        let j1 = (j0 + rows).min(n);
        let mut wide = vec![0f32; (j1 - j0) * k];
        wide.par_chunks_mut(k).enumerate().for_each(|(i, out)| widen(j0 + i, out));
        let y = x.matmul(&Tensor::from_vec(wide, (j1 - j0, k), &Device::Cpu)?.t()?)?;
        for (r, vals) in y.to_vec2::<f32>()?.into_iter().enumerate() {
            dst[r * n + j0..r * n + j1].copy_from_slice(&vals);
        }
    }
    Ok(())
}

/// Fills `dst (m, n)` with `f(j, r)` for weight row `j` and input row `r`, weight rows spread
/// over rayon's threads, each row visited once for all inputs.
fn rows_times_inputs(m: usize, n: usize, dst: &mut [f32], f: impl Fn(usize, usize) -> f32 + Sync) {
    let mut by_row = vec![0f32; n * m];
    by_row.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(t, out)| {
        for (i, vals) in out.chunks_mut(m).enumerate() {
            let j = t * ROWS_PER_TASK + i;
            vals.iter_mut().enumerate().for_each(|(r, v)| *v = f(j, r));
        }
    });
    for (j, vals) in by_row.chunks(m).enumerate() {
        for (r, &v) in vals.iter().enumerate() {
            dst[r * n + j] = v;
        }
    }
}

type DotQ8 = fn(&[Q8Block], &[Q8Block]) -> f32;
type DotBf16 = fn(&[bf16], &[f32]) -> f32;

fn dot_q8_0_fn() -> DotQ8 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU has the features the function is compiled for.
        return |w, x| unsafe { x86::dot_q8_0(w, x) };
    }
    dot_q8_0_scalar
}

fn dot_bf16_fn() -> DotBf16 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: as above.
        return |w, x| unsafe { x86::dot_bf16(w, x) };
    }
    dot_bf16_scalar
}

/// The reference: each block's integer dot product, scaled by both scales, summed in order.
pub(crate) fn dot_q8_0_scalar(w: &[Q8Block], x: &[Q8Block]) -> f32 {
    w.iter()
        .zip(x)
        .map(|(a, b)| {
            let q: i32 = a.qs.iter().zip(&b.qs).map(|(&p, &q)| p as i32 * q as i32).sum();
            f16::from_bits(a.d).to_f32() * f16::from_bits(b.d).to_f32() * q as f32
        })
        .sum()
}

/// The reference: widened weights times activations, summed in order.
pub(crate) fn dot_bf16_scalar(w: &[bf16], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(a, b)| a.to_f32() * b).sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::bf16;

    use super::Q8Block;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale(bits: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Eight partial sums (as f32) of the signed byte products of one block pair.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_products(a: &Q8Block, b: &Q8Block) -> __m256 {
        let qa = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
        let qb = _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i);
        // maddubs multiplies unsigned by signed bytes: move a's signs onto b.
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(qa, qa), _mm256_sign_epi8(qb, qa));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q8_0(w: &[Q8Block], x: &[Q8Block]) -> f32 {
        // Two independent accumulator chains hide the FMA latency.
        let mut acc = [_mm256_setzero_ps(); 2];
        for (i, (a, b)) in w.iter().zip(x).enumerate() {
            let d = _mm256_set1_ps(scale(a.d) * scale(b.d));
            acc[i & 1] = _mm256_fmadd_ps(d, block_products(a, b), acc[i & 1]);
        }
        hsum(_mm256_add_ps(acc[0], acc[1]))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (u, a) in acc.iter_mut().enumerate() {
                let raw = _mm_loadu_si128(w.as_ptr().add(i + 8 * u) as *const __m128i);
                // bf16 is the top half of an f32: widening is a 16-bit shift, exact.
                let wide = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
                *a = _mm256_fmadd_ps(wide, _mm256_loadu_ps(x.as_ptr().add(i + 8 * u)), *a);
            }
            i += 32;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = hsum(sum);
        for j in i..n {
            total += w[j].to_f32() * x[j];
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Rng;

    fn random(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale).collect()
    }

    fn quantized(w: &[f32]) -> Vec<Q8Block> {
        let mut blocks = vec![BlockQ8_0::zeros(); w.len() / 32];
        BlockQ8_0::from_float(w, &mut blocks);
        blocks.iter().map(|b| unsafe { *(b as *const BlockQ8_0 as *const Q8Block) }).collect()
    }

    fn close(a: f32, b: f64, scale: f64) {
        assert!((a as f64 - b).abs() <= 1e-5 * scale, "{a} vs {b}");
    }

    #[test]
    fn q8_0_matmul_equals_the_scalar_reference_and_candles_kernel() {
        let mut rng = Rng::new(7);
        for (m, k, n) in [(1, 64, 130), (3, 2048, 70), (4, 96, 1)] {
            let (lhs, wf) = (random(&mut rng, m * k, 8.0), random(&mut rng, n * k, 0.2));
            let w = quantized(&wf);
            let mut dst = vec![0f32; m * n];
            matmul_q8_0(m, k, &lhs, &w, &mut dst).unwrap();
            let mut candle = vec![0f32; m * n];
            let mut wb = vec![BlockQ8_0::zeros(); n * k / 32];
            BlockQ8_0::from_float(&wf, &mut wb);
            candle_core::quantized::k_quants::matmul((m, k, n), &lhs, &wb, &mut candle).unwrap();
            for r in 0..m {
                let x = quantized(&lhs[r * k..(r + 1) * k]);
                for j in 0..n {
                    let row = &w[j * k / 32..(j + 1) * k / 32];
                    let exact: f64 = row
                        .iter()
                        .zip(&x)
                        .map(|(a, b)| {
                            let q: i64 = a.qs.iter().zip(&b.qs).map(|(&p, &q)| p as i64 * q as i64).sum();
                            (f16::from_bits(a.d).to_f32() * f16::from_bits(b.d).to_f32()) as f64 * q as f64
                        })
                        .sum();
                    let scale: f64 = lhs[r * k..(r + 1) * k].iter().map(|v| v.abs() as f64).sum::<f64>() * 0.2;
                    close(dst[r * n + j], exact, scale);
                    close(dot_q8_0_scalar(row, &x), exact, scale);
                    close(candle[r * n + j], exact, scale);
                }
            }
        }
    }

    #[test]
    fn q8_0_prefill_equals_the_dequantized_f64_product() {
        let mut rng = Rng::new(5);
        let (m, k, n) = (9, 96, 70);
        let (lhs, wf) = (random(&mut rng, m * k, 8.0), random(&mut rng, n * k, 0.2));
        let w = quantized(&wf);
        let mut dst = vec![0f32; m * n];
        matmul_q8_0(m, k, &lhs, &w, &mut dst).unwrap();
        for r in 0..m {
            for j in 0..n {
                let (mut exact, mut scale) = (0f64, 0f64);
                for (b, block) in w[j * k / 32..(j + 1) * k / 32].iter().enumerate() {
                    let d = f16::from_bits(block.d).to_f64();
                    for (i, &q) in block.qs.iter().enumerate() {
                        let p = d * q as f64 * lhs[r * k + b * 32 + i] as f64;
                        exact += p;
                        scale += p.abs();
                    }
                }
                close(dst[r * n + j], exact, scale);
            }
        }
    }

    #[test]
    fn bf16_matmul_equals_the_widened_f64_product() {
        let mut rng = Rng::new(11);
        for (m, k, n) in [(1, 33, 9), (2, 2048, 67), (4, 100, 5), (9, 130, 300)] {
            let lhs = random(&mut rng, m * k, 4.0);
            let w: Vec<bf16> = random(&mut rng, n * k, 0.5).into_iter().map(bf16::from_f32).collect();
            let mut dst = vec![0f32; m * n];
            matmul_bf16(m, k, &lhs, &w, &mut dst).unwrap();
            for r in 0..m {
                for j in 0..n {
                    let (row, x) = (&w[j * k..(j + 1) * k], &lhs[r * k..(r + 1) * k]);
                    let exact: f64 = row.iter().zip(x).map(|(a, b)| a.to_f64() * *b as f64).sum();
                    let scale: f64 = row.iter().zip(x).map(|(a, b)| (a.to_f64() * *b as f64).abs()).sum();
                    close(dst[r * n + j], exact, scale);
                    close(dot_bf16_scalar(row, x), exact, scale);
                }
            }
        }
    }
}
