//! Turning a tensor's source bytes, fed in chunks of any size, into its GGUF bytes: decode to
//! f32 as the converter does, apply the transform, encode whole rows, write, pad.
//!
//! Memory: one batch of rows (a few MiB) plus, for the Q/K permutation, the rows of one head,
//! since a permuted row comes from the other half of its head.
//!
//! The element loops run at the process's SIMD tier (`chatvec_format::simd`): decoding to f32
//! and q8_0 are chatvec-format's (`dtype::decode_f32_with`, `q8_0::quantize_row_into`, shared with
//! generation's load), encoding f32 to f16 and bf16 is here; k-quants are candle's.

use std::io::Write;

use chatvec_format::dtype::decode_f32_with;
use chatvec_format::{dispatch_simd, DType, Error, Result, SimdTier};
use half::f16;
use rayon::prelude::*;

use chatvec_format::q8_0::{quantize_row_into, Q8_0_BLOCK};

use crate::arch::{source_row, Transform};
use crate::format::pad;
use crate::plan::OutputTensor;

/// Source bytes gathered before a batch is converted.
const BATCH_BYTES: usize = 4 << 20;

/// Streams one tensor into a writer.
pub struct TensorEncoder<'a> {
    t: &'a OutputTensor,
    dtype: DType,
    rows: usize,
    cols: usize,
    group_rows: usize,
    pending: Vec<u8>,
    fed: usize,
}

impl<'a> TensorEncoder<'a> {
    /// Starts tensor `t`, whose source bytes are of `dtype`.
    pub fn new(t: &'a OutputTensor, dtype: DType) -> Self {
        let shape = &t.info.shape;
        let numel: usize = shape.iter().product();
        let (rows, cols) = match (shape.len(), t.transform) {
            (0 | 1, Transform::Permute { .. }) => (numel, 1),
            (0 | 1, _) => (1, numel),
            _ => (shape[0], numel / shape[0].max(1)),
        };
        let group_rows = match t.transform {
            Transform::Permute { heads } => rows / heads,
            _ => 1,
        };
        TensorEncoder { t, dtype, rows, cols, group_rows, pending: Vec::new(), fed: 0 }
    }

    fn source_bytes(&self) -> usize {
        self.rows * self.cols * self.dtype.size()
    }

    /// Adds the next `bytes` of source data, writing every complete batch.
    pub fn feed(&mut self, bytes: &[u8], out: &mut dyn Write) -> Result<()> {
        // Slices of a batch keep the f32 copy and the encoded output of a 16 MiB block small.
        for slice in bytes.chunks(BATCH_BYTES) {
            self.feed_batch(slice, out)?;
        }
        Ok(())
    }

    fn feed_batch(&mut self, bytes: &[u8], out: &mut dyn Write) -> Result<()> {
        self.fed += bytes.len();
        if self.fed > self.source_bytes() {
            return Err(Error::tensor(&self.t.info.name, "more data than its shape holds (internal error)"));
        }
        self.pending.extend_from_slice(bytes);
        let group = self.group_rows * self.cols * self.dtype.size();
        if self.pending.len() >= BATCH_BYTES.max(group) {
            let whole = self.pending.len() / group * group;
            let rest = self.pending.split_off(whole);
            let batch = std::mem::replace(&mut self.pending, rest);
            self.convert(&batch, out)?;
        }
        Ok(())
    }

    /// Writes what is left and the padding; fails if the tensor did not get all its bytes.
    pub fn finish(mut self, align: u64, out: &mut dyn Write) -> Result<()> {
        if self.fed != self.source_bytes() {
            return Err(Error::tensor(&self.t.info.name, format!("got {} of {} bytes", self.fed, self.source_bytes())));
        }
        let batch = std::mem::take(&mut self.pending);
        self.convert(&batch, out)?;
        let padding = pad(self.t.info.bytes, align) - self.t.info.bytes;
        write(out, &vec![0u8; padding as usize], &self.t.info.name)
    }

    /// Converts whole groups of rows.
    fn convert(&self, batch: &[u8], out: &mut dyn Write) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut values = decode(self.dtype, batch);
        match self.t.transform {
            Transform::PlusOne => plus_one(self.dtype, &mut values),
            Transform::Permute { .. } => values = permute(&values, self.group_rows, self.cols),
            Transform::None => {}
        }
        let rows_per_task = (1 << 16) / self.cols.max(1) + 1;
        let encoded: Vec<Result<Vec<u8>>> = values
            .par_chunks(rows_per_task * self.cols)
            .map(|chunk| {
                let mut buf = Vec::with_capacity(chunk.len() * 4);
                self.t.ggml.encode(chunk, self.cols, &mut buf).map(|_| buf)
            })
            .collect();
        for e in encoded {
            write(out, &e.map_err(|e| Error::tensor(&self.t.info.name, e.to_string()))?, &self.t.info.name)?;
        }
        Ok(())
    }
}

fn write(out: &mut dyn Write, bytes: &[u8], name: &str) -> Result<()> {
    out.write_all(bytes).map_err(|e| Error::tensor(name, format!("writing: {e}")))
}

/// Source bytes to f32, as the converter's `to(torch.float32)` (f64 rounds to nearest).
fn decode(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len() / dtype.size()];
    decode_f32_with(SimdTier::active(), dtype, bytes, &mut out);
    out
}

/// Appends `values` as little-endian bf16, rounded to nearest even (NaN made quiet), the bits of
/// `half::bf16::from_f32`.
pub(crate) fn encode_bf16(tier: SimdTier, values: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + 2 * values.len(), 0);
    let out = &mut out[start..];
    dispatch_simd!(tier, bf16_lanes, (), (values: &[f32], out: &mut [u8]))
}

#[inline(always)]
fn bf16_lanes(values: &[f32], out: &mut [u8]) {
    for (o, v) in out.chunks_exact_mut(2).zip(values) {
        let b = v.to_bits();
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        let h = if v.is_nan() { (b >> 16) as u16 | 0x40 } else { rounded };
        o.copy_from_slice(&h.to_le_bytes());
    }
}

/// Appends `values` as little-endian f16, rounded to nearest even (F16C's `vcvtps2ph` from AVX2
/// on, `half::f16::from_f32` below; they differ only in NaN payloads).
pub(crate) fn encode_f16(tier: SimdTier, values: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + 2 * values.len(), 0);
    let out = &mut out[start..];
    #[cfg(target_arch = "x86_64")]
    if tier >= SimdTier::Avx2 {
        return x86::f32_to_f16(values, out);
    }
    out.chunks_exact_mut(2).zip(values).for_each(|(o, v)| o.copy_from_slice(&f16::from_f32(*v).to_le_bytes()));
}

/// Appends `values` (whole blocks) as q8_0 blocks: the f16 scale, then 32 quants.
pub(crate) fn encode_q8_0(tier: SimdTier, values: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + values.len() / Q8_0_BLOCK * 34, 0);
    quantize_row_into(tier, values, &mut out[start..]);
}

/// The F16C conversions, eight values at a time, for the AVX2 and AVX-512 tiers.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    pub(super) fn f32_to_f16(values: &[f32], out: &mut [u8]) {
        assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c"));
        // SAFETY: the CPU has the features (checked above).
        unsafe { f32_to_f16_f16c(values, out) }
    }

    #[target_feature(enable = "avx2,f16c")]
    fn f32_to_f16_f16c(values: &[f32], out: &mut [u8]) {
        let n = values.len().min(out.len() / 2);
        let whole = n / 8 * 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: elements i..i+8 of both buffers exist (i + 8 ≤ n).
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(values.as_ptr().add(i)));
                _mm_storeu_si128(out.as_mut_ptr().add(2 * i) as *mut __m128i, h);
            }
        }
        for i in whole..n {
            out[2 * i..2 * i + 2].copy_from_slice(&f16::from_f32(values[i]).to_le_bytes());
        }
    }
}

/// Gemma's `w + 1`, computed in the tensor's own type as torch does (f16 stays f16; bf16 was
/// already widened to f32 by the converter).
fn plus_one(dtype: DType, values: &mut [f32]) {
    for v in values {
        *v = match dtype {
            DType::F16 => f16::from_f32(*v + 1.0).to_f32(),
            _ => *v + 1.0,
        };
    }
}

/// Reorders the rows of each group of `group_rows` rows (one head) as `LlamaModel.permute` does.
fn permute(values: &[f32], group_rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    let n_rows = values.len() / cols;
    for r in 0..n_rows {
        let (g, k) = (r / group_rows, r % group_rows);
        let src = g * group_rows + source_row(k, group_rows, 1);
        out[r * cols..(r + 1) * cols].copy_from_slice(&values[src * cols..(src + 1) * cols]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::TensorInfo;
    use crate::plan::Origin;
    use crate::types::GgmlType;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    use half::bf16;

    #[test]
    fn a_permuted_tensor_fed_in_odd_chunks_equals_the_whole_permutation() {
        // 2 heads x 4 rows x 3 cols, f32 -> f32; rows [0..8) -> [0 2 1 3 4 6 5 7].
        let t = OutputTensor {
            info: TensorInfo { name: "blk.0.attn_q.weight".into(), shape: vec![8, 3], ggml_type: 0, bytes: 96 },
            ggml: GgmlType::F32,
            transform: Transform::Permute { heads: 2 },
            origin: Origin::Input(0),
            offset: 0,
        };
        let src: Vec<u8> = (0..24).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let mut enc = TensorEncoder::new(&t, DType::F32);
        let mut out = vec![];
        for chunk in src.chunks(7) {
            enc.feed(chunk, &mut out).unwrap();
        }
        enc.finish(32, &mut out).unwrap();
        let rows: Vec<f32> =
            out[..96].chunks(12).map(|r| f32::from_le_bytes(r[..4].try_into().unwrap()) / 3.0).collect();
        assert_eq!(rows, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(out.len(), 96);
        let mut short = TensorEncoder::new(&t, DType::F32);
        short.feed(&src[..10], &mut vec![]).unwrap();
        assert!(short.finish(32, &mut vec![]).unwrap_err().to_string().contains("got 10 of 96 bytes"));
    }

    /// xorshift64 bit patterns: every f32 and f16 class (NaN, ±infinity, subnormals, ties).
    fn bit_patterns(n: usize) -> Vec<u32> {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u32
            })
            .collect()
    }

    fn same_or_both_nan_f32(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn decoding_equals_half_and_casts_at_every_tier() {
        let bits = bit_patterns(100_003);
        let b16: Vec<u8> = bits.iter().flat_map(|b| (*b as u16).to_le_bytes()).collect();
        let f64s: Vec<u8> = bits.iter().flat_map(|b| (f32::from_bits(*b) as f64 * 1.000001).to_le_bytes()).collect();
        for tier in SimdTier::available() {
            let mut out = vec![0f32; bits.len()];
            decode_f32_with(tier, DType::BF16, &b16, &mut out);
            assert!(
                out.iter().zip(&bits).all(|(o, b)| same_or_both_nan_f32(*o, bf16::from_bits(*b as u16).to_f32())),
                "{tier} bf16"
            );
            decode_f32_with(tier, DType::F16, &b16, &mut out);
            assert!(
                out.iter().zip(&bits).all(|(o, b)| same_or_both_nan_f32(*o, f16::from_bits(*b as u16).to_f32())),
                "{tier} f16"
            );
            decode_f32_with(tier, DType::F64, &f64s, &mut out);
            for (o, c) in out.iter().zip(f64s.chunks(8)) {
                assert!(same_or_both_nan_f32(*o, f64::from_le_bytes(c.try_into().unwrap()) as f32), "{tier} f64");
            }
        }
    }

    #[test]
    fn f16_and_bf16_encoding_equals_half_at_every_tier() {
        let values: Vec<f32> = bit_patterns(100_003).into_iter().map(f32::from_bits).collect();
        for tier in SimdTier::available() {
            let (mut b, mut h) = (vec![], vec![]);
            encode_bf16(tier, &values, &mut b);
            encode_f16(tier, &values, &mut h);
            for (i, v) in values.iter().enumerate() {
                let (gb, gh) =
                    (bf16::from_le_bytes([b[2 * i], b[2 * i + 1]]), f16::from_le_bytes([h[2 * i], h[2 * i + 1]]));
                assert_eq!(gb.to_bits(), bf16::from_f32(*v).to_bits(), "{tier} bf16 of {v:e}");
                let want = f16::from_f32(*v);
                assert!(gh.to_bits() == want.to_bits() || (gh.is_nan() && want.is_nan()), "{tier} f16 of {v:e}");
            }
        }
    }

    #[test]
    fn q8_0_encoding_equals_candles_quantizer_at_every_tier() {
        let mut values: Vec<f32> = bit_patterns(32 * 500)
            .into_iter()
            .map(|b| (b as i32 as f32) * 1e-9 * if b % 7 == 0 { 1e-30 } else { 1.0 })
            .collect();
        values[..32].fill(0.0);
        values[32..64].iter_mut().enumerate().for_each(|(i, v)| *v = (i as f32 - 16.0) * 0.5);
        let t = Tensor::from_slice(&values, (values.len() / 64, 64), &Device::Cpu).unwrap();
        let want = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap().data().unwrap().to_vec();
        for tier in SimdTier::available() {
            let mut got = vec![];
            encode_q8_0(tier, &values, &mut got);
            assert!(got == want, "{tier}");
        }
    }
}
