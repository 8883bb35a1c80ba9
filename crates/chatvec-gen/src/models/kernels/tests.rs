//! Each tier's GEMMs against the scalar reference: bit for bit where every sum is exact in f32
//! (so any order gives the same bits), within rounding on random data, and the q8_0 input
//! quantization against candle's (llama.cpp's) blocks.

use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
use chatvec_format::SimdTier;
use half::{bf16, f16};

use super::*;
use crate::sampling::Rng;

fn random(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale).collect()
}

fn small_int(rng: &mut Rng, max: i64) -> i64 {
    (rng.next_u64() % (2 * max as u64 + 1)) as i64 - max
}

/// candle's q8_0 blocks of `x` (its `from_float` is llama.cpp's `quantize_row_q8_0_ref`).
fn candle_blocks(x: &[f32]) -> Vec<Q8Block> {
    let mut blocks = vec![BlockQ8_0::zeros(); x.len() / 32];
    BlockQ8_0::from_float(x, &mut blocks);
    // SAFETY: same size and layout (checked in kernels.rs); any bits are a valid Q8Block.
    blocks.iter().map(|b| unsafe { *(b as *const BlockQ8_0 as *const Q8Block) }).collect()
}

/// The exact value of the q8_0 product of weight row `w` and quantized input row `r`, and the
/// sum of its terms' magnitudes.
fn q8_exact(w: &[Q8Block], x: &Q8Rows, r: usize) -> (f64, f64) {
    let (q, d) = x.row(r);
    w.iter().zip(q.chunks(32).zip(d)).fold((0.0, 0.0), |(sum, mag), (a, (q, d))| {
        let dot: i64 = a.qs.iter().zip(q).map(|(&p, &q)| p as i64 * q as i64).sum();
        let term = f16::from_bits(a.d).to_f64() * *d as f64 * dot as f64;
        (sum + term, mag + term.abs())
    })
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
        }
    }
}

/// Inputs whose blocks quantize exactly (one ±127·2^e per block, the rest small multiples of
/// 2^e) and weights with power-of-two scales: every product and partial sum is an integer
/// below 2^24, so every tier must give the reference's bits whatever its summation order.
fn exact_q8_operands(rng: &mut Rng, m: usize, k: usize, n: usize, extreme: bool) -> (Vec<f32>, Vec<Q8Block>) {
    let mut lhs = vec![0f32; m * k];
    for block in lhs.chunks_mut(32) {
        let scale = if rng.next_u64() & 1 == 0 { 1.0 } else { 2.0 };
        for v in block.iter_mut() {
            *v = if extreme {
                127.0 * if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 }
            } else {
                small_int(rng, 3) as f32
            } * scale;
        }
        block[(rng.next_u64() % 32) as usize] = if rng.next_u64() & 1 == 0 { 127.0 } else { -127.0 } * scale;
    }
    let w = (0..n * k / 32)
        .map(|_| Q8Block {
            d: f16::from_f32(if rng.next_u64() & 1 == 0 { 1.0 } else { 2.0 }).to_bits(),
            qs: std::array::from_fn(|_| {
                if extreme {
                    [-128, 127][(rng.next_u64() & 1) as usize]
                } else {
                    small_int(rng, 4) as i8
                }
            }),
        })
        .collect();
    (lhs, w)
}

#[test]
fn q8_0_gemm_gives_the_exact_bits_at_every_tier_and_tile_shape() {
    let mut rng = Rng::new(7);
    // Shapes cover partial tiles and rectangles on both edges, one row (decode) and many.
    let shapes = [(1, 64, 13), (2, 96, 5), (5, 256, 9), (9, 64, 70), (67, 128, 130), (130, 32, 3)];
    for (m, k, n) in shapes {
        for extreme in [false, true] {
            let k = if extreme { 64 } else { k };
            let (lhs, w) = exact_q8_operands(&mut rng, m, k, n, extreme);
            let x = Q8Rows::quantize(SimdTier::Baseline, &lhs, k);
            for tier in SimdTier::available() {
                let mut dst = vec![f32::NAN; m * n];
                matmul_q8_0_with(tier, m, k, &lhs, &w, &mut dst);
                for r in 0..m {
                    for j in 0..n {
                        let (exact, _) = q8_exact(&w[j * k / 32..(j + 1) * k / 32], &x, r);
                        assert_eq!(dst[r * n + j] as f64, exact, "{tier}, {m}x{k}x{n}, extreme {extreme}, ({r}, {j})");
                    }
                }
            }
        }
    }
}

#[test]
fn q8_0_gemm_equals_the_reference_and_candles_kernel_on_random_weights_at_every_tier() {
    let mut rng = Rng::new(11);
    for (m, k, n) in [(1, 2048, 70), (4, 96, 1), (9, 512, 67), (70, 256, 20)] {
        let (lhs, wf) = (random(&mut rng, m * k, 8.0), random(&mut rng, n * k, 0.2));
        let w = candle_blocks(&wf);
        let x = Q8Rows::quantize(SimdTier::Baseline, &lhs, k);
        let mut candle = vec![0f32; m * n];
        let mut wb = vec![BlockQ8_0::zeros(); n * k / 32];
        BlockQ8_0::from_float(&wf, &mut wb);
        candle_core::quantized::k_quants::matmul((m, k, n), &lhs, &wb, &mut candle).unwrap();
        for tier in SimdTier::available() {
            let mut dst = vec![f32::NAN; m * n];
            matmul_q8_0_with(tier, m, k, &lhs, &w, &mut dst);
            for r in 0..m {
                for j in 0..n {
                    let row = &w[j * k / 32..(j + 1) * k / 32];
                    let (exact, mag) = q8_exact(row, &x, r);
                    let (q, d) = x.row(r);
                    for (what, got) in [
                        (tier.name(), dst[r * n + j]),
                        ("scalar", dot_q8_0_scalar(row, q, d)),
                        ("candle", candle[r * n + j]),
                    ] {
                        assert!(
                            (got as f64 - exact).abs() <= 1e-5 * mag,
                            "{what}, {m}x{k}x{n} ({r}, {j}): {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }
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
    let (m, k, n) = (9, 2048 + 32, 70);
    let lhs = random(&mut rng, m * k, 8.0);
    let wf = random(&mut rng, n * k, 0.2);
    let q8 = candle_blocks(&wf);
    let b16: Vec<bf16> = wf.iter().copied().map(bf16::from_f32).collect();
    let f16s: Vec<f16> = wf.iter().copied().map(f16::from_f32).collect();
    for tier in SimdTier::available() {
        let (mut all, mut one) = ([vec![0f32; m * n], vec![0f32; m * n], vec![0f32; m * n]], vec![0f32; n]);
        matmul_q8_0_with(tier, m, k, &lhs, &q8, &mut all[0]);
        matmul_half_with(tier, m, k, &lhs, &b16, &mut all[1]);
        matmul_half_with(tier, m, k, &lhs, &f16s, &mut all[2]);
        for r in 0..m {
            let x = &lhs[r * k..(r + 1) * k];
            for (f, all) in all.iter().enumerate() {
                match f {
                    0 => matmul_q8_0_with(tier, 1, k, x, &q8, &mut one),
                    1 => matmul_half_with(tier, 1, k, x, &b16, &mut one),
                    _ => matmul_half_with(tier, 1, k, x, &f16s, &mut one),
                }
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&one), bits(&all[r * n..(r + 1) * n]), "{tier}, format {f}, row {r}");
            }
        }
    }
}
