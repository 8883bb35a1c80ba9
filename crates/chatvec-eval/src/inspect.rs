//! What a chat vector changes, tensor by tensor: ‖Δ‖₂, ‖W‖₂, ‖Δ‖/‖W‖, max |Δ|, the share of
//! exactly-zero Δ and, against a second vector, the cosine similarity; then the same per layer,
//! per module kind and per (layer, kind) cell.
//!
//! Tensors are streamed in blocks of [`BLOCK_ELEMS`] elements decoded to f64, and each block's
//! pages are released after use, so memory stays at a few blocks whatever the model's size.
//! Group norms are the norms of the concatenated tensors (√Σ‖Δ‖²), and group cosines the cosine
//! of the concatenated vectors, not averages of per-tensor values.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::{EvalError, Result};
use chatvec_format::reader::TensorReader;
use chatvec_format::{Checkpoint, Progress};
use rayon::prelude::*;
use serde::Serialize;

use crate::modules::{classify, ModuleKind};
use crate::plots::Heatmap;

/// Elements per streamed block (8 MiB of f64 per buffer).
pub const BLOCK_ELEMS: usize = 1 << 20;
/// Elements per parallel task within a block.
const TASK_ELEMS: usize = 1 << 15;

/// A vector to inspect: `plus − minus`, or a stored vector (`chatvec extract` output) alone.
pub struct VectorInput {
    /// The chat model, or the stored vector.
    pub plus: Checkpoint,
    /// The base model; `None` for a stored vector.
    pub minus: Option<Checkpoint>,
}

impl VectorInput {
    /// A human description, e.g. `chat − base`.
    pub fn describe(&self) -> String {
        match &self.minus {
            Some(m) => format!("{} − {}", self.plus.dir.display(), m.dir.display()),
            None => self.plus.dir.display().to_string(),
        }
    }
}

/// Which weights ‖W‖ is measured on (for the relative norm).
pub enum WeightsRef {
    /// No weights: relative norms are not reported.
    None,
    /// The vector's `minus` model (the base).
    Minus,
    /// Another model (e.g. the base for a stored vector).
    Model(Checkpoint),
}

/// Everything `inspect` reads.
pub struct InspectInput {
    /// The vector.
    pub vector: VectorInput,
    /// Where ‖W‖ comes from.
    pub weights: WeightsRef,
    /// A second vector to compare against (cosine similarity).
    pub compare: Option<VectorInput>,
}

/// Running sums of one tensor or group.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    numel: u64,
    d2: f64,
    w2: f64,
    max_abs: f64,
    zeros: u64,
    dot: f64,
    c2: f64,
    has_w: bool,
    has_c: bool,
}

impl Sums {
    fn add(mut self, o: Sums) -> Sums {
        self.numel += o.numel;
        self.d2 += o.d2;
        self.w2 += o.w2;
        self.max_abs = self.max_abs.max(o.max_abs);
        self.zeros += o.zeros;
        self.dot += o.dot;
        self.c2 += o.c2;
        self
    }
}

/// Statistics of one group of elements (a tensor, a layer, a kind, ...).
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Elements.
    pub numel: u64,
    /// ‖Δ‖₂.
    pub delta_norm: f64,
    /// ‖W‖₂ of the reference weights, when known.
    pub weight_norm: Option<f64>,
    /// ‖Δ‖₂ / ‖W‖₂.
    pub relative_norm: Option<f64>,
    /// ‖Δ‖₂ / √n, the root mean square of Δ.
    pub rms_delta: f64,
    /// max |Δ|.
    pub max_abs_delta: f64,
    /// Share of elements where Δ is exactly zero.
    pub zero_share: f64,
    /// Cosine similarity with the compared vector, when given.
    pub cosine: Option<f64>,
}

impl Stats {
    fn from_sums(s: &Sums) -> Stats {
        let dn = s.d2.sqrt();
        let wn = s.has_w.then(|| s.w2.sqrt());
        let denom = (s.d2 * s.c2).sqrt();
        Stats {
            numel: s.numel,
            delta_norm: dn,
            weight_norm: wn,
            relative_norm: wn.map(|w| if w > 0.0 { dn / w } else { f64::NAN }),
            rms_delta: if s.numel > 0 { dn / (s.numel as f64).sqrt() } else { 0.0 },
            max_abs_delta: s.max_abs,
            zero_share: if s.numel > 0 { s.zeros as f64 / s.numel as f64 } else { 0.0 },
            // Two zero vectors are identical for our purpose; one zero vector has no direction.
            cosine: s.has_c.then(|| {
                if denom > 0.0 {
                    s.dot / denom
                } else if s.d2 == s.c2 {
                    1.0
                } else {
                    0.0
                }
            }),
        }
    }
}

/// One tensor's statistics.
#[derive(Debug, Clone, Serialize)]
pub struct TensorStats {
    /// Tensor name.
    pub name: String,
    /// Decoder layer, if any.
    pub layer: Option<usize>,
    /// Module kind.
    pub kind: ModuleKind,
    /// Shape.
    pub shape: Vec<usize>,
    /// Statistics.
    #[serde(flatten)]
    pub stats: Stats,
    #[serde(skip)]
    sums: Sums,
}

/// A group's statistics with its label.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStats {
    /// Layer number or kind label.
    pub label: String,
    /// Tensors in the group.
    pub tensors: usize,
    /// Statistics of the concatenated tensors.
    #[serde(flatten)]
    pub stats: Stats,
}

/// One heatmap row: a layer (or the non-layer tensors) split by module kind.
#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    /// `0`, `1`, ... or `model` for embeddings, final norm and head.
    pub label: String,
    /// Statistics per module kind present in this row.
    pub cells: BTreeMap<ModuleKind, Stats>,
}

/// The result of [`inspect`].
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// The vector, as described to people.
    pub vector: String,
    /// Where ‖W‖ came from.
    pub weights: Option<String>,
    /// The compared vector.
    pub compare: Option<String>,
    /// Every float tensor of the vector.
    pub tensors: Vec<TensorStats>,
    /// Per decoder layer (then `model` for the rest).
    pub layers: Vec<GroupStats>,
    /// Per module kind.
    pub kinds: Vec<GroupStats>,
    /// Layer × kind cells, the heatmap's data.
    pub grid: Vec<LayerRow>,
    /// The whole vector.
    pub total: Stats,
    /// Tensors left out, with the reason.
    pub skipped: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

impl InspectReport {
    /// Module kinds present in the grid, in column order.
    pub fn grid_kinds(&self) -> Vec<ModuleKind> {
        ModuleKind::ALL.into_iter().filter(|k| self.grid.iter().any(|r| r.cells.contains_key(k))).collect()
    }

    /// Whether relative norms are available (weights were given for every tensor).
    pub fn has_relative(&self) -> bool {
        self.total.relative_norm.is_some()
    }

    /// The heatmap of layers × module kinds: relative norm when weights are known, else RMS Δ;
    /// with `cosine`, the cosine similarity with the compared vector instead.
    pub fn heatmap(&self, cosine: bool) -> Heatmap {
        let kinds = self.grid_kinds();
        let rel = self.has_relative();
        let pick = |s: &Stats| {
            if cosine {
                s.cosine
            } else if rel {
                s.relative_norm
            } else {
                Some(s.rms_delta)
            }
        };
        let (title, value_label) = match (cosine, rel) {
            (true, _) => ("Cosine similarity of the two vectors", "cosine"),
            (false, true) => ("Chat vector: relative norm per layer and module", "‖Δ‖ / ‖W‖"),
            (false, false) => ("Chat vector: RMS of Δ per layer and module", "RMS Δ"),
        };
        Heatmap {
            title: title.to_string(),
            value_label: value_label.to_string(),
            rows: self.grid.iter().map(|r| r.label.clone()).collect(),
            cols: kinds.iter().map(|k| k.label().to_string()).collect(),
            values: self.grid.iter().map(|r| kinds.iter().map(|k| r.cells.get(k).and_then(pick)).collect()).collect(),
        }
    }
}

/// One tensor source: a float tensor of a checkpoint, of the expected shape.
struct Source<'a>(TensorReader<'a>);

impl<'a> Source<'a> {
    fn find(ck: &'a Checkpoint, name: &str, shape: &[usize]) -> std::result::Result<Source<'a>, String> {
        let e = ck.get_or_tied(name).ok_or_else(|| format!("not in {}", ck.dir.display()))?;
        if e.shape != shape {
            return Err(format!("shape {:?} in {} vs {:?}", e.shape, ck.dir.display(), shape));
        }
        let reader = TensorReader::new(ck, e)
            .ok_or_else(|| format!("{} is not a float tensor in {}", e.dtype_name, ck.dir.display()))?;
        Ok(Source(reader))
    }

    /// Decodes elements `start..start + out.len()` into `out`, then drops their pages.
    fn load(&self, start: usize, out: &mut [f64]) {
        out.par_chunks_mut(TASK_ELEMS).enumerate().for_each(|(i, o)| {
            let first = start + i * TASK_ELEMS;
            self.0.read(first..first + o.len(), o);
        });
        self.0.release(start..start + out.len());
    }
}

/// A vector's tensor: `plus − minus`.
struct Diff<'a> {
    plus: Source<'a>,
    minus: Option<Source<'a>>,
}

impl<'a> Diff<'a> {
    fn find(v: &'a VectorInput, name: &str, shape: &[usize]) -> std::result::Result<Diff<'a>, String> {
        let plus = Source::find(&v.plus, name, shape)?;
        let minus = v.minus.as_ref().map(|m| Source::find(m, name, shape)).transpose()?;
        Ok(Diff { plus, minus })
    }

    /// Loads Δ into `out`; the minus values are left in `scratch` when there are any.
    fn load(&self, start: usize, out: &mut [f64], scratch: &mut [f64]) {
        self.plus.load(start, out);
        if let Some(m) = &self.minus {
            m.load(start, scratch);
            out.par_iter_mut().zip(scratch.par_iter()).for_each(|(a, b)| *a -= *b);
        }
    }
}

/// Computes the statistics, reporting bytes read to `progress`; `cancel` stops between blocks.
pub fn inspect(input: &InspectInput, progress: &dyn Progress, cancel: &AtomicBool) -> Result<InspectReport> {
    let started = Instant::now();
    let v = &input.vector;
    let mut skipped = Vec::new();
    let mut tensors = Vec::new();
    let weights_ck = match &input.weights {
        WeightsRef::None => None,
        WeightsRef::Minus => v.minus.as_ref(),
        WeightsRef::Model(ck) => Some(ck),
    };
    let total_bytes: u64 = v.plus.tensors().iter().filter(|t| t.dtype.is_some()).map(|t| t.byte_len() as u64).sum();
    progress.begin(total_bytes * (1 + v.minus.is_some() as u64));
    let mut buf = vec![0.0f64; BLOCK_ELEMS];
    let mut minus_buf = vec![0.0f64; BLOCK_ELEMS];
    let mut w_buf = vec![0.0f64; BLOCK_ELEMS];
    let mut c_buf = vec![0.0f64; BLOCK_ELEMS];
    let mut c_scratch = vec![0.0f64; BLOCK_ELEMS];
    for t in v.plus.tensors() {
        if t.dtype.is_none() {
            skipped.push(format!("{}: {} is not a float type", t.name, t.dtype_name));
            continue;
        }
        let diff = match Diff::find(v, &t.name, &t.shape) {
            Ok(d) => d,
            Err(why) => {
                skipped.push(format!("{}: {why}", t.name));
                continue;
            }
        };
        // Weights of the `minus` model are already decoded into minus_buf; others are read here.
        let same_as_minus = matches!(input.weights, WeightsRef::Minus);
        let weights = match weights_ck {
            Some(ck) if !same_as_minus => Source::find(ck, &t.name, &t.shape).ok(),
            _ => None,
        };
        let has_w = weights_ck.is_some() && (same_as_minus || weights.is_some());
        let compare = input.compare.as_ref().and_then(|c| Diff::find(c, &t.name, &t.shape).ok());
        let n = t.numel();
        let mut sums = Sums { has_w, has_c: compare.is_some(), ..Sums::default() };
        let mut start = 0;
        while start < n {
            if cancel.load(Ordering::Relaxed) {
                return Err(EvalError::Interrupted);
            }
            let len = BLOCK_ELEMS.min(n - start);
            let (d, m) = (&mut buf[..len], &mut minus_buf[..len]);
            diff.load(start, d, m);
            let w: Option<&[f64]> = if same_as_minus && has_w {
                Some(m)
            } else if let Some(ws) = &weights {
                ws.load(start, &mut w_buf[..len]);
                Some(&w_buf[..len])
            } else {
                None
            };
            let c: Option<&[f64]> = compare.as_ref().map(|cd| {
                cd.load(start, &mut c_buf[..len], &mut c_scratch[..len]);
                &c_buf[..len]
            });
            sums = sums.add(block_sums(d, w, c));
            progress.advance((len * diff.plus.0.dtype.size() * (1 + diff.minus.is_some() as usize)) as u64);
            start += len;
        }
        sums.has_w = has_w;
        sums.has_c = compare.is_some();
        let place = classify(&t.name);
        tensors.push(TensorStats {
            name: t.name.clone(),
            layer: place.layer,
            kind: place.kind,
            shape: t.shape.clone(),
            stats: Stats::from_sums(&sums),
            sums,
        });
    }
    progress.finish();
    if tensors.is_empty() {
        return Err(EvalError::Input(format!(
            "{}: no float tensor could be compared ({} skipped)",
            v.describe(),
            skipped.len()
        )));
    }
    Ok(aggregate(input, tensors, skipped, started.elapsed().as_secs_f64()))
}

/// Sums over one block, in parallel tasks.
fn block_sums(d: &[f64], w: Option<&[f64]>, c: Option<&[f64]>) -> Sums {
    let tasks = d.len().div_ceil(TASK_ELEMS);
    (0..tasks)
        .into_par_iter()
        .map(|i| {
            let r = i * TASK_ELEMS..((i + 1) * TASK_ELEMS).min(d.len());
            let mut s = Sums { numel: r.len() as u64, ..Sums::default() };
            for &x in &d[r.clone()] {
                s.d2 += x * x;
                s.max_abs = s.max_abs.max(x.abs());
                s.zeros += (x == 0.0) as u64;
            }
            if let Some(w) = w {
                s.w2 = w[r.clone()].iter().map(|x| x * x).sum();
            }
            if let Some(c) = c {
                for (x, y) in d[r.clone()].iter().zip(&c[r]) {
                    s.dot += x * y;
                    s.c2 += y * y;
                }
            }
            s
        })
        .reduce(Sums::default, Sums::add)
}

fn group(label: String, members: &[&TensorStats]) -> GroupStats {
    GroupStats { label, tensors: members.len(), stats: Stats::from_sums(&sum_of(members)) }
}

/// Sums of several tensors; weights and cosine count only when every member has them.
fn sum_of(members: &[&TensorStats]) -> Sums {
    let mut s = members.iter().fold(Sums::default(), |a, t| a.add(t.sums));
    s.has_w = !members.is_empty() && members.iter().all(|t| t.sums.has_w);
    s.has_c = !members.is_empty() && members.iter().all(|t| t.sums.has_c);
    s
}

fn layer_label(layer: Option<usize>) -> String {
    layer.map_or_else(|| "model".to_string(), |l| l.to_string())
}

fn aggregate(input: &InspectInput, tensors: Vec<TensorStats>, skipped: Vec<String>, seconds: f64) -> InspectReport {
    // Layer order: 0, 1, ..., then the non-layer tensors.
    let mut layer_keys: Vec<Option<usize>> = tensors.iter().map(|t| t.layer).collect();
    layer_keys.sort_by_key(|l| (l.is_none(), *l));
    layer_keys.dedup();
    let layers = layer_keys
        .iter()
        .map(|&l| group(layer_label(l), &tensors.iter().filter(|t| t.layer == l).collect::<Vec<_>>()))
        .collect();
    let kinds = ModuleKind::ALL
        .into_iter()
        .filter_map(|k| {
            let m: Vec<_> = tensors.iter().filter(|t| t.kind == k).collect();
            (!m.is_empty()).then(|| group(k.label().to_string(), &m))
        })
        .collect();
    let grid = layer_keys
        .iter()
        .map(|&l| {
            let mut cells = BTreeMap::new();
            for k in ModuleKind::ALL {
                let m: Vec<_> = tensors.iter().filter(|t| t.layer == l && t.kind == k).collect();
                if !m.is_empty() {
                    cells.insert(k, Stats::from_sums(&sum_of(&m)));
                }
            }
            LayerRow { label: layer_label(l), cells }
        })
        .collect();
    let all: Vec<_> = tensors.iter().collect();
    let total = Stats::from_sums(&sum_of(&all));
    let weights = match &input.weights {
        WeightsRef::None => None,
        WeightsRef::Minus => input.vector.minus.as_ref().map(|m| m.dir.display().to_string()),
        WeightsRef::Model(ck) => Some(ck.dir.display().to_string()),
    };
    InspectReport {
        vector: input.vector.describe(),
        weights,
        compare: input.compare.as_ref().map(VectorInput::describe),
        tensors,
        layers,
        kinds,
        grid,
        total,
        skipped,
        seconds,
    }
}

/// Five significant digits, fixed-point in 1e-3..1e5 and scientific outside.
pub fn sig(x: f64) -> String {
    let a = x.abs();
    if x == 0.0 {
        "0".into()
    } else if (1e-3..1e5).contains(&a) {
        let decimals = (4 - a.log10().floor() as i32).clamp(0, 8) as usize;
        format!("{x:.decimals$}")
    } else {
        format!("{x:.4e}")
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}"))
}

/// Per-tensor rows as CSV.
pub fn to_csv(r: &InspectReport) -> String {
    let mut out = String::from(
        "name,layer,kind,shape,numel,delta_norm,weight_norm,relative_norm,rms_delta,max_abs_delta,zero_share,cosine\n",
    );
    let o = |v: Option<f64>| v.map_or_else(String::new, |x| format!("{x:e}"));
    for t in &r.tensors {
        let s = &t.stats;
        out.push_str(&format!(
            "{},{},{},{},{},{:e},{},{},{:e},{:e},{},{}\n",
            t.name,
            t.layer.map_or_else(String::new, |l| l.to_string()),
            t.kind,
            t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x"),
            s.numel,
            s.delta_norm,
            o(s.weight_norm),
            o(s.relative_norm),
            s.rms_delta,
            s.max_abs_delta,
            s.zero_share,
            o(s.cosine)
        ));
    }
    out
}

/// The terminal table: layers × kinds of the heatmap's metric, then per-kind totals, the
/// largest tensors, and skipped tensors.
pub fn to_text(r: &InspectReport, top: usize) -> String {
    let rel = r.has_relative();
    let metric = |s: &Stats| if rel { s.relative_norm } else { Some(s.rms_delta) };
    let kinds = r.grid_kinds();
    let mut out = format!("vector: {}\n", r.vector);
    if let Some(w) = &r.weights {
        out.push_str(&format!("weights for ‖W‖: {w}\n"));
    }
    if let Some(c) = &r.compare {
        out.push_str(&format!("compared with: {c}\n"));
    }
    out.push_str(&format!("\n{} per layer and module kind:\n", if rel { "relative norm ‖Δ‖/‖W‖" } else { "RMS of Δ" }));
    out.push_str(&format!("{:>6}", "layer"));
    for k in &kinds {
        out.push_str(&format!(" {:>9}", k.label()));
    }
    out.push_str(&format!(" {:>9}", "all"));
    if r.compare.is_some() {
        out.push_str(&format!(" {:>7}", "cosine"));
    }
    out.push('\n');
    for (row, total) in r.grid.iter().zip(&r.layers) {
        out.push_str(&format!("{:>6}", row.label));
        for k in &kinds {
            let cell = row.cells.get(k).and_then(metric);
            out.push_str(&format!(" {:>9}", cell.map_or_else(|| "".into(), sig)));
        }
        out.push_str(&format!(" {:>9}", metric(&total.stats).map_or_else(|| "-".into(), sig)));
        if r.compare.is_some() {
            out.push_str(&format!(" {:>7}", opt(total.stats.cosine, 4)));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "\n{:<8} {:>7} {:>12} {:>12} {:>10} {:>11} {:>7} {:>7}\n",
        "kind", "tensors", "‖Δ‖", "‖W‖", "‖Δ‖/‖W‖", "max|Δ|", "zero", "cosine"
    ));
    for g in r.kinds.iter().chain(std::iter::once(&GroupStats {
        label: "total".into(),
        tensors: r.tensors.len(),
        stats: r.total.clone(),
    })) {
        let s = &g.stats;
        out.push_str(&format!(
            "{:<8} {:>7} {:>12} {:>12} {:>10} {:>11} {:>6.1}% {:>7}\n",
            g.label,
            g.tensors,
            sig(s.delta_norm),
            s.weight_norm.map_or_else(|| "-".into(), sig),
            s.relative_norm.map_or_else(|| "-".into(), sig),
            sig(s.max_abs_delta),
            100.0 * s.zero_share,
            opt(s.cosine, 4)
        ));
    }
    let mut order: Vec<&TensorStats> = r.tensors.iter().collect();
    order.sort_by(|a, b| {
        let (x, y) = (metric(&a.stats).unwrap_or(0.0), metric(&b.stats).unwrap_or(0.0));
        y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal)
    });
    let top = top.min(order.len());
    if top > 0 {
        out.push_str(&format!("\nlargest {top} tensors by {}:\n", if rel { "‖Δ‖/‖W‖" } else { "RMS Δ" }));
        for t in &order[..top] {
            let s = &t.stats;
            out.push_str(&format!(
                "  {:<48} {:>14} ‖Δ‖ {}  rel {}  max|Δ| {}  zero {:.1}%{}\n",
                t.name,
                format!("{:?}", t.shape),
                sig(s.delta_norm),
                s.relative_norm.map_or_else(|| "-".into(), sig),
                sig(s.max_abs_delta),
                100.0 * s.zero_share,
                s.cosine.map_or_else(String::new, |c| format!("  cos {c:.4}"))
            ));
        }
    }
    if !r.skipped.is_empty() {
        out.push_str(&format!("\nskipped {} tensor(s):\n", r.skipped.len()));
        for s in &r.skipped {
            out.push_str(&format!("  {s}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::sig;

    #[test]
    fn five_significant_digits() {
        assert_eq!(sig(0.0), "0");
        assert_eq!(sig(0.050214), "0.050214");
        assert_eq!(sig(2.227), "2.2270");
        assert_eq!(sig(21.166), "21.166");
        assert_eq!(sig(12345.6), "12346");
        assert_eq!(sig(1.5e-5), "1.5000e-5");
        assert_eq!(sig(-0.25), "-0.25000");
    }
}
