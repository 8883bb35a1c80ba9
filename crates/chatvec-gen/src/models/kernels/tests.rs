//! Each tier's 16-bit GEMMs against the scalar reference: bit for bit where every sum is exact in
//! f32 (so any order gives the same bits), within rounding on random data. (q8_0's are in
//! `q8_0_tests.rs`.)

use chatvec_format::SimdTier;
use half::{bf16, f16};

use super::*;
use crate::sampling::Rng;

pub(super) fn random(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale).collect()
}

pub(super) fn small_int(rng: &mut Rng, max: i64) -> i64 {
    (rng.next_u64() % (2 * max as u64 + 1)) as i64 - max
}

#[test]
fn bf16_gemm_gives_the_exact_bits_at_every_tier_and_tile_shape() {
    half_gemm_gives_the_exact_bits::<bf16>(bf16::from_f32);
}

#[test]
fn f16_gemm_gives_the_exact_bits_at_every_tier_and_tile_shape() {
    half_gemm_gives_the_exact_bits::<f16>(f16::from_f32);
}

fn half_gemm_gives_the_exact_bits<T: Half>(from_f32: fn(f32) -> T) {
    let mut rng = Rng::new(13);
    // k not a multiple of 8, 16, 32 or 64 covers the scalar tails; m = 1 and the input rows
    // left over after the full tiles take the one-row kernels.
    for (m, k, n) in [(1, 33, 9), (1, 200, 70), (3, 64, 5), (5, 100, 11), (9, 48, 70), (67, 17, 130)] {
        let lhs: Vec<f32> = (0..m * k).map(|_| small_int(&mut rng, 100) as f32 * 0.25).collect();
        let w: Vec<T> = (0..n * k).map(|_| from_f32(small_int(&mut rng, 120) as f32 * 0.5)).collect();
        for tier in SimdTier::available() {
            let mut dst = vec![f32::NAN; m * n];
            matmul_half_with(tier, m, k, &lhs, &w, &mut dst);
            for r in 0..m {
                for j in 0..n {
                    let exact: f64 = (0..k).map(|i| w[j * k + i].widen() as f64 * lhs[r * k + i] as f64).sum();
                    assert_eq!(dst[r * n + j] as f64, exact, "{tier}, {m}x{k}x{n}, ({r}, {j})");
                }
            }
        }
    }
}

#[test]
fn bf16_gemm_equals_the_widened_f64_product_at_every_tier() {
    half_gemm_equals_the_widened_f64_product::<bf16>(bf16::from_f32);
}

#[test]
fn f16_gemm_equals_the_widened_f64_product_at_every_tier() {
    half_gemm_equals_the_widened_f64_product::<f16>(f16::from_f32);
}

fn half_gemm_equals_the_widened_f64_product<T: Half>(from_f32: fn(f32) -> T) {
    let mut rng = Rng::new(17);
    for (m, k, n) in [(1, 2048, 67), (2, 33, 9), (9, 130, 300), (70, 64, 10)] {
        let lhs = random(&mut rng, m * k, 4.0);
        let w: Vec<T> = random(&mut rng, n * k, 0.5).into_iter().map(from_f32).collect();
        for tier in SimdTier::available() {
            let mut dst = vec![f32::NAN; m * n];
            matmul_half_with(tier, m, k, &lhs, &w, &mut dst);
            for r in 0..m {
                for j in 0..n {
                    let (row, x) = (&w[j * k..(j + 1) * k], &lhs[r * k..(r + 1) * k]);
                    let exact: f64 = row.iter().zip(x).map(|(a, b)| a.widen() as f64 * *b as f64).sum();
                    let mag: f64 = row.iter().zip(x).map(|(a, b)| (a.widen() as f64 * *b as f64).abs()).sum();
                    let got = dst[r * n + j];
                    assert!(
                        (got as f64 - exact).abs() <= 1e-5 * mag,
                        "{tier}, {m}x{k}x{n} ({r}, {j}): {got} vs {exact}"
                    );
                    assert!((dot_half_scalar(row, x) as f64 - exact).abs() <= 1e-5 * mag);
                }
            }
        }
    }
}

/// A row multiplied alone (decode, the one-row kernel) gives the bits it gets among many rows
/// (prefill or a batch, the tiles): batched and sequential evaluation agree exactly.
#[test]
fn one_row_alone_gives_the_bits_it_gets_in_a_tile_at_every_tier() {
    let mut rng = Rng::new(19);
    // Past the last whole pair of runs of 64 (AVX2's two accumulators), k = 2080 leaves 32
    // weights, 2091 leaves 40 and a scalar tail, 2148 leaves 96 (both accumulators) and a tail.
    for (m, k, n) in [(9, 2080, 70), (7, 2091, 33), (5, 2148, 20)] {
        let lhs = random(&mut rng, m * k, 8.0);
        let wf = random(&mut rng, n * k, 0.2);
        let b16: Vec<bf16> = wf.iter().copied().map(bf16::from_f32).collect();
        let f16s: Vec<f16> = wf.iter().copied().map(f16::from_f32).collect();
        for tier in SimdTier::available() {
            let (mut all, mut one) = ([vec![0f32; m * n], vec![0f32; m * n]], vec![0f32; n]);
            matmul_half_with(tier, m, k, &lhs, &b16, &mut all[0]);
            matmul_half_with(tier, m, k, &lhs, &f16s, &mut all[1]);
            for r in 0..m {
                let x = &lhs[r * k..(r + 1) * k];
                for (f, all) in all.iter().enumerate() {
                    match f {
                        0 => matmul_half_with(tier, 1, k, x, &b16, &mut one),
                        _ => matmul_half_with(tier, 1, k, x, &f16s, &mut one),
                    }
                    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&one), bits(&all[r * n..(r + 1) * n]), "{tier}, k {k}, format {f}, row {r}");
                }
            }
        }
    }
}
