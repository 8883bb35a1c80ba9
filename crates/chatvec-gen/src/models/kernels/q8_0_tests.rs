//! The q8_0 GEMM: the regrouped layout holds ggml's blocks; every tier, tile shape and batch gives
//! the scalar reference's bits; the reference is the exact product within rounding and agrees with
//! candle's q8_0 kernel (ggml's `vec_dot_q8_0_q8_0`); the input rows quantize to llama.cpp's blocks.

use candle_core::quantized::k_quants::{self, BlockQ8_0, GgmlType};
use chatvec_format::SimdTier;
use half::f16;

use super::super::tests::{random, small_int};
use super::*;
use crate::sampling::Rng;

/// candle's q8_0 blocks of `x` (its `from_float` is llama.cpp's `quantize_row_q8_0_ref`).
fn candle_blocks(x: &[f32]) -> Vec<Q8Block> {
    let mut blocks = vec![BlockQ8_0::zeros(); x.len() / 32];
    BlockQ8_0::from_float(x, &mut blocks);
    // SAFETY: same size and layout (checked in kernels.rs); any bits are a valid Q8Block.
    blocks.iter().map(|b| unsafe { *(b as *const BlockQ8_0 as *const Q8Block) }).collect()
}

/// Random ggml blocks, the extremes (-128 and 127 quants, subnormal and large scales) included.
fn random_blocks(rng: &mut Rng, count: usize) -> Vec<Q8Block> {
    (0..count)
        .map(|b| Q8Block {
            d: match b % 5 {
                0 => 0x0001,                          // the smallest subnormal
                1 => f16::from_f32(1000.0).to_bits(), // large
                _ => f16::from_f32((rng.next_u64() % 1000) as f32 * 1e-4).to_bits(),
            },
            qs: std::array::from_fn(|i| match (b + i) % 7 {
                0 => -128,
                1 => 127,
                _ => small_int(rng, 127) as i8,
            }),
        })
        .collect()
}

#[test]
fn a_block_set_from_ggml_bytes_holds_what_get_reads_back() {
    let mut rng = Rng::new(11);
    let blocks = random_blocks(&mut rng, 16);
    let mut group = Q8x8Block { d: [0; GROUP], qs: [0; 32 * GROUP] };
    for (i, b) in blocks.iter().take(GROUP).enumerate() {
        let mut bytes = [0u8; 34];
        bytes[..2].copy_from_slice(&b.d.to_le_bytes());
        bytes[2..].iter_mut().zip(b.qs).for_each(|(o, q)| *o = q as u8);
        group.set_ggml(i, &bytes);
    }
    for (i, b) in blocks.iter().take(GROUP).enumerate() {
        assert_eq!(group.get(i), *b, "row {i}");
    }
}

#[test]
fn regrouped_rows_hold_ggmls_blocks() {
    let mut rng = Rng::new(1);
    for (n, k) in [(1, 32), (7, 64), (8, 96), (13, 256), (70, 32)] {
        let rows = random_blocks(&mut rng, n * k / 32);
        let m = Q8x8Matrix::from_rows(n, k, &rows);
        assert_eq!(m.shape(), (n, k));
        let mut widened = vec![0f32; k];
        for (r, want) in rows.chunks_exact(k / 32).enumerate() {
            assert!(m.row(r) == want, "({n}, {k}) row {r}");
            m.dequantize_row(r, &mut widened);
            for (i, v) in widened.iter().enumerate() {
                let block = &want[i / 32];
                assert_eq!(v.to_bits(), (block.qs[i % 32] as f32 * f16::from_bits(block.d).to_f32()).to_bits());
            }
        }
    }
}

#[test]
fn quantized_inputs_equal_llama_cpps_q8_0_blocks_at_every_tier() {
    let mut rng = Rng::new(3);
    let mut x = random(&mut rng, 32 * 40, 6.0);
    x[32..64].fill(0.0); // a zero block: scale 0, quants 0
    for (i, v) in x[64..96].iter_mut().enumerate() {
        *v = (i as f32 - 16.0) * 0.5; // amax 8: x / d lands on halves, rounded away from zero
    }
    x[100] = 1e-30; // tiny values and subnormal scales
    let want = candle_blocks(&x);
    for tier in SimdTier::available() {
        let got = Q8Rows::quantize(tier, &x, 32 * 8);
        for (b, block) in want.iter().enumerate() {
            assert_eq!(&got.qs[32 * b..32 * (b + 1)], &block.qs[..], "{tier}, block {b}");
            assert_eq!(got.d[b].to_bits(), f16::from_bits(block.d).to_f32().to_bits(), "{tier}, block {b}");
            let sum: i32 = block.qs.iter().map(|&q| q as i32).sum();
            assert_eq!(got.minus_128_sum[b], -128 * sum, "{tier}, block {b}");
        }
    }
}

/// Every output at every tier has the reference's bits, for shapes with partial groups, partial
/// tiles and several rectangles on both edges, one input row (decode) and many.
#[test]
fn q8_0_gemm_gives_the_references_bits_at_every_tier_and_tile_shape() {
    let mut rng = Rng::new(7);
    for (m, k, n) in [(1, 64, 13), (2, 96, 5), (5, 256, 9), (9, 64, 70), (67, 128, 130), (130, 32, 3), (3, 2048, 17)] {
        let lhs = random(&mut rng, m * k, 8.0);
        let rows = random_blocks(&mut rng, n * k / 32);
        let w = Q8x8Matrix::from_rows(n, k, &rows);
        let x = Q8Rows::quantize(SimdTier::Baseline, &lhs, k);
        for tier in SimdTier::available() {
            let mut dst = vec![f32::NAN; m * n];
            matmul_q8_0_with(tier, m, &lhs, &w, &mut dst);
            for r in 0..m {
                for (j, row) in rows.chunks_exact(k / 32).enumerate() {
                    let want = dot_reference(row, x.row(r));
                    assert_eq!(dst[r * n + j].to_bits(), want.to_bits(), "{tier}, {m}x{k}x{n}, ({r}, {j})");
                }
            }
        }
    }
}

/// A row multiplied alone (decode) gives the bits it gets among many (prefill or a batch):
/// batched and sequential evaluation agree exactly.
#[test]
fn one_q8_0_row_alone_gives_the_bits_it_gets_in_a_batch_at_every_tier() {
    let mut rng = Rng::new(19);
    let (m, k, n) = (11, 2048 + 32, 70);
    let lhs = random(&mut rng, m * k, 8.0);
    let w = Q8x8Matrix::from_rows(n, k, &candle_blocks(&random(&mut rng, n * k, 0.2)));
    for tier in SimdTier::available() {
        let (mut all, mut one) = (vec![0f32; m * n], vec![0f32; n]);
        matmul_q8_0_with(tier, m, &lhs, &w, &mut all);
        for r in 0..m {
            matmul_q8_0_with(tier, 1, &lhs[r * k..(r + 1) * k], &w, &mut one);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one), bits(&all[r * n..(r + 1) * n]), "{tier}, row {r}");
        }
    }
}

/// The reference is the exact product (in f64) within f32 rounding, and so is candle's q8_0
/// kernel on the same blocks: the two agree as two roundings of one value.
#[test]
fn q8_0_reference_equals_the_exact_product_and_candles_kernel() {
    let mut rng = Rng::new(11);
    for (m, k, n) in [(1, 2048, 70), (4, 96, 1), (9, 512, 67)] {
        let (lhs, wf) = (random(&mut rng, m * k, 8.0), random(&mut rng, n * k, 0.2));
        let rows = candle_blocks(&wf);
        let x = Q8Rows::quantize(SimdTier::Baseline, &lhs, k);
        let mut candle = vec![0f32; m * n];
        let mut wb = vec![BlockQ8_0::zeros(); n * k / 32];
        BlockQ8_0::from_float(&wf, &mut wb);
        k_quants::matmul((m, k, n), &lhs, &wb, &mut candle).unwrap();
        for r in 0..m {
            let (q, d) = x.row(r);
            for (j, row) in rows.chunks_exact(k / 32).enumerate() {
                let (exact, mag) = row.iter().zip(q.chunks(32).zip(d)).fold((0f64, 0f64), |(sum, mag), (a, (q, d))| {
                    let dot: i64 = a.qs.iter().zip(q).map(|(&p, &q)| p as i64 * q as i64).sum();
                    let term = f16::from_bits(a.d).to_f64() * *d as f64 * dot as f64;
                    (sum + term, mag + term.abs())
                });
                for (what, got) in [("reference", dot_reference(row, (q, d))), ("candle", candle[r * n + j])] {
                    assert!(
                        (got as f64 - exact).abs() <= 1e-5 * mag,
                        "{what}, {m}x{k}x{n} ({r}, {j}): {got} vs {exact}"
                    );
                }
            }
        }
    }
}
