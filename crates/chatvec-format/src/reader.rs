//! One float tensor of a checkpoint read as a stream of f64, by element ranges: decode a block,
//! use it, release its pages. The streaming passes (`inspect` in chatvec-eval, and the merge's
//! inputs) read through it so that memory stays at a few blocks whatever the model's size.

use std::ops::Range;

use crate::dtype::decode;
use crate::{Checkpoint, DType, TensorEntry};

/// A float tensor ready to stream: its checkpoint, entry and element type.
#[derive(Clone, Copy)]
pub struct TensorReader<'a> {
    /// The checkpoint holding it.
    pub ckpt: &'a Checkpoint,
    /// The tensor.
    pub entry: &'a TensorEntry,
    /// Its element type.
    pub dtype: DType,
}

impl<'a> TensorReader<'a> {
    /// A reader of `entry`, or `None` when it is not a float tensor.
    pub fn new(ckpt: &'a Checkpoint, entry: &'a TensorEntry) -> Option<Self> {
        Some(TensorReader { ckpt, entry, dtype: entry.dtype? })
    }

    /// The bytes of elements `elems`.
    fn bytes(&self, elems: &Range<usize>) -> Range<usize> {
        let size = self.dtype.size();
        elems.start * size..elems.end * size
    }

    /// The stored bytes of elements `elems`.
    pub fn raw(&self, elems: Range<usize>) -> &'a [u8] {
        self.ckpt.bytes(self.entry, self.bytes(&elems))
    }

    /// Decodes elements `elems` into `out` (of the same length).
    pub fn read(&self, elems: Range<usize>, out: &mut [f64]) {
        decode(self.dtype, self.raw(elems), out);
    }

    /// Drops the pages of elements `elems` from this process's memory; returns their bytes.
    pub fn release(&self, elems: Range<usize>) -> usize {
        let bytes = self.bytes(&elems);
        let len = bytes.len();
        self.ckpt.release(self.entry, bytes);
        len
    }

    /// Asks the kernel to read elements `elems` in the background.
    pub fn prefetch(&self, elems: Range<usize>) {
        self.ckpt.prefetch(self.entry, self.bytes(&elems));
    }
}
