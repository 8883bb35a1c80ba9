//! Runs a [`Plan`]: streams every output tensor block by block through the merge kernels into one
//! [`TensorSink`] per output, in parallel tasks within a block, releasing input pages as it goes,
//! so memory stays at a few blocks whatever the model's size. Several outputs (a merge at several
//! ratios) are written from the same input blocks, so each input is read once.
//!
//! Safetensors shards take each task's piece in place ([`TensorSink::place`]) the moment it is
//! computed, while it is still in the CPU's cache; a GGUF file takes whole blocks in order.
//!
//! Inside a task the elements go through the kernel in lanes of [`LANES`]: decode each input into
//! f64, apply [`chat_vector`] element-wise, round once into the output dtype. Every step is a
//! branch-free loop over a short slice that stays in L1, so the compiler vectorizes it. The common
//! case (target plus one `chat − base`, all in the output's dtype) skips the f64 lanes: one loop
//! goes from the input bytes to the output bytes ([`chat_vector_bytes`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::{Error, Result};
use chatvec_format::checkpoint::{Checkpoint, TensorEntry};
use chatvec_format::dtype::{count_nonfinite, count_nonfinite_bytes, decode, encode};
use chatvec_format::reader::TensorReader;
use chatvec_format::writer::{TensorPlace, TensorSink, WRITE_CHUNK};
use chatvec_format::Error as ModelError;
use chatvec_format::{DType, Progress, SimdTier};

use crate::kernel::{chat_vector, feature_porter, PorterParams, PorterRange};
use crate::one_pass::chat_vector_bytes;
use crate::plan::{entry, Action, Override, Plan, PlannedTensor, Src, Term};

/// Output bytes per block handed to the writer.
pub const BLOCK_BYTES: usize = 16 << 20;
/// Elements per parallel task within a block.
pub const TASK_ELEMS: usize = 1 << 14;
/// Elements the kernel handles at a time: its f64 scratch (a few slices of this length) stays in
/// L1 cache.
pub const LANES: usize = 512;

/// Blocks of each input mapped at once: the one being computed and the next, prefetched.
pub const INPUT_BLOCKS: usize = 2;

/// An upper bound of a run's memory in bytes, with `inputs` input models, `outputs` outputs
/// written in place (see [`TensorSink::place`]) and `threads` worker threads: each input's mapped
/// blocks, and each thread's f64 scratch and output pieces. (A sink that takes blocks instead
/// adds one [`BLOCK_BYTES`] block per output, and what it holds itself.)
pub fn peak_memory(inputs: usize, outputs: usize, threads: usize) -> u64 {
    let mapped = inputs * INPUT_BLOCKS * BLOCK_BYTES;
    (mapped + threads * (Scratch::bytes(outputs) + outputs * TASK_ELEMS * size_of::<f64>())) as u64
}

/// Counters a run fills in.
#[derive(Debug, Default)]
pub struct Stats {
    /// Input bytes read.
    pub bytes_read: AtomicU64,
    /// Elements whose value changed when rounded to the output dtype (extract reports these: an
    /// f32 vector that is inexact cannot reproduce `merge` bit for bit).
    pub inexact: AtomicU64,
    /// Tensors written with NaN or infinite values (only when they are allowed).
    pub nonfinite: Mutex<Vec<NonFinite>>,
}

/// NaN or infinite values in one output tensor, and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFinite {
    /// The tensor.
    pub tensor: String,
    /// The output (index into the run's outputs).
    pub output: usize,
    /// How many of its values are NaN or infinite.
    pub count: u64,
    /// The inputs (model indices) that hold NaN or infinite values in the elements concerned.
    pub inputs: Vec<usize>,
    /// Whether the merge itself made some: finite inputs whose result overflows the dtype.
    pub created: bool,
}

impl NonFinite {
    /// One line for the user, with `roles[i]` naming model `i` ("target", "chat", ...).
    pub fn describe(&self, roles: &[&str]) -> String {
        let mut from: Vec<String> = self
            .inputs
            .iter()
            .map(|&m| format!("from the {} model", roles.get(m).copied().unwrap_or("input")))
            .collect();
        if self.created {
            from.push("created by the merge (a finite result overflows the output dtype)".into());
        }
        format!("{} NaN/Inf values {}", self.count, from.join(" and "))
    }
}

/// Where one output's bytes go, and the ratio of each vector: `ratios[i]` scales the vector of
/// term `i` of every combined tensor (terms are listed in the order of the vectors).
pub struct Output<'w> {
    /// The shards being written.
    pub writer: &'w mut dyn TensorSink,
    /// One ratio per vector.
    pub ratios: Vec<f64>,
}

/// Everything a run reads and reports to, besides the outputs.
pub struct Run<'a> {
    /// The input models, as the plan indexes them.
    pub models: &'a [Checkpoint],
    /// A name per model for messages ("target", "chat", "base").
    pub roles: &'a [&'a str],
    /// The plan.
    pub plan: &'a Plan,
    /// Plan indices in write order.
    pub order: &'a [usize],
    /// Write NaN/Inf (recorded in `stats`) instead of stopping with an error.
    pub allow_nonfinite: bool,
    /// Progress sink.
    pub progress: &'a dyn Progress,
    /// Stops the run between blocks with [`Error::Interrupted`].
    pub cancel: &'a AtomicBool,
    /// Counters.
    pub stats: &'a Stats,
}

impl Run<'_> {
    /// Streams the plan into `outputs`.
    pub fn run(&self, outputs: &mut [Output]) -> Result<()> {
        for &i in self.order {
            let t = &self.plan.tensors[i];
            let tally = Tally::new(outputs.len());
            let ratios: Vec<Vec<f64>> = outputs.iter().map(|o| o.ratios.clone()).collect();
            let places: Option<Vec<TensorPlace>> = outputs.iter().map(|o| o.writer.place(i)).collect();
            let sink = match &places {
                Some(places) => Sink::Placed(places),
                None => Sink::Pushed(outputs),
            };
            match &t.action {
                Action::Copy(src) => self.copy_tensor(src, sink, &tally)?,
                Action::Combine { .. } => self.combine_tensor(t, &ratios, sink, &tally)?,
            }
            self.check_nonfinite(t, outputs, tally)?;
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(ModelError::Interrupted.into());
        }
        Ok(())
    }

    /// Refuses (or records, when allowed) the non-finite values counted in tensor `t`.
    fn check_nonfinite(&self, t: &PlannedTensor, outputs: &[Output], tally: Tally) -> Result<()> {
        let bits = tally.inputs.load(Ordering::Relaxed);
        let inputs: Vec<usize> = (0..self.models.len()).filter(|m| bits & (1u64 << *m) != 0).collect();
        let created = bits & CREATED != 0;
        for (k, count) in tally.outputs.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let nf = NonFinite { tensor: t.name.clone(), output: k, count, inputs: inputs.clone(), created };
            if !self.allow_nonfinite {
                let at = if outputs.len() > 1 { format!(" (ratio {})", outputs[k].ratios[0]) } else { String::new() };
                return Err(ModelError::tensor(
                    &t.name,
                    format!(
                        "{}{at}; refusing to write them (pass --allow-nonfinite to write them anyway)",
                        nf.describe(self.roles)
                    ),
                )
                .into());
            }
            self.stats.nonfinite.lock().expect("no panics while held").push(nf);
        }
        Ok(())
    }

    /// Counts the NaN/Inf in the copied bytes of model `model`.
    fn tally_copied(&self, dtype: Option<DType>, bytes: &[u8], model: usize, tally: &Tally) {
        if let Some(d) = dtype {
            let n = count_nonfinite_bytes(d, bytes) as u64;
            if n > 0 {
                tally.inputs.fetch_or(1 << model, Ordering::Relaxed);
                tally.outputs.iter().for_each(|c| _ = c.fetch_add(n, Ordering::Relaxed));
            }
        }
    }

    /// Copies tensor `src` unchanged into every output, block by block from the map: written in
    /// place in parallel pieces, or pushed as mapped bytes (the sink writes them from the map and
    /// releases their pages once written).
    fn copy_tensor(&self, src: &Src, mut sink: Sink, tally: &Tally) -> Result<()> {
        let ckpt = &self.models[src.model];
        let e = entry(self.models, src);
        let mut off = 0;
        ckpt.prefetch(e, 0..BLOCK_BYTES);
        while off < e.byte_len() {
            self.check()?;
            let end = (off + BLOCK_BYTES).min(e.byte_len());
            ckpt.prefetch(e, end..end + BLOCK_BYTES);
            let bytes = ckpt.bytes(e, off..end);
            self.tally_copied(e.dtype, bytes, src.model, tally);
            let outputs = match &mut sink {
                Sink::Placed(places) => {
                    bytes.par_chunks(WRITE_CHUNK).enumerate().try_for_each(|(k, piece)| {
                        places.iter().try_for_each(|p| p.write_at(off + k * WRITE_CHUNK, piece))
                    })?;
                    places.iter().for_each(|p| p.written(off..end));
                    ckpt.release(e, off..end);
                    places.len()
                }
                Sink::Pushed(outputs) => {
                    for o in outputs.iter_mut() {
                        o.writer.push_mapped(ckpt.mapped(e, off..end))?;
                    }
                    outputs.len()
                }
            };
            self.stats.bytes_read.fetch_add((end - off) as u64, Ordering::Relaxed);
            self.progress.advance(((end - off) * outputs) as u64);
            off = end;
        }
        Ok(())
    }

    /// Computes tensor `t` block by block into every output (`ratios`: per output, one ratio per
    /// term).
    fn combine_tensor(&self, t: &PlannedTensor, ratios: &[Vec<f64>], mut sink: Sink, tally: &Tally) -> Result<()> {
        let mut c = Combine::new(self.models, t, ratios.to_vec());
        if let Some(p) = c.porter_params {
            self.check()?;
            c.porter = Some((p, porter_range(&c.target, &c.terms, c.covered)?));
        }
        let numel: usize = t.shape.iter().product();
        let block_elems = (BLOCK_BYTES / c.out.size()).max(1);
        c.inputs().for_each(|i| i.prefetch(0..block_elems.min(numel)));
        let mut start = 0;
        while start < numel {
            self.check()?;
            let end = (start + block_elems).min(numel);
            // Keep the disk busy with the next block while this one is computed.
            c.inputs().for_each(|i| i.prefetch(end..(end + block_elems).min(numel)));
            let w = c.out.size();
            match &mut sink {
                Sink::Placed(places) => {
                    c.block_placed(start..end, places, tally, self.stats)?;
                    places.iter().for_each(|p| p.written(start * w..end * w));
                }
                Sink::Pushed(outputs) => {
                    let mut blocks: Vec<Vec<u8>> = outputs.iter().map(|o| o.writer.buffer((end - start) * w)).collect();
                    c.block(start, &mut blocks, tally, self.stats);
                    for (o, block) in outputs.iter_mut().zip(blocks) {
                        o.writer.push(block)?;
                    }
                }
            }
            let read = c.release(start, end);
            self.stats.bytes_read.fetch_add(read as u64, Ordering::Relaxed);
            self.progress.advance(((end - start) * w * ratios.len()) as u64);
            start = end;
        }
        Ok(())
    }
}

/// Where a combined tensor's outputs go.
enum Sink<'a, 'w> {
    /// Written in place by the tasks that compute them.
    Placed(&'a [TensorPlace<'a>]),
    /// Pushed block by block to the outputs' sinks.
    Pushed(&'a mut [Output<'w>]),
}

/// Bit of [`Tally::inputs`] for values the merge itself made non-finite.
const CREATED: u64 = 1 << 63;

/// Non-finite values counted while one tensor is written.
struct Tally {
    /// Per output.
    outputs: Vec<AtomicU64>,
    /// Bit `m`: model `m` had some in the elements concerned; [`CREATED`]: finite inputs overflowed.
    inputs: AtomicU64,
}

impl Tally {
    fn new(outputs: usize) -> Self {
        Tally { outputs: (0..outputs).map(|_| AtomicU64::new(0)).collect(), inputs: AtomicU64::new(0) }
    }
}

/// A source tensor of the run: its reader and which model it comes from (for messages).
struct Input<'a> {
    reader: TensorReader<'a>,
    model: usize,
}

impl<'a> Input<'a> {
    fn new(models: &'a [Checkpoint], src: &Src) -> Self {
        let reader = TensorReader::new(&models[src.model], entry(models, src)).expect("plan only combines floats");
        Input { reader, model: src.model }
    }
}

impl<'a> std::ops::Deref for Input<'a> {
    type Target = TensorReader<'a>;
    fn deref(&self) -> &TensorReader<'a> {
        &self.reader
    }
}

struct TermInputs<'a> {
    chat: Input<'a>,
    base: Option<Input<'a>>,
}

impl<'a> TermInputs<'a> {
    fn new(models: &'a [Checkpoint], term: &Term) -> Self {
        TermInputs { chat: Input::new(models, &term.chat), base: term.base.as_ref().map(|m| Input::new(models, m)) }
    }
}

/// One combined tensor being computed: its inputs and the ratios of every output.
struct Combine<'a> {
    out: DType,
    cols: usize,
    /// Elements the terms apply to (the leading rows); the rest are the target's.
    covered: usize,
    target: Option<Input<'a>>,
    terms: Vec<TermInputs<'a>>,
    overrides: Vec<(&'a Override, Input<'a>)>,
    /// Feature-porter's parameters, and its normalisation once measured.
    porter_params: Option<PorterParams>,
    porter: Option<(PorterParams, PorterRange)>,
    /// Per output, one ratio per term.
    ratios: Vec<Vec<f64>>,
    /// The common case, computed straight from the bytes: target plus one `chat − base`, all in
    /// the output's dtype, nothing else.
    single_vector: bool,
}

/// A task's f64 scratch, [`LANES`] long each.
struct Scratch {
    target: Vec<f64>,
    chat: Vec<f64>,
    base: Vec<f64>,
    /// One accumulator per output.
    acc: Vec<Vec<f64>>,
}

impl Scratch {
    /// The size of one, for `outputs` outputs.
    const fn bytes(outputs: usize) -> usize {
        (3 + outputs) * LANES * size_of::<f64>()
    }

    fn new(outputs: usize) -> Self {
        let lanes = || vec![0f64; LANES];
        Scratch { target: lanes(), chat: lanes(), base: lanes(), acc: (0..outputs).map(|_| lanes()).collect() }
    }
}

impl<'a> Combine<'a> {
    /// Planned tensor `t` (a [`Action::Combine`]) ready to compute at `ratios` (per output, one
    /// ratio per term).
    fn new(models: &'a [Checkpoint], t: &'a PlannedTensor, ratios: Vec<Vec<f64>>) -> Self {
        let Action::Combine { target, terms, rows, porter, overrides } = &t.action else {
            unreachable!("only Combine tensors are combined")
        };
        let cols: usize = t.shape.iter().skip(1).product();
        let numel: usize = t.shape.iter().product();
        let mut c = Combine {
            out: t.dtype.expect("combined tensors are float"),
            cols,
            covered: (*rows * cols).min(numel),
            target: target.as_ref().map(|s| Input::new(models, s)),
            terms: terms.iter().map(|term| TermInputs::new(models, term)).collect(),
            overrides: overrides.iter().map(|o| (o, Input::new(models, &o.src))).collect(),
            porter_params: *porter,
            porter: None,
            ratios,
            single_vector: false,
        };
        c.single_vector = c.target.is_some()
            && matches!(c.terms.as_slice(), [TermInputs { base: Some(_), .. }])
            && c.porter_params.is_none()
            && c.overrides.is_empty()
            && c.inputs().all(|i| i.dtype == c.out);
        c
    }

    fn inputs(&self) -> impl Iterator<Item = &Input<'a>> + '_ {
        self.target.iter().chain(self.terms.iter().flat_map(|t| std::iter::once(&t.chat).chain(&t.base)))
    }

    /// Computes elements `start..` into one block per output, in parallel tasks.
    fn block(&self, start: usize, blocks: &mut [Vec<u8>], tally: &Tally, stats: &Stats) {
        let task_bytes = TASK_ELEMS * self.out.size();
        let ntasks = blocks[0].len().div_ceil(task_bytes);
        let mut tasks: Vec<Vec<&mut [u8]>> = (0..ntasks).map(|_| Vec::with_capacity(blocks.len())).collect();
        for b in blocks.iter_mut() {
            for (k, chunk) in b.chunks_mut(task_bytes).enumerate() {
                tasks[k].push(chunk);
            }
        }
        tasks.into_par_iter().enumerate().for_each_init(
            || Scratch::new(self.ratios.len()),
            |scratch, (k, mut chunks)| {
                let s = start + k * TASK_ELEMS;
                self.task(s..s + chunks[0].len() / self.out.size(), scratch, &mut chunks, tally, stats)
            },
        );
    }

    /// Computes elements `elems` in parallel tasks, each writing its piece of every output in
    /// place as soon as it is computed (still in the CPU's cache).
    fn block_placed(
        &self,
        elems: std::ops::Range<usize>,
        places: &[TensorPlace],
        tally: &Tally,
        stats: &Stats,
    ) -> Result<()> {
        let w = self.out.size();
        let ntasks = elems.len().div_ceil(TASK_ELEMS);
        (0..ntasks).into_par_iter().try_for_each_init(
            || (Scratch::new(places.len()), vec![vec![0u8; TASK_ELEMS * w]; places.len()]),
            |(scratch, pieces), k| {
                let s = elems.start + k * TASK_ELEMS;
                let e = (s + TASK_ELEMS).min(elems.end);
                let mut chunks: Vec<&mut [u8]> = pieces.iter_mut().map(|p| &mut p[..(e - s) * w]).collect();
                self.task(s..e, scratch, &mut chunks, tally, stats);
                // Each task starts with another output, so that threads seldom wait for the same
                // file's lock.
                let n = places.len();
                (0..n).map(|j| (k + j) % n).try_for_each(|o| places[o].write_at(s * w, chunks[o]).map_err(Error::from))
            },
        )
    }

    /// One task: elements `elems` through the kernel, lane by lane, into every output's chunk
    /// (which starts at `elems.start`).
    fn task(
        &self,
        elems: std::ops::Range<usize>,
        scratch: &mut Scratch,
        chunks: &mut [&mut [u8]],
        tally: &Tally,
        stats: &Stats,
    ) {
        let mut lane = elems.start;
        while lane < elems.end {
            let e = (lane + LANES).min(elems.end);
            self.combine_chunk(lane..e, elems.start, scratch, chunks, tally, stats);
            lane = e;
        }
    }

    /// The kernel over elements `r` (at most [`LANES`]) into every output's chunk; `chunks`
    /// start at element `base`.
    fn combine_chunk(
        &self,
        r: std::ops::Range<usize>,
        base: usize,
        sc: &mut Scratch,
        chunks: &mut [&mut [u8]],
        tally: &Tally,
        stats: &Stats,
    ) {
        if self.single_vector && r.end <= self.covered {
            return self.single_vector_chunk(r, base, sc, chunks, tally);
        }
        self.sum_terms(r.clone(), sc);
        self.apply_overrides(r.clone(), sc);
        let w = self.out.size();
        let bytes = (r.start - base) * w..(r.end - base) * w;
        for (k, (acc, chunk)) in sc.acc.iter().zip(chunks.iter_mut()).enumerate() {
            let nonfinite = encode(self.out, &acc[..r.len()], &mut chunk[bytes.clone()]);
            self.record_nonfinite(k, nonfinite, r.clone(), &mut sc.chat, tally);
        }
        if self.target.is_none() && self.out != DType::F64 {
            let inexact = count_inexact(self.out, &chunks[0][bytes], &sc.acc[0][..r.len()], &mut sc.base);
            stats.inexact.fetch_add(inexact as u64, Ordering::Relaxed);
        }
    }

    /// [`Self::combine_chunk`] for the common case, from the input bytes to the output bytes.
    fn single_vector_chunk(
        &self,
        r: std::ops::Range<usize>,
        base: usize,
        sc: &mut Scratch,
        chunks: &mut [&mut [u8]],
        tally: &Tally,
    ) {
        let (target, term) = (self.target.as_ref().expect("single_vector"), &self.terms[0]);
        let base_input = term.base.as_ref().expect("single_vector");
        let (t, c, b) = (target.raw(r.clone()), term.chat.raw(r.clone()), base_input.raw(r.clone()));
        let w = self.out.size();
        let bytes = (r.start - base) * w..(r.end - base) * w;
        for (k, (ratios, chunk)) in self.ratios.iter().zip(chunks.iter_mut()).enumerate() {
            let nonfinite =
                chat_vector_bytes(SimdTier::active(), self.out, t, c, b, ratios[0], &mut chunk[bytes.clone()]);
            self.record_nonfinite(k, nonfinite, r.clone(), &mut sc.chat, tally);
        }
    }

    /// Each output's accumulator over elements `r`: the target plus every term at the output's
    /// ratios, in f64.
    fn sum_terms(&self, r: std::ops::Range<usize>, sc: &mut Scratch) {
        let target = &mut sc.target[..r.len()];
        match &self.target {
            Some(ti) => ti.read(r.clone(), target),
            None => target.fill(0.0),
        }
        sc.acc.iter_mut().for_each(|a| a[..r.len()].copy_from_slice(target));
        let covered_end = r.end.min(self.covered);
        if r.start >= covered_end {
            return;
        }
        let n = covered_end - r.start;
        for (ti, term) in self.terms.iter().enumerate() {
            let (chat, base) = (&mut sc.chat[..n], &mut sc.base[..n]);
            term.chat.read(r.start..covered_end, chat);
            match &term.base {
                Some(bi) => bi.read(r.start..covered_end, base),
                None => base.fill(0.0),
            }
            for (acc, ratios) in sc.acc.iter_mut().zip(&self.ratios) {
                match (&self.porter, ti) {
                    (Some((params, range)), 0) => porter_lanes(&mut acc[..n], chat, base, ratios[ti], params, range),
                    _ => chat_vector_lanes(&mut acc[..n], chat, base, ratios[ti]),
                }
            }
        }
    }

    /// Replaces the overridden rows' elements within `r` in every accumulator.
    fn apply_overrides(&self, r: std::ops::Range<usize>, sc: &mut Scratch) {
        for (o, src) in &self.overrides {
            let (rs, re) = (o.row * self.cols, (o.row + 1) * self.cols);
            let (a, b) = (rs.max(r.start), re.min(r.end));
            if a < b {
                let from = o.src_row * self.cols + (a - rs);
                src.read(from..from + (b - a), &mut sc.chat[..b - a]);
                sc.acc.iter_mut().for_each(|acc| acc[a - r.start..b - r.start].copy_from_slice(&sc.chat[..b - a]));
            }
        }
    }

    /// Counts `nonfinite` values written to output `k` over elements `r`, and where they came from.
    fn record_nonfinite(&self, k: usize, nonfinite: usize, r: std::ops::Range<usize>, buf: &mut [f64], tally: &Tally) {
        if nonfinite > 0 {
            tally.outputs[k].fetch_add(nonfinite as u64, Ordering::Relaxed);
            tally.inputs.fetch_or(self.nonfinite_sources(r, buf), Ordering::Relaxed);
        }
    }

    /// Which inputs hold NaN/Inf in elements `r` (bit per model), or [`CREATED`] when none does:
    /// only called for the rare lanes whose output has some, so it may read them again.
    fn nonfinite_sources(&self, r: std::ops::Range<usize>, buf: &mut [f64]) -> u64 {
        let mut bits = 0;
        let mut scan = |input: &Input, range: std::ops::Range<usize>| {
            if !range.is_empty() {
                let buf = &mut buf[..range.len()];
                input.read(range, buf);
                if count_nonfinite(buf) > 0 {
                    bits |= 1 << input.model;
                }
            }
        };
        if let Some(t) = &self.target {
            scan(t, r.clone());
        }
        let ce = r.end.min(self.covered).max(r.start);
        for term in &self.terms {
            scan(&term.chat, r.start..ce);
            if let Some(m) = &term.base {
                scan(m, r.start..ce);
            }
        }
        for (o, src) in &self.overrides {
            let (rs, re) = (o.row * self.cols, (o.row + 1) * self.cols);
            let (a, b) = (rs.max(r.start), re.min(r.end));
            if a < b {
                let from = o.src_row * self.cols + (a - rs);
                scan(src, from..from + (b - a));
            }
        }
        if bits == 0 {
            CREATED
        } else {
            bits
        }
    }

    /// Drops the input pages of elements `start..end`; returns the bytes they held.
    fn release(&self, start: usize, end: usize) -> usize {
        let mut read = self.target.iter().map(|t| t.release(start..end)).sum();
        for (o, src) in &self.overrides {
            if (o.row * self.cols) < end && (o.row + 1) * self.cols > start {
                read += src.release(o.src_row * self.cols..(o.src_row + 1) * self.cols);
            }
        }
        if start < self.covered {
            let ce = end.min(self.covered);
            for term in &self.terms {
                read += term.chat.release(start..ce);
                read += term.base.as_ref().map_or(0, |m| m.release(start..ce));
            }
        }
        read
    }
}

/// How many of `exact` changed when encoded as `encoded` (bytes of `dtype`); `buf` is scratch.
fn count_inexact(dtype: DType, encoded: &[u8], exact: &[f64], buf: &mut [f64]) -> usize {
    let back = &mut buf[..exact.len()];
    decode(dtype, encoded, back);
    back.iter().zip(exact).filter(|(b, a)| b != a).count()
}

/// [`chat_vector`] over lanes: `acc` holds the target (or the sum so far).
#[inline]
fn chat_vector_lanes(acc: &mut [f64], chat: &[f64], base: &[f64], ratio: f64) {
    for ((a, c), b) in acc.iter_mut().zip(chat).zip(base) {
        *a = chat_vector(*a, *c, *b, ratio);
    }
}

fn porter_lanes(acc: &mut [f64], chat: &[f64], base: &[f64], ratio: f64, params: &PorterParams, range: &PorterRange) {
    // `acc` still holds the target here: the porter term is always the first.
    for ((a, c), b) in acc.iter_mut().zip(chat).zip(base) {
        let w = range.weight(*a, *b, params);
        *a = feature_porter(*a, *c, *b, ratio, w);
    }
}

/// The min and max of `|T − B|` over the covered elements (first pass of feature-porter).
fn porter_range(target: &Option<Input>, terms: &[TermInputs], covered: usize) -> Result<PorterRange> {
    let (Some(t), Some(b)) = (target, terms.first().and_then(|x| x.base.as_ref())) else {
        return Err(Error::PorterWithoutBase);
    };
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
    let reader = TensorReader::new(ckpt, e).ok_or_else(|| ModelError::tensor(&e.name, "not a float tensor"))?;
    let rows = e.shape.first().copied().unwrap_or(1);
    let cols: usize = e.shape.iter().skip(1).product();
    let norms = (0..rows)
        .into_par_iter()
        .map_init(
            || vec![0f64; cols],
            |buf, r| {
                reader.read(r * cols..(r + 1) * cols, buf);
                buf.iter().map(|x| x * x).sum::<f64>().sqrt()
            },
        )
        .collect();
    reader.release(0..rows * cols);
    Ok(norms)
}
