//! Runs a [`Plan`]: streams every output tensor block by block through the merge kernels into a
//! [`TensorSink`] (the safetensors `ShardWriter`, or a GGUF writer), in parallel within a block,
//! releasing input pages as it goes, so memory stays
//! at a few blocks whatever the model's size.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rayon::prelude::*;

use crate::checkpoint::{Checkpoint, TensorEntry};
use crate::dtype::{decode, encode};
use crate::kernel::{chat_vector, feature_porter, PorterParams, PorterRange};
use crate::plan::{entry, Action, Plan, PlannedTensor, Src, Term};
use crate::writer::TensorSink;
use crate::{DType, Error, Result};

/// Output bytes per block handed to the writer.
pub const BLOCK_BYTES: usize = 16 << 20;
/// Elements per parallel task within a block (small enough that its f64 scratch stays in cache).
pub const TASK_ELEMS: usize = 1 << 12;

/// Progress of a run, reported in output bytes.
pub trait Progress: Sync {
    /// Called once with the total.
    fn begin(&self, _total_bytes: u64) {}
    /// Called as blocks are produced.
    fn advance(&self, _bytes: u64) {}
    /// Called at the end.
    fn finish(&self) {}
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Counters a run fills in.
#[derive(Debug, Default)]
pub struct Stats {
    /// Input bytes read.
    pub bytes_read: AtomicU64,
    /// Elements whose value changed when rounded to the output dtype (extract reports these: an
    /// f32 vector that is inexact cannot reproduce `merge` bit for bit).
    pub inexact: AtomicU64,
}

/// Streams `plan` into `writer`; `cancel` stops it between blocks with [`Error::Interrupted`].
pub fn run(
    models: &[Checkpoint],
    plan: &Plan,
    writer: &mut dyn TensorSink,
    order: &[usize],
    progress: &dyn Progress,
    cancel: &AtomicBool,
    stats: &Stats,
) -> Result<()> {
    for &i in order {
        let t = &plan.tensors[i];
        match &t.action {
            Action::Copy(src) => copy_tensor(models, src, writer, progress, cancel, stats)?,
            Action::Combine { .. } => combine_tensor(models, t, writer, progress, cancel, stats)?,
        }
    }
    Ok(())
}

fn check(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    Ok(())
}

fn copy_tensor(
    models: &[Checkpoint],
    src: &Src,
    writer: &mut dyn TensorSink,
    progress: &dyn Progress,
    cancel: &AtomicBool,
    stats: &Stats,
) -> Result<()> {
    let ckpt = &models[src.model];
    let e = entry(models, src);
    let mut off = 0;
    ckpt.prefetch(e, 0..BLOCK_BYTES);
    while off < e.byte_len() {
        check(cancel)?;
        let end = (off + BLOCK_BYTES).min(e.byte_len());
        ckpt.prefetch(e, end..end + BLOCK_BYTES);
        let mut block = writer.buffer(end - off);
        block.copy_from_slice(ckpt.bytes(e, off..end));
        ckpt.release(e, off..end);
        writer.push(block)?;
        stats.bytes_read.fetch_add((end - off) as u64, Ordering::Relaxed);
        progress.advance((end - off) as u64);
        off = end;
    }
    Ok(())
}

/// A source tensor ready to read: its checkpoint, entry and dtype.
struct Input<'a> {
    ckpt: &'a Checkpoint,
    entry: &'a TensorEntry,
    dtype: DType,
}

impl<'a> Input<'a> {
    fn new(models: &'a [Checkpoint], src: &Src) -> Self {
        let entry = entry(models, src);
        Input { ckpt: &models[src.model], entry, dtype: entry.dtype.expect("plan only combines floats") }
    }
    fn read(&self, range: std::ops::Range<usize>, out: &mut [f64]) {
        let s = self.dtype.size();
        decode(self.dtype, self.ckpt.bytes(self.entry, range.start * s..range.end * s), out);
    }
    fn release(&self, range: std::ops::Range<usize>) {
        let s = self.dtype.size();
        self.ckpt.release(self.entry, range.start * s..range.end * s);
    }
    fn prefetch(&self, range: std::ops::Range<usize>) {
        let s = self.dtype.size();
        self.ckpt.prefetch(self.entry, range.start * s..range.end * s);
    }
}

struct TermInputs<'a> {
    ratio: f64,
    plus: Input<'a>,
    minus: Option<Input<'a>>,
}

fn combine_tensor(
    models: &[Checkpoint],
    t: &PlannedTensor,
    writer: &mut dyn TensorSink,
    progress: &dyn Progress,
    cancel: &AtomicBool,
    stats: &Stats,
) -> Result<()> {
    let Action::Combine { target, terms, rows, porter, overrides } = &t.action else {
        unreachable!("combine_tensor is only called for Combine")
    };
    let out = t.dtype.expect("combined tensors are float");
    let numel: usize = t.shape.iter().product();
    let cols: usize = t.shape.iter().skip(1).product();
    let covered = (*rows * cols).min(numel);
    let target = target.as_ref().map(|s| Input::new(models, s));
    let terms: Vec<TermInputs> = terms
        .iter()
        .map(|Term { ratio, plus, minus }| TermInputs {
            ratio: *ratio,
            plus: Input::new(models, plus),
            minus: minus.as_ref().map(|m| Input::new(models, m)),
        })
        .collect();
    let overrides: Vec<(usize, Input, usize)> =
        overrides.iter().map(|o| (o.row, Input::new(models, &o.src), o.src_row)).collect();
    let porter = match porter {
        Some(p) => Some((*p, porter_range(&target, &terms, covered, cancel)?)),
        None => None,
    };
    let block_elems = (BLOCK_BYTES / out.size()).max(1);
    let all_inputs = || target.iter().chain(terms.iter().flat_map(|t| std::iter::once(&t.plus).chain(&t.minus)));
    all_inputs().for_each(|i| i.prefetch(0..block_elems.min(numel)));
    let mut start = 0;
    while start < numel {
        check(cancel)?;
        let end = (start + block_elems).min(numel);
        // Keep the disk busy with the next block while this one is computed.
        all_inputs().for_each(|i| i.prefetch(end..(end + block_elems).min(numel)));
        let mut block = writer.buffer((end - start) * out.size());
        block.par_chunks_mut(TASK_ELEMS * out.size()).enumerate().for_each_init(
            || (vec![0f64; TASK_ELEMS], vec![0f64; TASK_ELEMS], vec![0f64; TASK_ELEMS]),
            |(acc, p, m), (k, chunk)| {
                let s = start + k * TASK_ELEMS;
                let e = s + chunk.len() / out.size();
                let n = e - s;
                let acc = &mut acc[..n];
                match &target {
                    Some(ti) => ti.read(s..e, acc),
                    None => acc.fill(0.0),
                }
                let ce = e.min(covered);
                if s < ce {
                    let nc = ce - s;
                    for (ti, term) in terms.iter().enumerate() {
                        term.plus.read(s..ce, &mut p[..nc]);
                        match &term.minus {
                            Some(mi) => mi.read(s..ce, &mut m[..nc]),
                            None => m[..nc].fill(0.0),
                        }
                        match (&porter, ti) {
                            (Some((params, range)), 0) => {
                                porter_block(&mut acc[..nc], &p[..nc], &m[..nc], term.ratio, params, range)
                            }
                            _ => {
                                for i in 0..nc {
                                    acc[i] = chat_vector(acc[i], p[i], m[i], term.ratio);
                                }
                            }
                        }
                    }
                }
                for (row, src, src_row) in &overrides {
                    let (rs, re) = (row * cols, (row + 1) * cols);
                    let (a, b) = (rs.max(s), re.min(e));
                    if a < b {
                        let from = src_row * cols + (a - rs);
                        src.read(from..from + (b - a), &mut acc[a - s..b - s]);
                    }
                }
                encode(out, acc, chunk);
                if target.is_none() && out != DType::F64 {
                    let mut back = [0f64; 1];
                    let w = out.size();
                    let inexact = acc
                        .iter()
                        .enumerate()
                        .filter(|(i, v)| {
                            decode(out, &chunk[i * w..(i + 1) * w], &mut back);
                            back[0] != **v
                        })
                        .count();
                    stats.inexact.fetch_add(inexact as u64, Ordering::Relaxed);
                }
            },
        );
        let mut read = 0;
        for inp in target.iter() {
            inp.release(start..end);
            read += (end - start) * inp.dtype.size();
        }
        for (row, src, src_row) in &overrides {
            if (row * cols) < end && (row + 1) * cols > start {
                src.release(src_row * cols..(src_row + 1) * cols);
                read += cols * src.dtype.size();
            }
        }
        if start < covered {
            let ce = end.min(covered);
            for term in &terms {
                for inp in std::iter::once(&term.plus).chain(&term.minus) {
                    inp.release(start..ce);
                    read += (ce - start) * inp.dtype.size();
                }
            }
        }
        stats.bytes_read.fetch_add(read as u64, Ordering::Relaxed);
        let len = block.len() as u64;
        writer.push(block)?;
        progress.advance(len);
        start = end;
    }
    Ok(())
}

fn porter_block(acc: &mut [f64], chat: &[f64], base: &[f64], ratio: f64, params: &PorterParams, range: &PorterRange) {
    // `acc` still holds the target here: the porter term is always the first.
    for i in 0..chat.len() {
        let w = range.weight(acc[i], base[i], params);
        acc[i] = feature_porter(acc[i], chat[i], base[i], ratio, w);
    }
}

/// The min and max of `|T − B|` over the covered elements (first pass of feature-porter).
fn porter_range(
    target: &Option<Input>,
    terms: &[TermInputs],
    covered: usize,
    cancel: &AtomicBool,
) -> Result<PorterRange> {
    let (Some(t), Some(b)) = (target, terms.first().and_then(|x| x.minus.as_ref())) else {
        return Err(Error::msg("feature-porter needs a target and a base model"));
    };
    check(cancel)?;
    let (min, max) = (0..covered.div_ceil(TASK_ELEMS))
        .into_par_iter()
        .map_init(
            || (vec![0f64; TASK_ELEMS], vec![0f64; TASK_ELEMS]),
            |(tv, bv), k| {
                let s = k * TASK_ELEMS;
                let e = (s + TASK_ELEMS).min(covered);
                t.read(s..e, &mut tv[..e - s]);
                b.read(s..e, &mut bv[..e - s]);
                let mut mm = (f64::INFINITY, f64::NEG_INFINITY);
                for i in 0..e - s {
                    let a = (tv[i] - bv[i]).abs();
                    mm = (mm.0.min(a), mm.1.max(a));
                }
                mm
            },
        )
        .reduce(|| (f64::INFINITY, f64::NEG_INFINITY), |x, y| (x.0.min(y.0), x.1.max(y.1)));
    t.release(0..covered);
    b.release(0..covered);
    Ok(PorterRange { min, max })
}

/// L2 norm of every row of a 2-D tensor, streamed (for special-token row detection).
pub fn row_norms(ckpt: &Checkpoint, e: &TensorEntry) -> Result<Vec<f64>> {
    let dtype = e.dtype.ok_or_else(|| Error::tensor(&e.name, "not a float tensor"))?;
    let rows = e.shape.first().copied().unwrap_or(1);
    let cols: usize = e.shape.iter().skip(1).product();
    let s = dtype.size();
    let norms = (0..rows)
        .into_par_iter()
        .map_init(
            || vec![0f64; cols],
            |buf, r| {
                decode(dtype, ckpt.bytes(e, r * cols * s..(r + 1) * cols * s), buf);
                buf.iter().map(|x| x * x).sum::<f64>().sqrt()
            },
        )
        .collect();
    ckpt.release(e, 0..e.byte_len());
    Ok(norms)
}
