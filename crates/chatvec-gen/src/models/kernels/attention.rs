//! Attention of one new position (a decode step) over a sequence's cached keys and values, on
//! the CPU in f32, reading the cache where it lies.
//!
//! Through candle's ops, each decode step copied the cached values of every layer to a contiguous
//! tensor (the cache has room to spare past the cached positions) and ran two small GEMMs and a
//! softmax as separate passes, a cost that grew with the context (on the AMD EPYC of issue 23,
//! `bench_gen --quantize q8_0 --prompt 512 --new 64` before and after this kernel: 17.3-18.5 ->
//! 20.4-21.8 tokens/s, the same tokens). Here each query
//! head is one pass over its KV head's rows. Written by hand because candle has no attention
//! kernel for the CPU that reads a strided cache.
//!
//! Every sum runs in a fixed order of sixteen lanes (products and sums not fused), so each tier
//! (AVX-512, AVX2+FMA, baseline: the same code compiled for each) gives the same bits.

use chatvec_format::SimdTier;
use rayon::prelude::*;

/// Lanes of every dot product (one AVX-512 vector, two AVX2 ones).
const LANES: usize = 16;

/// One layer's cached keys and values, `(kv heads, capacity, head_dim)` each, row-major.
#[derive(Clone, Copy)]
pub(crate) struct KvRows<'a> {
    pub(crate) k: &'a [f32],
    pub(crate) v: &'a [f32],
    pub(crate) capacity: usize,
    pub(crate) head_dim: usize,
}

/// `out (heads * head_dim)`: for each query head `h` of `q (heads * head_dim)`,
/// `softmax(scale · q_h K^T) V` over the cached positions `keys` of KV head `h / (heads / kv
/// heads)`, at the process's SIMD tier.
pub(crate) fn attend_one(q: &[f32], kv: KvRows<'_>, keys: std::ops::Range<usize>, scale: f32, out: &mut [f32]) {
    attend_one_with(SimdTier::active(), q, kv, keys, scale, out)
}

/// [`attend_one`] at a given tier (one the CPU supports).
pub(crate) fn attend_one_with(
    tier: SimdTier,
    q: &[f32],
    kv: KvRows<'_>,
    keys: std::ops::Range<usize>,
    scale: f32,
    out: &mut [f32],
) {
    let hd = kv.head_dim;
    let heads = q.len() / hd.max(1);
    let kv_heads = kv.k.len() / (kv.capacity * hd).max(1);
    assert!(
        hd > 0 && q.len() == heads * hd && out.len() == q.len() && kv_heads > 0 && heads.is_multiple_of(kv_heads),
        "attention shapes"
    );
    assert!(keys.end <= kv.capacity && kv.v.len() == kv.k.len(), "attention over cached positions");
    let rep = heads / kv_heads;
    // Each thread keeps one buffer of scores for all the heads it takes.
    out.par_chunks_mut(hd).zip(q.par_chunks(hd)).enumerate().for_each_init(Vec::new, |p, (h, (o, qh))| {
        let g = h / rep;
        let rows = g * kv.capacity * hd + keys.start * hd..g * kv.capacity * hd + keys.end * hd;
        let (k, v) = (&kv.k[rows.clone()], &kv.v[rows]);
        match tier {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller passes a tier the CPU supports.
            SimdTier::Avx512 => unsafe { head_avx512(qh, k, v, scale, o, p) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            SimdTier::Avx2 => unsafe { head_avx2(qh, k, v, scale, o, p) },
            _ => head(qh, k, v, scale, o, p),
        }
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn head_avx512(q: &[f32], k: &[f32], v: &[f32], scale: f32, out: &mut [f32], p: &mut Vec<f32>) {
    head(q, k, v, scale, out, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn head_avx2(q: &[f32], k: &[f32], v: &[f32], scale: f32, out: &mut [f32], p: &mut Vec<f32>) {
    head(q, k, v, scale, out, p)
}

/// One query head over its key rows `k` and value rows `v` (`t` rows of `q.len()` each):
/// scores `scale · q·k_j`, softmax as candle's (minus the maximum, `exp`, divided by the sum),
/// then the weighted sum of the value rows in order. `p` is scratch for the scores.
#[inline(always)]
fn head(q: &[f32], k: &[f32], v: &[f32], scale: f32, out: &mut [f32], p: &mut Vec<f32>) {
    let hd = q.len();
    p.clear();
    p.extend(k.chunks_exact(hd).map(|kj| dot(q, kj) * scale));
    let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for x in p.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    out.fill(0.0);
    for (pj, vj) in p.iter_mut().zip(v.chunks_exact(hd)) {
        *pj /= sum;
        for (o, x) in out.iter_mut().zip(vj) {
            *o += *pj * x;
        }
    }
}

/// `a · b` in `LANES` partial sums, added in order at the end, then the tail.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (a_whole, b_whole) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_tail, b_tail) = (a_whole.remainder(), b_whole.remainder());
    for (x, y) in a_whole.zip(b_whole) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in a_tail.iter().zip(b_tail) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::kernels::tests::random;
    use crate::sampling::Rng;

    /// softmax(scale q K^T) V in f64, position by position.
    fn reference(q: &[f32], kv: KvRows<'_>, keys: std::ops::Range<usize>, scale: f32) -> Vec<f64> {
        let hd = kv.head_dim;
        let heads = q.len() / hd;
        let rep = heads / (kv.k.len() / (kv.capacity * hd));
        let mut out = vec![0f64; q.len()];
        for h in 0..heads {
            let row = |m: &[f32], j: usize| -> Vec<f64> {
                let start = ((h / rep) * kv.capacity + j) * hd;
                m[start..start + hd].iter().map(|x| *x as f64).collect()
            };
            let qh: Vec<f64> = q[h * hd..(h + 1) * hd].iter().map(|x| *x as f64).collect();
            let scores: Vec<f64> = keys
                .clone()
                .map(|j| row(kv.k, j).iter().zip(&qh).map(|(a, b)| a * b).sum::<f64>() * scale as f64)
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (j, ej) in keys.clone().zip(&e) {
                for (o, x) in out[h * hd..(h + 1) * hd].iter_mut().zip(row(kv.v, j)) {
                    *o += ej / sum * x;
                }
            }
        }
        out
    }

    #[test]
    fn one_position_attends_as_the_f64_softmax_and_every_tier_gives_the_same_bits() {
        let mut rng = Rng::new(23);
        // (heads, kv heads, head_dim, capacity, keys): grouped and plain heads, a head_dim with a
        // tail past the lanes, a window that starts past position 0.
        for (heads, kv_heads, hd, cap, keys) in [(8, 2, 64, 80, 0..70), (4, 4, 40, 16, 0..1), (6, 3, 24, 40, 9..37)] {
            let q = random(&mut rng, heads * hd, 2.0);
            let (k, v) = (random(&mut rng, kv_heads * cap * hd, 2.0), random(&mut rng, kv_heads * cap * hd, 2.0));
            let kv = KvRows { k: &k, v: &v, capacity: cap, head_dim: hd };
            let scale = 1.0 / (hd as f32).sqrt();
            let exact = reference(&q, kv, keys.clone(), scale);
            let mut first: Option<Vec<u32>> = None;
            for tier in SimdTier::available() {
                let mut out = vec![f32::NAN; heads * hd];
                attend_one_with(tier, &q, kv, keys.clone(), scale, &mut out);
                for (i, (got, want)) in out.iter().zip(&exact).enumerate() {
                    assert!((*got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "{tier}, {i}: {got} vs {want}");
                }
                let bits: Vec<u32> = out.iter().map(|x| x.to_bits()).collect();
                match &first {
                    None => first = Some(bits),
                    Some(first) => assert_eq!(first, &bits, "{tier} differs from the first tier"),
                }
            }
        }
    }
}
