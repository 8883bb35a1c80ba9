//! Fused CPU kernels with a backward pass, for the trainer's hot spots.
//!
//! candle's own fused RMSNorm, RoPE and softmax have no backward pass, so a trainer built from
//! differentiable candle ops composes each of them from 4–8 elementwise ops, every one a full
//! pass over memory and a fresh allocation, forward and backward (profiled: these, not the
//! matmuls, took most of a step at the lab's sizes). Each kernel here is one pass forward and
//! one backward. Rows are independent, so they run in parallel on rayon's pool with the same
//! arithmetic per row whatever the thread count: results are bit-identical across thread
//! counts. `tests` checks every value and gradient against the composed candle ops.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows of at least this many elements in total go to rayon; smaller tensors stay on the
/// calling thread (the fork/join costs more than it saves).
const PARALLEL_MIN: usize = 1 << 14;

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("lab kernel: input must be contiguous f32"),
    }
}

fn f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Applies `f(row_in, row_out, row_index)` to every row of `width`, in parallel when large.
fn rows_map(src: &[f32], width: usize, f: impl Fn(&[f32], &mut [f32], usize) + Sync) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    if src.len() >= PARALLEL_MIN {
        src.par_chunks(width).zip(dst.par_chunks_mut(width)).enumerate().for_each(|(i, (s, d))| f(s, d, i));
    } else {
        src.chunks(width).zip(dst.chunks_mut(width)).enumerate().for_each(|(i, (s, d))| f(s, d, i));
    }
    dst
}

// ---------------------------------------------------------------------------------------------
// Causal softmax over the last dimension of attention scores `(b, heads, s, s)`.

struct CausalSoftmax;

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "lab-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous(s, l)?;
        let n = l.dims()[l.dims().len() - 1];
        let dst = rows_map(src, n, |x, y, row| {
            // Query position `row % n` sees keys 0..=pos; the rest stay 0.
            let seen = row % n + 1;
            let max = x[..seen].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mut sum = 0f32;
            for (o, &v) in y[..seen].iter_mut().zip(&x[..seen]) {
                *o = (v - max).exp();
                sum += *o;
            }
            y[..seen].iter_mut().for_each(|o| *o /= sum);
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBackward)?))
    }
}

/// dx = y ⊙ (dy − Σ dy ⊙ y), row by row (arguments: y, dy).
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "lab-softmax-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, dy) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let n = l1.dims()[l1.dims().len() - 1];
        let dst = rows_map(y, n, |yr, out, row| {
            let dyr = &dy[row * n..(row + 1) * n];
            let dot: f32 = yr.iter().zip(dyr).map(|(a, b)| a * b).sum();
            for ((o, &a), &b) in out.iter_mut().zip(yr).zip(dyr) {
                *o = a * (b - dot);
            }
        });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
}

/// Softmax of attention scores `(.., s, s)` under a causal mask (key > query gets 0).
pub fn causal_softmax(scores: &Tensor) -> Result<Tensor> {
    let d = scores.dims();
    if d.len() < 2 || d[d.len() - 1] != d[d.len() - 2] {
        candle_core::bail!("causal_softmax: scores must be (.., s, s), got {d:?}");
    }
    scores.contiguous()?.apply_op1(CausalSoftmax)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = x / sqrt(mean(x²) + eps) ⊙ w.

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "lab-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let h = w.len();
        let dst = rows_map(x, h, |xr, y, _| {
            let r = 1.0 / (xr.iter().map(|v| v * v).sum::<f32>() / h as f32 + self.eps).sqrt();
            for ((o, &v), &g) in y.iter_mut().zip(xr).zip(w) {
                *o = v * r * g;
            }
        });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (xs, ws, dys) = (f32_vec(x)?, f32_vec(w)?, f32_vec(dy)?);
        let h = ws.len();
        // dx = r·(w⊙dy) − x·r³/h·Σ(w⊙dy⊙x);  dw = Σ_rows dy⊙x·r.
        let inv_rms: Vec<f32> =
            xs.chunks(h).map(|xr| 1.0 / (xr.iter().map(|v| v * v).sum::<f32>() / h as f32 + self.eps).sqrt()).collect();
        let dx = rows_map(&xs, h, |xr, out, row| {
            let (dyr, r) = (&dys[row * h..(row + 1) * h], inv_rms[row]);
            let dot: f32 = xr.iter().zip(dyr).zip(&ws).map(|((a, b), g)| a * b * g).sum();
            let c = r * r * r * dot / h as f32;
            for (((o, &a), &b), &g) in out.iter_mut().zip(xr).zip(dyr).zip(&ws) {
                *o = r * g * b - a * c;
            }
        });
        let mut dw = vec![0f32; h];
        for ((xr, dyr), r) in xs.chunks(h).zip(dys.chunks(h)).zip(&inv_rms) {
            for ((o, &a), &b) in dw.iter_mut().zip(xr).zip(dyr) {
                *o += a * b * r;
            }
        }
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dw = Tensor::from_vec(dw, w.shape(), w.device())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// RMSNorm over the last dimension with weight `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

// ---------------------------------------------------------------------------------------------
// RoPE (the non-interleaved "rotate half" form of Llama), on `(b, heads, s, head_dim)`.

struct Rope {
    /// `(positions, head_dim/2)` tables.
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    /// −1 for the inverse rotation (the backward pass).
    sign: f32,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "lab-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let (_, _, seq, d) = l.shape().dims4()?;
        let half = d / 2;
        let dst = rows_map(x, d, |xr, y, row| {
            let pos = row % seq;
            let (c, sn) = (&self.cos[pos * half..(pos + 1) * half], &self.sin[pos * half..(pos + 1) * half]);
            for i in 0..half {
                let (a, b) = (xr[i], xr[i + half]);
                let s = self.sign * sn[i];
                y[i] = a * c[i] - b * s;
                y[i + half] = b * c[i] + a * s;
            }
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Rope { cos: self.cos.clone(), sin: self.sin.clone(), sign: -self.sign };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

/// Rotary tables for [`rope`], built once per model.
#[derive(Clone)]
pub struct RopeTables {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
}

impl RopeTables {
    /// Tables from `(positions, head_dim/2)` cos and sin tensors.
    pub fn new(cos: &Tensor, sin: &Tensor) -> Result<Self> {
        Ok(RopeTables { cos: Arc::new(f32_vec(cos)?), sin: Arc::new(f32_vec(sin)?) })
    }
}

/// RoPE of `x` `(b, heads, s, head_dim)` at positions `0..s`.
pub fn rope(x: &Tensor, t: &RopeTables) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Rope { cos: t.cos.clone(), sin: t.sin.clone(), sign: 1.0 })
}

// ---------------------------------------------------------------------------------------------
// Weighted cross-entropy of logits `(n, vocab)`: Σ_i w_i·(lse_i − logit_i[t_i]) / max(Σw, 1).

struct CrossEntropy {
    targets: Arc<Vec<u32>>,
    weights: Arc<Vec<f32>>,
}

impl CrossEntropy {
    fn scale(&self) -> f32 {
        1.0 / self.weights.iter().sum::<f32>().max(1.0)
    }
}

fn log_sum_exp(x: &[f32]) -> f32 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    max + x.iter().map(|&v| (v - max).exp()).sum::<f32>().ln()
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "lab-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let (n, v) = l.shape().dims2()?;
        let per_row: Vec<f32> = (0..n)
            .into_par_iter()
            .map(|i| {
                let w = self.weights[i];
                if w == 0.0 {
                    return 0.0;
                }
                let row = &x[i * v..(i + 1) * v];
                w * (log_sum_exp(row) - row[self.targets[i] as usize])
            })
            .collect();
        // Summed in order on one thread: the same bits for any thread count.
        let total = per_row.iter().sum::<f32>() * self.scale();
        Ok((CpuStorage::F32(vec![total]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let xs = f32_vec(x)?;
        let (_, v) = x.dims2()?;
        let g = dy.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? * self.scale();
        let dx = rows_map(&xs, v, |row, out, i| {
            let w = self.weights[i];
            if w == 0.0 {
                return;
            }
            let lse = log_sum_exp(row);
            for (o, &a) in out.iter_mut().zip(row) {
                *o = g * w * (a - lse).exp();
            }
            out[self.targets[i] as usize] -= g * w;
        });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Weighted mean next-token negative log-likelihood of `logits` `(n, vocab)` against `targets`,
/// divided by `max(Σ weights, 1)`; a scalar tensor with a backward pass to the logits.
pub fn cross_entropy(logits: &Tensor, targets: Vec<u32>, weights: Vec<f32>) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n || weights.len() != n || targets.iter().any(|&t| t as usize >= v) {
        candle_core::bail!(
            "cross_entropy: {n} rows of {v} logits, {} targets, {} weights",
            targets.len(),
            weights.len()
        );
    }
    logits.contiguous()?.apply_op1(CrossEntropy { targets: Arc::new(targets), weights: Arc::new(weights) })
}

// ---------------------------------------------------------------------------------------------
// Linear layers, y = x·wᵀ, with every long sum split into fixed chunks.

/// The longest sum over an inner (k) dimension that one gemm call does in the lab.
///
/// candle's matmul is the `gemm` crate, which splits k into blocks of `kc` and adds the blocks'
/// partial sums into the output, one rounding per block boundary. `kc` comes from the L1 data
/// cache the OS reports (gemm-common's `cache.rs`, `kernel_params`): `max(x, 512)` capped at k,
/// where `x` grows with the cache's associativity. A 32 KiB 8-way L1 (Skylake-SP, Cascade
/// Lake, AMD Zen) gives 512, the 48 KiB 12-way L1 of Ice Lake and later Xeons 1024, so a weight
/// gradient summed over 768 tokens was two blocks of 384 on one host and one block of 768 on the
/// other: the same training rounded differently. A sum of at most 512 terms is never split, on
/// any host; [`matmul_fixed`] cuts longer ones into chunks of at most this size itself.
pub const MAX_K_CHUNK: usize = 512;

/// The chunks `(start, len)` of a sum over `k` terms: `ceil(k / 512)` chunks of
/// `ceil(k / chunks)` terms, the last one shorter (the split gemm itself makes when its block is
/// 512). Empty for `k == 0`.
pub fn k_chunks(k: usize) -> Vec<(usize, usize)> {
    if k == 0 {
        return Vec::new();
    }
    let parts = k.div_ceil(MAX_K_CHUNK);
    let len = k.div_ceil(parts);
    (0..k).step_by(len).map(|start| (start, len.min(k - start))).collect()
}

/// `a · b` for 2-D `a` `(m, k)` and `b` `(k, n)`: one gemm call per chunk of [`k_chunks`], the
/// chunks' products added in order. Every output element is the same sum in the same order on
/// any host (for a given instruction set: gemm's x86 kernels use FMA): each chunk's terms
/// accumulated one after the other by a fused multiply-add from zero, then chunk 0 + chunk 1 +
/// … (`tests::fixed_matmul_is_the_fixed_order_sum`).
pub fn matmul_fixed(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (_, k) = a.dims2()?;
    let mut sum: Option<Tensor> = None;
    for (start, len) in k_chunks(k) {
        let p = a.narrow(1, start, len)?.matmul(&b.narrow(0, start, len)?)?;
        sum = Some(match sum {
            None => p,
            Some(s) => (s + p)?,
        });
    }
    match sum {
        Some(s) => Ok(s),
        None => a.matmul(b),
    }
}

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "lab-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (&[n, k], &[out, k2]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!("lab linear: x and w must be 2-D, got {:?} and {:?}", l1.dims(), l2.dims());
        };
        if k != k2 {
            candle_core::bail!("lab linear: x has {k} columns, w {k2}");
        }
        let wt = l2.transpose(0, 1)?;
        let mut sum: Option<Vec<f32>> = None;
        for (start, len) in k_chunks(k) {
            let p = s1.matmul(s2, (1, n, out, len), &l1.narrow(1, start, len)?, &wt.narrow(0, start, len)?)?;
            let p = p.as_slice::<f32>()?;
            match &mut sum {
                None => sum = Some(p.to_vec()),
                Some(s) => s.iter_mut().zip(p).for_each(|(a, &b)| *a += b),
            }
        }
        let dst = match sum {
            Some(s) => s,
            None => vec![0f32; n * out],
        };
        Ok((CpuStorage::F32(dst), Shape::from((n, out))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // dx = dy·w sums over the outputs (the vocabulary for lm_head); dw = dyᵀ·x over the
        // batch's tokens (8 × 96 = 768 in the base stage).
        let dx = matmul_fixed(dy, w)?;
        let dw = matmul_fixed(&dy.t()?, x)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `x · wᵀ` for `x` `(n, in)` and a weight `w` `(out, in)`, forward and backward summed in
/// fixed chunks ([`MAX_K_CHUNK`]): the same bits whatever L1 cache the host reports.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var, D};

    use super::*;
    use crate::data::{Draw, Rng};

    fn random(shape: &[usize], seed: u64) -> Var {
        let mut r = Rng::new(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// Value of `f(inputs)` projected on a fixed random direction, and its gradients.
    fn value_and_grads(inputs: &[Var], f: impl Fn(&[Tensor]) -> Tensor) -> (Vec<f32>, Vec<Vec<f32>>) {
        let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        let dir = random(y.dims(), 77);
        let loss = (&y * dir.as_tensor()).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = inputs.iter().map(|v| f32_vec(grads.get(v).unwrap()).unwrap()).collect();
        (f32_vec(&y).unwrap(), g)
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < tol, "{what}: max difference {worst}");
    }

    fn compare(inputs: &[Var], fused: impl Fn(&[Tensor]) -> Tensor, composed: impl Fn(&[Tensor]) -> Tensor) {
        let (y1, g1) = value_and_grads(inputs, fused);
        let (y2, g2) = value_and_grads(inputs, composed);
        assert_close(&y1, &y2, 1e-5, "value");
        for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
            assert_close(a, b, 1e-4, &format!("gradient of input {i}"));
        }
    }

    #[test]
    fn causal_softmax_matches_masked_softmax_and_its_gradient() {
        let s = 7;
        let mask: Vec<f32> = (0..s * s).map(|i| if i % s > i / s { f32::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (s, s), &Device::Cpu).unwrap();
        compare(
            &[random(&[2, 3, s, s], 1)],
            |x| causal_softmax(&x[0]).unwrap(),
            |x| candle_nn::ops::softmax(&x[0].broadcast_add(&mask).unwrap(), D::Minus1).unwrap(),
        );
    }

    #[test]
    fn rms_norm_matches_the_composed_one_and_its_gradients() {
        compare(
            &[random(&[5, 3, 16], 2), random(&[16], 3)],
            |x| rms_norm(&x[0], &x[1], 1e-5).unwrap(),
            |x| candle_nn::ops::rms_norm_slow(&x[0], &x[1], 1e-5).unwrap(),
        );
    }

    #[test]
    fn rope_matches_the_composed_one_and_its_gradient() {
        let (s, d) = (6, 8);
        let cos = random(&[10, d / 2], 4).as_tensor().cos().unwrap();
        let sin = random(&[10, d / 2], 4).as_tensor().sin().unwrap();
        let tables = RopeTables::new(&cos, &sin).unwrap();
        let (c, sn) = (cos.narrow(0, 0, s).unwrap(), sin.narrow(0, 0, s).unwrap());
        compare(
            &[random(&[2, 3, s, d], 5)],
            |x| rope(&x[0], &tables).unwrap(),
            |x| candle_nn::rotary_emb::rope_slow(&x[0], &c, &sn).unwrap(),
        );
    }

    #[test]
    fn cross_entropy_matches_log_softmax_and_its_gradient() {
        let (n, v) = (9, 13);
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 5 + 2) % v as u32).collect();
        let weights: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 }).collect();
        let (t, w) = (targets.clone(), weights.clone());
        compare(
            &[random(&[n, v], 6)],
            |x| cross_entropy(&x[0], t.clone(), w.clone()).unwrap(),
            |x| {
                let logp = candle_nn::ops::log_softmax(&x[0], D::Minus1).unwrap();
                let idx = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap().unsqueeze(1).unwrap();
                let picked = logp.gather(&idx, 1).unwrap().squeeze(1).unwrap();
                let wt = Tensor::new(weights.as_slice(), &Device::Cpu).unwrap();
                let total = weights.iter().sum::<f32>() as f64;
                ((picked * wt).unwrap().sum_all().unwrap() * (-1.0 / total)).unwrap()
            },
        );
    }

    #[test]
    fn k_chunks_cover_k_in_order_and_never_exceed_the_limit() {
        assert!(k_chunks(0).is_empty());
        assert_eq!(k_chunks(96), vec![(0, 96)]);
        assert_eq!(k_chunks(512), vec![(0, 512)]);
        assert_eq!(k_chunks(768), vec![(0, 384), (384, 384)]);
        assert_eq!(k_chunks(2008), vec![(0, 502), (502, 502), (1004, 502), (1506, 502)]);
        for k in 1..3000 {
            let c = k_chunks(k);
            assert_eq!(c.len(), k.div_ceil(MAX_K_CHUNK), "k {k}");
            let mut next = 0;
            for &(start, len) in &c {
                assert!(start == next && len > 0 && len <= MAX_K_CHUNK, "k {k}: {c:?}");
                next += len;
            }
            assert_eq!(next, k);
        }
    }

    /// `a·b` summed in the fixed order [`matmul_fixed`] promises: per chunk of [`k_chunks`] a
    /// fused multiply-add from zero, term after term; then the chunks added in order.
    fn fixed_order_reference(a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut total: Option<f32> = None;
                for (start, len) in k_chunks(k) {
                    let mut acc = 0f32;
                    for t in start..start + len {
                        acc = a[i * k + t].mul_add(b[t * n + j], acc);
                    }
                    total = Some(total.map_or(acc, |s| s + acc));
                }
                out[i * n + j] = total.unwrap_or(0.0);
            }
        }
        out
    }

    /// Whether gemm runs its FMA kernels here, whose sums the scalar reference reproduces exactly.
    fn fma_kernels() -> bool {
        #[cfg(target_arch = "x86_64")]
        return std::arch::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The point of [`matmul_fixed`] and [`linear`]: their result is one fixed sum, with no
    /// input from the host's caches. Compared bit for bit with a scalar reference on the lab's
    /// shapes (768-token weight gradients, the 2008-row lm_head) and odd ones; gemm's x86
    /// kernels need FMA, elsewhere only closeness is checked.
    #[test]
    fn fixed_matmul_is_the_fixed_order_sum() {
        let exact = fma_kernels();
        for (i, &(m, k, n)) in
            [(96, 768, 80), (100, 2008, 96), (70, 1100, 37), (33, 300, 65), (65, 513, 64)].iter().enumerate()
        {
            let a = random(&[m, k], 10 + i as u64);
            let b = random(&[k, n], 20 + i as u64);
            let got = f32_vec(&matmul_fixed(a.as_tensor(), b.as_tensor()).unwrap()).unwrap();
            let want =
                fixed_order_reference(&f32_vec(a.as_tensor()).unwrap(), &f32_vec(b.as_tensor()).unwrap(), (m, k, n));
            if exact {
                assert_eq!(bits(&got), bits(&want), "({m}, {k}, {n})");
            } else {
                assert_close(&got, &want, 1e-3, "matmul_fixed");
            }
        }
    }

    /// The linear layer's value and both gradients are the fixed-order sums, and agree with
    /// candle's own `x.matmul(wᵀ)`.
    #[test]
    fn linear_is_the_fixed_order_sum_forward_and_backward() {
        let exact = fma_kernels();
        let (n, inp, out) = (768, 96, 530);
        let (x, w) = (random(&[n, inp], 31), random(&[out, inp], 32));
        // Against candle's matmul: the same up to rounding (sums of 768 terms of order 1 here, so
        // a looser tolerance than `compare`'s).
        let (y1, g1) = value_and_grads(&[x.clone(), w.clone()], |t| linear(&t[0], &t[1]).unwrap());
        let (y2, g2) = value_and_grads(&[x.clone(), w.clone()], |t| t[0].matmul(&t[1].t().unwrap()).unwrap());
        assert_close(&y1, &y2, 1e-4, "value");
        assert_close(&g1[0], &g2[0], 1e-3, "dx");
        assert_close(&g1[1], &g2[1], 1e-3, "dw");

        let y = linear(x.as_tensor(), w.as_tensor()).unwrap();
        let dy = random(y.dims(), 33);
        let grads = (&y * dy.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let (xs, ws, dys) =
            (f32_vec(x.as_tensor()).unwrap(), f32_vec(w.as_tensor()).unwrap(), f32_vec(dy.as_tensor()).unwrap());
        let transpose =
            |v: &[f32], r: usize, c: usize| -> Vec<f32> { (0..c * r).map(|i| v[(i % r) * c + i / r]).collect() };
        let checks = [
            ("value", f32_vec(&y).unwrap(), fixed_order_reference(&xs, &transpose(&ws, out, inp), (n, inp, out))),
            ("dx", f32_vec(grads.get(&x).unwrap()).unwrap(), fixed_order_reference(&dys, &ws, (n, out, inp))),
            (
                "dw",
                f32_vec(grads.get(&w).unwrap()).unwrap(),
                fixed_order_reference(&transpose(&dys, n, out), &xs, (out, n, inp)),
            ),
        ];
        for (what, got, want) in checks {
            if exact {
                assert_eq!(bits(&got), bits(&want), "{what}");
            } else {
                assert_close(&got, &want, 1e-3, what);
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        let x = random(&[2, 3], 7);
        assert!(cross_entropy(x.as_tensor(), vec![0, 5], vec![1.0, 1.0]).is_err());
        assert!(cross_entropy(x.as_tensor(), vec![0], vec![1.0]).is_err());
        assert!(causal_softmax(x.as_tensor()).is_err());
    }
}
