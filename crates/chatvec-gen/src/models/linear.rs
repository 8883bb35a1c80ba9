//! Linear layers whose weights stay small: dense in the compute dtype, or held compactly in a
//! ggml block format (q8_0, q4_k, q4_0, q6_k, bf16, f16). Compact weights are multiplied by
//! chatvec's kernels where candle's are slow (q8_0, bf16 and f16: see `kernels.rs`) and by candle's
//! quantized kernels otherwise.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::k_quants::{
    self, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0,
    GgmlType,
};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use chatvec_format::SimdTier;
use half::{bf16, f16};
use rayon::prelude::*;

use super::kernels::q8_0::{Q8x8Block, Q8x8Matrix, GROUP};
use super::kernels::{self, Q8Block};
use super::weights::WeightSource;
use crate::error::Result;

/// A weight matrix `(out, in)`.
#[derive(Debug, Clone)]
pub(crate) enum LinearWeight {
    /// Dense in the compute dtype: `x W^T` by candle's matmul (f32 on CPU is the exact path the
    /// transformers parity tests use; bf16 on CUDA).
    Dense(Tensor),
    /// Held in a ggml block format (any format on a GPU; on the CPU the formats without a
    /// layout of chatvec's own).
    Compact(Arc<QTensor>),
    /// q8_0 on the CPU, regrouped for chatvec's kernel (`kernels/q8_0.rs`).
    Q8_0(Arc<Q8x8Matrix>),
}

impl LinearWeight {
    /// Quantized weights as the device multiplies them: q8_0 regrouped on the CPU (a copy of
    /// one matrix at a time while it is regrouped), others as they are.
    pub(crate) fn quantized(q: QTensor, device: &Device) -> Result<LinearWeight> {
        if !(device.is_cpu() && q.dtype() == GgmlDType::Q8_0) {
            return Ok(LinearWeight::Compact(Arc::new(q)));
        }
        let (n, k) = q.shape().dims2()?;
        let data = q.data()?;
        Ok(LinearWeight::Q8_0(Arc::new(Q8x8Matrix::from_rows(n, k, typed::<Q8Block>(&data)?))))
    }
}

/// `y = x W^T (+ b)` over the last dimension of `x`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) weight: LinearWeight,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let k = dims.pop().unwrap_or(1);
        let rows = x.reshape(((), k))?;
        let y = match &self.weight {
            LinearWeight::Dense(w) => rows.matmul(&w.t()?)?,
            LinearWeight::Compact(q) if q.device().is_cpu() => rows
                .to_dtype(DType::F32)?
                .contiguous()?
                .apply_op1_no_bwd(&CompactMatMul(q.clone()))?
                .to_dtype(x.dtype())?,
            LinearWeight::Compact(q) => rows.contiguous()?.apply_op1_no_bwd(q.as_ref())?,
            LinearWeight::Q8_0(w) => {
                rows.to_dtype(DType::F32)?.contiguous()?.apply_op1_no_bwd(&Q8MatMul(w.clone()))?.to_dtype(x.dtype())?
            }
        };
        let y = match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        };
        dims.push(y.dim(1)?);
        Ok(y.reshape(dims)?)
    }
}

/// `$f::<T>$args` with `T` the Rust type of the ggml type `$dtype`: bf16/f16/f32 and candle's
/// block types, every type a GGUF file of the supported kinds holds; `$other => $rest` for the
/// others. The one list of them for converting and for holding bytes.
macro_rules! by_ggml_type {
    ($dtype:expr, $f:ident $args:tt, $other:ident => $rest:expr) => {
        match $dtype {
            GgmlDType::F32 => $f::<f32> $args,
            GgmlDType::F16 => $f::<f16> $args,
            GgmlDType::BF16 => $f::<bf16> $args,
            GgmlDType::Q4_0 => $f::<BlockQ4_0> $args,
            GgmlDType::Q4_1 => $f::<BlockQ4_1> $args,
            GgmlDType::Q5_0 => $f::<BlockQ5_0> $args,
            GgmlDType::Q5_1 => $f::<BlockQ5_1> $args,
            GgmlDType::Q8_0 => $f::<BlockQ8_0> $args,
            GgmlDType::Q2K => $f::<BlockQ2K> $args,
            GgmlDType::Q3K => $f::<BlockQ3K> $args,
            GgmlDType::Q4K => $f::<BlockQ4K> $args,
            GgmlDType::Q5K => $f::<BlockQ5K> $args,
            GgmlDType::Q6K => $f::<BlockQ6K> $args,
            $other => $rest,
        }
    };
}

/// The format a `(out, in)` matrix is held in when `format` is asked for: `format` itself, else
/// q8_0 when `in` is not a multiple of its block size, else None (dense), as llama.cpp falls back
/// for odd shapes.
pub(crate) fn fitting_format(format: GgmlDType, k: usize) -> Option<GgmlDType> {
    [format, GgmlDType::Q8_0].into_iter().find(|f| k.is_multiple_of(f.block_size()))
}

/// Converts the `(rows, k)` matrices `parts` of `src`, stacked along the output dimension, to
/// `format` (which must divide `k`). Each thread reads one slice of about a million weights at a
/// time, widens it to f32 and writes its blocks straight into the result: the matrix is never
/// held whole in its stored dtype or in f32, and the blocks are never copied.
pub(crate) fn convert(
    src: &dyn WeightSource,
    parts: &[(&str, usize)],
    k: usize,
    format: GgmlDType,
    device: &Device,
) -> Result<LinearWeight> {
    if format == GgmlDType::Q8_0 && device.is_cpu() {
        return Ok(LinearWeight::Q8_0(Arc::new(convert_q8x8(src, parts, k)?)));
    }
    // A GGUF file may mix block types in one stacked projection (re-quantized to the widest),
    // so every type a GGUF file holds can be asked for.
    let q = by_ggml_type!(format, convert_as(src, parts, k), other => {
        Err(crate::GenError::InvalidArgument(format!("cannot convert weights to {other:?}")))
    })?;
    if device.is_cpu() {
        return Ok(LinearWeight::Compact(Arc::new(q)));
    }
    let storage = QStorage::from_data(q.data()?, device, format)?;
    Ok(LinearWeight::Compact(Arc::new(QTensor::new(storage, q.shape().clone())?)))
}

/// [`convert_blocks`] with the block type's own quantizer (candle's, one block at a time).
fn convert_as<T: GgmlType + Send + Sync + 'static>(
    src: &dyn WeightSource,
    parts: &[(&str, usize)],
    k: usize,
) -> Result<QTensor> {
    // SAFETY: ggml's block types and bf16/f16/f32 are plain numbers, for which all-zero bytes
    // are valid (a zero block).
    let blocks = unsafe { crate::alloc::zeroed_weights::<T>(total_rows(parts) * (k / T::BLCK_SIZE)) };
    convert_blocks(src, parts, k, blocks, T::from_float)
}

/// q8_0 for the CPU kernel, through chatvec-format's row quantizer (the GGUF writer's too), which
/// runs at the process's SIMD tier and gives the same blocks as candle's scalar
/// `BlockQ8_0::from_float` (both are llama.cpp's rule), several times faster: at 8B it was half of
/// the load's CPU time. Each thread quantizes a run of whole groups of eight rows (about a million
/// weights) into its own buffer of ggml blocks and regroups them in place.
fn convert_q8x8(src: &dyn WeightSource, parts: &[(&str, usize)], k: usize) -> Result<Q8x8Matrix> {
    let (n, kb) = (total_rows(parts), k / BlockQ8_0::BLCK_SIZE);
    let mut matrix = Q8x8Matrix::zeros(n, k);
    let groups_per_chunk = (1 << 20) / (GROUP * k).max(1) + 1;
    // Rows widened at a time: 16 KiB of f32, which stays in L1 until quantized.
    let piece_rows = (4096 / k.max(1)).max(1);
    let chunks: Vec<Vec<&mut [Q8x8Block]>> = {
        let mut groups = matrix.groups_mut();
        std::iter::from_fn(|| {
            Some(groups.by_ref().take(groups_per_chunk).collect::<Vec<_>>()).filter(|c| !c.is_empty())
        })
        .collect()
    };
    chunks.into_par_iter().enumerate().try_for_each_init(Vec::new, |blocks: &mut Vec<u8>, (c, mut groups)| {
        let rows = c * groups_per_chunk * GROUP..((c + 1) * groups_per_chunk * GROUP).min(n);
        for_stacked_rows(src, parts, k, rows, piece_rows, &mut |first, xs| {
            blocks.resize(xs.len() / BlockQ8_0::BLCK_SIZE * 34, 0u8);
            chatvec_format::q8_0::quantize_row_into(SimdTier::active(), xs, blocks);
            for (i, row) in blocks.chunks_exact(kb * 34).enumerate() {
                let r = first + i;
                for (dst, block) in groups[r / GROUP].iter_mut().zip(row.chunks_exact(34)) {
                    dst.set_ggml(r % GROUP, block.try_into().expect("34-byte blocks"));
                }
            }
            Ok(())
        })
    })?;
    Ok(matrix)
}

/// Rows `rows` (of `k` weights) of the `parts` stacked along the output dimension, widened to f32
/// and handed to `each` at most `piece_rows` rows at a time, with the first row's offset within
/// `rows`.
fn for_stacked_rows(
    src: &dyn WeightSource,
    parts: &[(&str, usize)],
    k: usize,
    rows: std::ops::Range<usize>,
    piece_rows: usize,
    each: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
) -> Result<()> {
    let mut start = 0;
    for &(name, part_rows) in parts {
        let (lo, hi) = (rows.start.max(start), rows.end.min(start + part_rows));
        if lo < hi {
            src.rows_f32_in_pieces(name, &[part_rows, k], lo - start..hi - start, piece_rows, &mut |i, xs| {
                each(lo - rows.start + i, xs)
            })?;
        }
        start += part_rows;
    }
    Ok(())
}

fn total_rows(parts: &[(&str, usize)]) -> usize {
    parts.iter().map(|p| p.1).sum()
}

/// Converts the `parts` (see [`convert`]) into `blocks` with `quantize`: each thread widens one
/// slice of about a million weights into its own f32 buffer (smaller slices cost more
/// `madvise` calls than they save in cache misses, and leave partial pages mapped) and writes its blocks in place.
fn convert_blocks<T: GgmlType + Send + Sync + 'static>(
    src: &dyn WeightSource,
    parts: &[(&str, usize)],
    k: usize,
    mut blocks: Vec<T>,
    quantize: impl Fn(&[f32], &mut [T]) + Sync,
) -> Result<QTensor> {
    let per_row = k / T::BLCK_SIZE;
    let rows_per_chunk = (1 << 20) / k.max(1) + 1;
    let mut rest = blocks.as_mut_slice();
    for &(name, rows) in parts {
        let (part, tail) = rest.split_at_mut(rows * per_row);
        rest = tail;
        part.par_chunks_mut(rows_per_chunk * per_row).enumerate().try_for_each_init(Vec::new, |xs, (i, out)| {
            let start = i * rows_per_chunk;
            let n_rows = out.len() / per_row;
            xs.resize(n_rows * k, 0f32);
            src.rows_f32(name, &[rows, k], start..start + n_rows, xs)?;
            quantize(xs, out);
            Ok::<_, crate::GenError>(())
        })?;
    }
    Ok(QTensor::new(QStorage::Cpu(Box::new(blocks)), (total_rows(parts), k))?)
}

/// Compact weights for the CPU from their ggml bytes, the `parts` one after the other, copied
/// once into memory from [`crate::alloc::zeroed_weights`] (huge pages), where candle's
/// `QStorage::from_data` copies them into a plain `Vec`: weights from a GGUF file stream as fast
/// as converted ones.
pub(crate) fn cpu_storage(parts: &[&[u8]], dtype: GgmlDType) -> Result<QStorage> {
    fn held<T: GgmlType + Send + Sync + 'static>(parts: &[&[u8]]) -> Result<QStorage> {
        let (size, total) = (std::mem::size_of::<T>(), parts.iter().map(|p| p.len()).sum::<usize>());
        if !total.is_multiple_of(size) {
            let what = format!("{total} bytes are not whole {:?} blocks of {size}", T::DTYPE);
            return Err(crate::GenError::InvalidArgument(what));
        }
        // SAFETY: ggml's block types and bf16/f16/f32 are plain numbers: all-zero bytes are valid.
        let mut values = unsafe { crate::alloc::zeroed_weights::<T>(total / size) };
        // SAFETY: `values` owns exactly `total` bytes, and any bytes are valid for these
        // plain-number types (as candle's own `from_data` reads them).
        let dst = unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr() as *mut u8, total) };
        let mut at = 0;
        for part in parts {
            dst[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        Ok(QStorage::Cpu(Box::new(values)))
    }
    // The types chatvec neither produces nor reads from GGUF files: candle's plain copy.
    by_ggml_type!(dtype, held(parts), other => Ok(QStorage::from_data(Cow::Owned(parts.concat()), &Device::Cpu, other)?))
}

/// Several quantized matrices with the same input stacked along the output dimension: their
/// bytes concatenated when they share a format, else re-quantized to the widest of them.
pub(crate) fn stack_quantized(parts: Vec<QTensor>, device: &Device) -> Result<LinearWeight> {
    let widest = parts
        .iter()
        .map(|q| q.dtype())
        .max_by(|a, b| (a.type_size() * b.block_size()).cmp(&(b.type_size() * a.block_size())))
        .expect("at least one part");
    let k = parts[0].shape().dims2()?.1;
    if parts.iter().all(|q| q.dtype() == widest) {
        if parts.len() == 1 && device.is_cpu() {
            return LinearWeight::quantized(parts.into_iter().next().expect("one part"), device);
        }
        let n: usize = parts.iter().map(|q| q.shape().dims()[0]).sum();
        let datas = parts.iter().map(|q| q.data()).collect::<candle_core::Result<Vec<_>>>()?;
        let slices: Vec<&[u8]> = datas.iter().map(|d| d.as_ref()).collect();
        let storage = match device {
            Device::Cpu => cpu_storage(&slices, widest)?,
            _ => QStorage::from_data(Cow::Owned(slices.concat()), device, widest)?,
        };
        return LinearWeight::quantized(QTensor::new(storage, (n, k))?, device);
    }
    let dense = parts.iter().map(|q| q.dequantize(&Device::Cpu)).collect::<candle_core::Result<Vec<_>>>()?;
    let stacked: HashMap<String, Tensor> = [("stacked".to_string(), Tensor::cat(&dense, 0)?)].into();
    let n = stacked["stacked"].dim(0)?;
    convert(&stacked, &[("stacked", n)], k, widest, device)
}

/// `x W^T` on CPU straight from the compact blocks with `k_quants::matmul`.
///
/// Not `QMatMul`: on AVX512-VNNI machines its forward repacks q8_0/q4_k weights into tiles on
/// first use and keeps both copies, doubling the memory the weights take (an 8B model at q8_0
/// would need 17 GB instead of 8.5).
struct CompactMatMul(Arc<QTensor>);

impl CustomOp1 for CompactMatMul {
    fn name(&self) -> &'static str {
        "compact-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.0.shape().dims2()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("compact matmul needs a contiguous input")
        };
        let lhs = &storage.as_slice::<f32>()?[start..end];
        let m = lhs.len() / k;
        if let Some(nan) = non_finite_in_nan_out(lhs, m, n) {
            return Ok(nan);
        }
        let mut dst = vec![0f32; m * n];
        let data = self.0.data()?;
        let mkn = (m, k, n);
        match self.0.dtype() {
            GgmlDType::BF16 => kernels::matmul_half(m, k, lhs, typed::<bf16>(&data)?, &mut dst),
            GgmlDType::F16 => kernels::matmul_half(m, k, lhs, typed::<f16>(&data)?, &mut dst),
            GgmlDType::Q4K => matmul_blocks::<BlockQ4K>(mkn, lhs, &data, &mut dst)?,
            GgmlDType::Q4_0 => matmul_blocks::<BlockQ4_0>(mkn, lhs, &data, &mut dst)?,
            GgmlDType::Q5K => matmul_blocks::<BlockQ5K>(mkn, lhs, &data, &mut dst)?,
            GgmlDType::Q6K => matmul_blocks::<BlockQ6K>(mkn, lhs, &data, &mut dst)?,
            GgmlDType::F32 => matmul_blocks::<f32>(mkn, lhs, &data, &mut dst)?,
            // Formats chatvec does not produce (from a GGUF): candle's own path.
            _ => {
                let x = Tensor::from_slice(lhs, (m, k), &Device::Cpu)?;
                let y = x.apply_op1_no_bwd(self.0.as_ref())?;
                dst = y.flatten_all()?.to_vec1::<f32>()?;
            }
        }
        Ok((CpuStorage::F32(dst), Shape::from((m, n))))
    }
}

/// Quantizing a NaN/Inf activation to 8 bits gives finite garbage, which would hide a broken
/// model from the non-finite logits check: NaN in gives NaN out, as in a dense matmul.
fn non_finite_in_nan_out(lhs: &[f32], m: usize, n: usize) -> Option<(CpuStorage, Shape)> {
    let any = lhs.iter().any(|v| !v.is_finite());
    any.then(|| (CpuStorage::F32(vec![f32::NAN; m * n]), Shape::from((m, n))))
}

/// `x W^T` on the CPU for q8_0 weights in chatvec's layout (`kernels/q8_0.rs`).
struct Q8MatMul(Arc<Q8x8Matrix>);

impl CustomOp1 for Q8MatMul {
    fn name(&self) -> &'static str {
        "q8_0-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.0.shape();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("q8_0 matmul needs a contiguous input")
        };
        let lhs = &storage.as_slice::<f32>()?[start..end];
        let m = lhs.len() / k;
        if let Some(nan) = non_finite_in_nan_out(lhs, m, n) {
            return Ok(nan);
        }
        let mut dst = vec![0f32; m * n];
        kernels::q8_0::matmul_q8_0(m, lhs, &self.0, &mut dst);
        Ok((CpuStorage::F32(dst), Shape::from((m, n))))
    }
}

fn matmul_blocks<T: GgmlType>(
    mkn: (usize, usize, usize),
    lhs: &[f32],
    data: &[u8],
    dst: &mut [f32],
) -> candle_core::Result<()> {
    k_quants::matmul(mkn, lhs, typed::<T>(data)?, dst)
}

/// The QTensor's bytes as its blocks. Only called with the block type its dtype names.
fn typed<T>(data: &[u8]) -> candle_core::Result<&[T]> {
    let size = std::mem::size_of::<T>();
    if !data.len().is_multiple_of(size) || !(data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        candle_core::bail!("compact weight storage is not a whole number of aligned blocks")
    }
    // SAFETY: the bytes are the QTensor's own storage of `T` blocks (its dtype says so), checked
    // above for size and alignment, and borrowed for the duration of the call.
    Ok(unsafe { std::slice::from_raw_parts(data.as_ptr() as *const T, data.len() / size) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::CheckpointWeights;
    use chatvec_format::testing::Bits;

    /// A bf16 checkpoint of two `(rows, k)` matrices with values of many magnitudes, and the same
    /// values as f32.
    fn bf16_checkpoint(dir: &std::path::Path, shapes: &[(&str, usize)], k: usize) -> HashMap<String, Vec<f32>> {
        let mut g = Bits(0x5eed_0f10_ad00_0001);
        let mut f32s = HashMap::new();
        let mut bytes = HashMap::new();
        for &(name, rows) in shapes {
            let values: Vec<f32> = (0..rows * k)
                .map(|i| {
                    let unit = g.next_u64() as u32 as f32 / u32::MAX as f32 - 0.5;
                    bf16::from_f32(unit * [1e-3, 1.0, 300.0][i / k % 3]).to_f32()
                })
                .collect();
            bytes.insert(
                name.to_string(),
                values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect::<Vec<u8>>(),
            );
            f32s.insert(name.to_string(), values);
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = shapes
            .iter()
            .map(|&(name, rows)| {
                let view = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![rows, k], &bytes[name]);
                (name.to_string(), view.unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
        f32s
    }

    #[test]
    fn q8_0_at_load_equals_candles_quantizer_on_the_same_weights() {
        let dir = tempfile::tempdir().unwrap();
        // 4100 rows of 256: more than one million weights, so several threads' slices and a
        // short last slice; the second part is stacked after the first.
        let (k, shapes) = (256, [("a", 4100), ("b", 7)]);
        let values = bf16_checkpoint(dir.path(), &shapes, k);
        let src = CheckpointWeights::open(dir.path()).unwrap();
        let LinearWeight::Q8_0(q) = convert(&src, &shapes, k, GgmlDType::Q8_0, &Device::Cpu).unwrap() else {
            panic!("q8_0 on the CPU is held in chatvec's layout")
        };
        let mut expected = vec![BlockQ8_0::zeros(); (4100 + 7) * k / 32];
        let all: Vec<f32> = shapes.iter().flat_map(|(name, _)| values[*name].iter().copied()).collect();
        BlockQ8_0::from_float(&all, &mut expected);
        assert_eq!(q.shape(), (4107, k));
        for (r, want) in expected.chunks_exact(k / 32).enumerate() {
            // SAFETY: a `repr(C)` block of plain integers, the layout `Q8Block` asserts.
            let want: Vec<Q8Block> =
                want.iter().map(|b| unsafe { *(b as *const BlockQ8_0 as *const Q8Block) }).collect();
            assert!(q.row(r) == want, "row {r}: q8_0 blocks differ from candle's");
        }
    }
}
