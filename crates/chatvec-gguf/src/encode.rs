//! Turning a tensor's source bytes, fed in chunks of any size, into its GGUF bytes: decode to
//! f32 as the converter does, apply the transform, encode whole rows, write, pad.
//!
//! Memory: one batch of rows (a few MiB) plus, for the Q/K permutation, the rows of one head,
//! since a permuted row comes from the other half of its head.

use std::io::Write;

use chatvec_format::{DType, Error, Result};
use half::{bf16, f16};
use rayon::prelude::*;

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
    match dtype {
        DType::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        DType::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        DType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect(),
        DType::F64 => {
            bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect()
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
}
