//! Where decoder weights come from: a model directory opened by chatvec-format (safetensors or
//! PyTorch `.bin`, the same files, index checks and path rules as `merge`), or tensors built in
//! memory (benchmarks, tests).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use chatvec_format::{Checkpoint, SimdTier, TensorEntry};

use crate::error::{GenError, Result};

/// A named-tensor store.
pub trait WeightSource: Sync {
    /// Whether a tensor of that name exists.
    fn contains(&self, name: &str) -> bool;
    /// The tensor in its stored dtype, checked against `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Rows `rows` (along the first dimension) of the tensor, in its stored dtype; `shape` is the
    /// whole tensor's. Sources that can read part of a tensor override this, so that converting
    /// a large matrix never holds all of it in its stored dtype.
    fn rows(&self, name: &str, shape: &[usize], rows: Range<usize>) -> Result<Tensor> {
        Ok(self.tensor(name, shape)?.narrow(0, rows.start, rows.len())?)
    }
    /// Rows `rows` of the tensor widened to f32 into `out` (`rows.len()` × the row length).
    /// Sources that hold raw bytes override this to widen straight from them.
    fn rows_f32(&self, name: &str, shape: &[usize], rows: Range<usize>, out: &mut [f32]) -> Result<()> {
        let xs = self.rows(name, shape, rows)?.to_dtype(DType::F32)?.flatten_all()?;
        xs.to_vec1::<f32>()?.iter().zip(out.iter_mut()).for_each(|(x, o)| *o = *x);
        Ok(())
    }
    /// Rows `rows` of the tensor widened to f32 and handed to `each` at most `piece_rows` rows at
    /// a time, with the first row's offset within `rows`: a consumer that quantizes each piece at
    /// once finds it still in the core's cache (widening a million weights first and quantizing
    /// them after sent them through L3 twice; at 8B, on an AMD EPYC, the load's user time went
    /// from 17 to 14 s).
    fn rows_f32_in_pieces(
        &self,
        name: &str,
        shape: &[usize],
        rows: Range<usize>,
        piece_rows: usize,
        each: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let k: usize = shape[1..].iter().product();
        let mut xs = vec![0f32; rows.len() * k];
        self.rows_f32(name, shape, rows, &mut xs)?;
        for (i, piece) in xs.chunks(piece_rows.max(1) * k.max(1)).enumerate() {
            each(i * piece_rows.max(1), piece)?;
        }
        Ok(())
    }
    /// The tensor in its stored ggml format, for sources that hold one (GGUF); None otherwise.
    fn qtensor(&self, _name: &str, _shape: &[usize]) -> Result<Option<QTensor>> {
        Ok(None)
    }
}

/// A model directory's weights, memory-mapped by [`chatvec_format::Checkpoint`].
pub struct CheckpointWeights {
    ckpt: Checkpoint,
}

impl CheckpointWeights {
    /// Opens the weight files of `dir` (`model.safetensors[.index.json]` or
    /// `pytorch_model.bin[.index.json]`); every file an index names must lie inside `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let ckpt = Checkpoint::open(dir).map_err(|e| GenError::NotAModel(e.to_string()))?;
        Ok(CheckpointWeights { ckpt })
    }

    fn entry(&self, name: &str, shape: &[usize]) -> Result<&TensorEntry> {
        let err = |message: String| GenError::Weights { dir: self.ckpt.dir.clone(), message };
        let t = self.ckpt.get(name).ok_or_else(|| err(format!("missing tensor {name}")))?;
        if t.shape != shape {
            return Err(err(format!("{name} has shape {:?}, config.json implies {:?}", t.shape, shape)));
        }
        if t.dtype.is_none() {
            return Err(err(format!("{name} is stored as {}, not as a float type", t.dtype_name)));
        }
        Ok(t)
    }

    /// The entry of `name`, its row size and the byte range of `rows`, after asking the kernel to
    /// read the 16 such ranges that follow (the next slices' weights) in the background.
    fn read_ahead(
        &self,
        name: &str,
        shape: &[usize],
        rows: &Range<usize>,
    ) -> Result<(&TensorEntry, usize, Range<usize>)> {
        let t = self.entry(name, shape)?;
        let row_bytes = t.byte_len() / shape.first().copied().unwrap_or(1).max(1);
        let bytes = rows.start * row_bytes..rows.end * row_bytes;
        self.ckpt.prefetch(t, bytes.end..bytes.end + 16 * bytes.len());
        Ok((t, row_bytes, bytes))
    }
}

impl WeightSource for CheckpointWeights {
    fn contains(&self, name: &str) -> bool {
        self.ckpt.get(name).is_some()
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let rows = shape.first().copied().unwrap_or(1);
        let t = self.rows(name, shape, 0..rows)?;
        Ok(if shape.is_empty() { t.reshape(())? } else { t })
    }

    fn rows(&self, name: &str, shape: &[usize], rows: Range<usize>) -> Result<Tensor> {
        let t = self.entry(name, shape)?;
        let row_bytes = t.byte_len() / shape.first().copied().unwrap_or(1).max(1);
        let bytes = rows.start * row_bytes..rows.end * row_bytes;
        let dtype = candle_dtype(t.dtype.expect("checked by entry"));
        let mut dims = shape.to_vec();
        match dims.first_mut() {
            Some(first) => *first = rows.len(),
            None => dims.push(1),
        }
        let out = Tensor::from_raw_buffer(self.ckpt.bytes(t, bytes.clone()), dtype, &dims, &Device::Cpu)?;
        // The bytes are copied: drop the file pages from this process's memory, or every page read
        // at load stays counted in it (an 8B model converted to q8_0 peaked at 15.5 GB).
        self.ckpt.release(t, bytes);
        Ok(out)
    }

    /// Widens the mapped bytes at the process's SIMD tier, and asks the kernel to read the rows
    /// that follow meanwhile, 16 times as many as asked for (load was otherwise bound by page
    /// faults: the converting threads waited on 4 KiB reads of a cold file about half the time).
    fn rows_f32(&self, name: &str, shape: &[usize], rows: Range<usize>, out: &mut [f32]) -> Result<()> {
        let (t, _, bytes) = self.read_ahead(name, shape, &rows)?;
        let dtype = t.dtype.expect("checked by entry");
        chatvec_format::dtype::decode_f32_with(SimdTier::active(), dtype, self.ckpt.bytes(t, bytes.clone()), out);
        self.ckpt.release(t, bytes);
        Ok(())
    }

    fn rows_f32_in_pieces(
        &self,
        name: &str,
        shape: &[usize],
        rows: Range<usize>,
        piece_rows: usize,
        each: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let (t, row_bytes, bytes) = self.read_ahead(name, shape, &rows)?;
        let (dtype, tier) = (t.dtype.expect("checked by entry"), SimdTier::active());
        let piece_rows = piece_rows.max(1);
        let mut xs = vec![0f32; piece_rows * row_bytes / dtype.size()];
        for first in (rows.start..rows.end).step_by(piece_rows) {
            let last = (first + piece_rows).min(rows.end);
            let xs = &mut xs[..(last - first) * row_bytes / dtype.size()];
            chatvec_format::dtype::decode_f32_with(
                tier,
                dtype,
                self.ckpt.bytes(t, first * row_bytes..last * row_bytes),
                xs,
            );
            each(first - rows.start, xs)?;
        }
        self.ckpt.release(t, bytes);
        Ok(())
    }
}

fn candle_dtype(d: chatvec_format::DType) -> DType {
    match d {
        chatvec_format::DType::BF16 => DType::BF16,
        chatvec_format::DType::F16 => DType::F16,
        chatvec_format::DType::F32 => DType::F32,
        chatvec_format::DType::F64 => DType::F64,
    }
}

/// Tensors held in memory by name.
impl WeightSource for HashMap<String, Tensor> {
    fn contains(&self, name: &str) -> bool {
        self.contains_key(name)
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get(name).ok_or_else(|| GenError::InvalidArgument(format!("missing tensor {name}")))?;
        if t.dims() != shape {
            return Err(GenError::InvalidArgument(format!(
                "{name} has shape {:?}, config.json implies {:?}",
                t.dims(),
                shape
            )));
        }
        Ok(t.clone())
    }
}
