//! What happens to each output tensor, decided before the run streams any tensor: which tensors
//! are merged, copied or row-adjusted, with which sources, and every shape check that can fail.
//!
//! Planning reads the headers only, with one exception: when embeddings are left out of the
//! merge, special-token detection reads the row norms of the base's and chat model's vocab
//! tensors, through the `row_norms` reader the caller passes in (the run's streaming reader).

use regex::Regex;
use serde::Serialize;

use crate::kernel::PorterParams;
use crate::{Error, Result};
use chatvec_format::checkpoint::{Checkpoint, TensorEntry};
use chatvec_format::DType;
use chatvec_format::Error as ModelError;

/// Which tensors take part: those matching `include` (all when unset) and not matching `exclude`.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only tensors whose name matches.
    pub include: Option<Regex>,
    /// No tensor whose name matches.
    pub exclude: Option<Regex>,
}

impl Selection {
    /// Builds a selection from user regexes.
    pub fn new(include: Option<&str>, exclude: Option<&str>) -> Result<Self> {
        let re = |s: &str| Regex::new(s).map_err(|source| Error::BadRegex { pattern: s.to_string(), source });
        Ok(Selection { include: include.map(re).transpose()?, exclude: exclude.map(re).transpose()? })
    }
    /// Whether tensor `name` is selected.
    pub fn selects(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|r| r.is_match(name))
            && !self.exclude.as_ref().is_some_and(|r| r.is_match(name))
    }
}

/// A tensor of one of the input models (`model` indexes the list the plan was built over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Src {
    /// Index of the model.
    pub model: usize,
    /// Name of the tensor in that model (tied aliases already resolved).
    pub name: String,
}

/// One vector term `ratio·(chat − base)`; without `base` the term is `ratio·chat`, where `chat`
/// is a stored vector (`chatvec extract`'s output, the difference already taken). The ratio
/// belongs to the output (one pass can write several ratios): term `i` of a tensor is vector `i`
/// of the plan, whose ratio each output gives.
#[derive(Debug, Clone)]
pub struct Term {
    /// The chat model (or the stored vector).
    pub chat: Src,
    /// The base model.
    pub base: Option<Src>,
}

/// Output row `row` is row `src_row` of tensor `src` (special-token rows from the chat model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Row of the output.
    pub row: usize,
    /// The tensor holding the replacement.
    pub src: Src,
    /// Its row.
    pub src_row: usize,
}

/// Prefix of the tensors in which `extract` stores special-token rows of left-out embeddings.
pub(crate) const SPECIAL_ROWS_PREFIX: &str = "chatvec.special_rows.";

/// How an output tensor is made.
#[derive(Debug, Clone)]
pub enum Action {
    /// Bytes copied unchanged.
    Copy(Src),
    /// `target + Σ terms`, computed in f64 and rounded once. Terms cover the first `rows` rows
    /// (all when the shapes agree); later rows are the target's. `overrides` rows are taken from
    /// another tensor (special-token rows from the chat model).
    Combine {
        /// The target tensor; `None` when the output is the vector itself (extract).
        target: Option<Src>,
        /// Vector terms.
        terms: Vec<Term>,
        /// Number of leading rows the terms apply to.
        rows: usize,
        /// Feature-porter weighting of the first term (which has a base).
        porter: Option<PorterParams>,
        /// Rows replaced by rows of another tensor.
        overrides: Vec<Override>,
    },
}

/// What the plan does with a tensor, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The vector is added to every element.
    Merged,
    /// The vector is added to the rows shared with the base; grown rows keep the target's values.
    RowAdjusted,
    /// Copied from the target (not selected, not in base/chat, or not floating point).
    Copied,
    /// Copied from the target, with special-token rows taken from the chat model.
    SpecialRows,
}

/// One output tensor.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// Name in the output.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Output dtype name (safetensors spelling).
    pub dtype_name: String,
    /// Output float type (`None` for copied non-float tensors).
    pub dtype: Option<DType>,
    /// How it is made.
    pub action: Action,
    /// For the summary.
    pub kind: Kind,
}

impl PlannedTensor {
    /// Output size in bytes.
    pub fn bytes(&self, models: &[Checkpoint]) -> usize {
        match (&self.action, self.dtype) {
            (Action::Copy(src), _) => entry(models, src).byte_len(),
            (_, Some(d)) => self.shape.iter().product::<usize>() * d.size(),
            (_, None) => 0,
        }
    }
}

/// Every decision of a run, made before it reads tensor data.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Output tensors in write order.
    pub tensors: Vec<PlannedTensor>,
    /// Tensors of base/chat that the target lacks (not written).
    pub missing_from_target: Vec<String>,
    /// Tensors only the target has (copied).
    pub only_in_target: Vec<String>,
    /// Tensors left out by `--include` / `--exclude` (copied from the target in merge/apply).
    pub not_selected: Vec<String>,
    /// Special-token rows taken from the chat model: tensor → token ids.
    pub special_rows: Vec<(String, Vec<usize>)>,
    /// Things the user should know (config mismatches, ...).
    pub warnings: Vec<String>,
}

impl Plan {
    /// How many output tensors are of `kind`.
    pub fn count(&self, kind: Kind) -> usize {
        self.tensors.iter().filter(|t| t.kind == kind).count()
    }
}

/// The tensor a source names.
pub(crate) fn entry<'a>(models: &'a [Checkpoint], src: &Src) -> &'a TensorEntry {
    models[src.model].get_or_tied(&src.name).expect("plan sources were checked when planned")
}

/// Names of vocabulary-sized tensors, whose row count may grow in a CP model with a larger vocab.
pub(crate) fn is_vocab_tensor(name: &str) -> bool {
    const ENDS: &[&str] = &[
        "embed_tokens.weight",
        "lm_head.weight",
        "wte.weight",
        "word_embeddings.weight",
        "embed_in.weight",
        "embed_out.weight",
        "tok_embeddings.weight",
    ];
    ENDS.iter().any(|e| name.ends_with(e)) || name == "output.weight"
}

fn shape_str(s: &[usize]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// How many leading rows of a target tensor a vector of shape `vec_shape` covers, or an error
/// naming the tensor and the shapes when they cannot be matched.
fn covered_rows(name: &str, target: &[usize], vec_shape: &[usize], shapes_note: &str) -> Result<usize> {
    if target == vec_shape {
        return Ok(target.first().copied().unwrap_or(1));
    }
    let grown = target.len() == vec_shape.len()
        && target.len() >= 2
        && target[1..] == vec_shape[1..]
        && target[0] > vec_shape[0]
        && is_vocab_tensor(name);
    if grown {
        return Ok(vec_shape[0]);
    }
    Err(ModelError::tensor(name, format!("shapes do not match: {shapes_note}")).into())
}

/// Options that shape the plan.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Which tensors take part.
    pub selection: Selection,
    /// Output dtype; `None` keeps each tensor's target dtype.
    pub dtype: Option<DType>,
    /// Feature-porter parameters; `None` for the plain chat vector.
    pub porter: Option<PorterParams>,
    /// Take special-token rows from the chat model when embeddings are not merged.
    pub special_rows: bool,
    /// A base row counts as untrained when its L2 norm is below this share of the median row norm.
    pub untrained_threshold: f64,
    /// Write NaN and infinite values (with a warning) instead of refusing the tensor that has them.
    pub allow_nonfinite: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            selection: Selection::default(),
            dtype: None,
            porter: None,
            special_rows: true,
            untrained_threshold: 1e-3,
            allow_nonfinite: false,
        }
    }
}

/// A vector for a plan: `models[chat] − models[base]`, or `models[chat]` alone when it is a stored
/// vector (its ratio is the output's).
#[derive(Debug, Clone)]
pub(crate) struct VectorRef {
    /// Index of the chat model or stored vector.
    pub chat: usize,
    /// Index of the base model, for a vector computed on the fly.
    pub base: Option<usize>,
    /// For a stored vector: the special-token rows it carries (tensor → token ids, from its
    /// manifest), stored as `chatvec.special_rows.<tensor>`.
    pub special_rows: Vec<(String, Vec<usize>)>,
}

/// Where a merge plan finds its target in the model list.
pub(crate) const TARGET: usize = 0;

/// Plans `target + Σ vectors` over `models` (the target at [`TARGET`]), in the target's tensor
/// order. `row_norms` reads a tensor's row norms (only called for special-row detection).
pub(crate) fn plan_merge(
    models: &[Checkpoint],
    vectors: &[VectorRef],
    opts: &PlanOptions,
    row_norms: &mut dyn FnMut(&Checkpoint, &TensorEntry) -> Result<Vec<f64>>,
) -> Result<Plan> {
    let mut planner = MergePlanner { models, vectors, opts, row_norms, plan: Plan::default() };
    for t in models[TARGET].tensors() {
        planner.plan_tensor(t)?;
    }
    let mut plan = planner.plan;
    plan.missing_from_target = missing_from_target(models, vectors);
    Ok(plan)
}

/// The inputs of a merge plan, and the plan so far.
struct MergePlanner<'a> {
    models: &'a [Checkpoint],
    vectors: &'a [VectorRef],
    opts: &'a PlanOptions,
    row_norms: &'a mut dyn FnMut(&Checkpoint, &TensorEntry) -> Result<Vec<f64>>,
    plan: Plan,
}

/// The tensors of one vector that match a target tensor.
struct VectorTensors<'a> {
    vector: &'a VectorRef,
    chat: &'a TensorEntry,
    base: Option<&'a TensorEntry>,
}

impl<'a> MergePlanner<'a> {
    /// Plans target tensor `t`: copied when a vector lacks it or it is not a float, copied with
    /// special-token rows when it is not selected, combined with the vectors otherwise.
    fn plan_tensor(&mut self, t: &TensorEntry) -> Result<()> {
        let Some(found) = self.vector_tensors(t) else {
            self.absent_from_a_vector(t);
            return Ok(());
        };
        if t.dtype.is_none() {
            self.plan.tensors.push(self.copy(t, Kind::Copied));
            return Ok(());
        }
        // Shape checks come first, so a bad model fails even when its tensor is not selected.
        let rows = self.checked_rows(t, &found)?;
        if !self.opts.selection.selects(&t.name) {
            return self.not_selected(t);
        }
        self.plan.tensors.push(self.combined(t, &found, rows));
        Ok(())
    }

    /// Each vector's tensors for target tensor `t`, or `None` when a vector lacks it.
    fn vector_tensors(&self, t: &TensorEntry) -> Option<Vec<VectorTensors<'a>>> {
        let models = self.models;
        self.vectors
            .iter()
            .map(|v| {
                let chat = models[v.chat].get_or_tied(&t.name)?;
                let base = match v.base {
                    Some(b) => Some(models[b].get_or_tied(&t.name)?),
                    None => None,
                };
                Some(VectorTensors { vector: v, chat, base })
            })
            .collect()
    }

    /// Target tensor `t` as it is, converted to the output dtype when one is set.
    fn copy(&self, t: &TensorEntry, kind: Kind) -> PlannedTensor {
        let out = t.dtype.map(|d| self.opts.dtype.unwrap_or(d));
        PlannedTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            dtype_name: out.map(|d| d.safetensors_name().to_string()).unwrap_or(t.dtype_name.clone()),
            dtype: out,
            action: if out == t.dtype {
                Action::Copy(Src { model: TARGET, name: t.name.clone() })
            } else {
                overrides_action(t, vec![])
            },
            kind,
        }
    }

    /// Target tensor `t` with `rows` replaced: special-token rows from the chat model.
    fn push_special_rows(&mut self, t: &TensorEntry, rows: Vec<Override>) {
        self.plan.special_rows.push((t.name.clone(), rows.iter().map(|o| o.row).collect()));
        self.plan.tensors.push(PlannedTensor { action: overrides_action(t, rows), ..self.copy(t, Kind::SpecialRows) });
    }

    /// A target tensor that some vector lacks: copied, with the special-token rows that stored
    /// vectors carry for it.
    fn absent_from_a_vector(&mut self, t: &TensorEntry) {
        let stored = stored_special_rows(self.models, self.vectors, t);
        if stored.is_empty() {
            self.plan.only_in_target.push(t.name.clone());
            self.plan.tensors.push(self.copy(t, Kind::Copied));
        } else {
            self.plan.not_selected.push(t.name.clone());
            self.push_special_rows(t, stored);
        }
    }

    /// A tensor left out by the selection: copied, with the chat model's special-token rows when
    /// it is an embedding whose base rows are untrained.
    fn not_selected(&mut self, t: &TensorEntry) -> Result<()> {
        self.plan.not_selected.push(t.name.clone());
        let mut special = vec![];
        if self.opts.special_rows {
            if is_vocab_tensor(&t.name) {
                let threshold = self.opts.untrained_threshold;
                special = special_rows(self.models, self.vectors, &t.name, threshold, &mut *self.row_norms)?;
            }
            special.extend(stored_special_rows(self.models, self.vectors, t));
        }
        if special.is_empty() {
            self.plan.tensors.push(self.copy(t, Kind::Copied));
        } else {
            self.push_special_rows(t, special);
        }
        Ok(())
    }

    /// Checks the vectors' tensors against target tensor `t`: float, base and chat of one shape,
    /// and a shape the target's can take; returns how many leading rows of the target they cover.
    fn checked_rows(&self, t: &TensorEntry, found: &[VectorTensors]) -> Result<usize> {
        let mut rows = usize::MAX;
        for f in found {
            for e in std::iter::once(f.chat).chain(f.base) {
                if e.dtype.is_none() {
                    let dir = self.models[f.vector.chat].dir.display();
                    return Err(ModelError::tensor(
                        &t.name,
                        format!("is {} in {dir}, which is not a float type", e.dtype_name),
                    )
                    .into());
                }
            }
            let note = match f.base {
                Some(b) if b.shape != f.chat.shape => {
                    let why =
                        format!("base has shape {} but chat has {}", shape_str(&b.shape), shape_str(&f.chat.shape));
                    return Err(ModelError::tensor(&t.name, why).into());
                }
                Some(b) => format!(
                    "target {}, base {}, chat {}",
                    shape_str(&t.shape),
                    shape_str(&b.shape),
                    shape_str(&f.chat.shape)
                ),
                None => format!("target {}, vector {}", shape_str(&t.shape), shape_str(&f.chat.shape)),
            };
            rows = rows.min(covered_rows(&t.name, &t.shape, &f.chat.shape, &note)?);
        }
        Ok(rows)
    }

    /// Target tensor `t` plus the vectors over its first `rows` rows.
    fn combined(&self, t: &TensorEntry, found: &[VectorTensors], rows: usize) -> PlannedTensor {
        let terms = found
            .iter()
            .map(|f| Term {
                chat: Src { model: f.vector.chat, name: f.chat.name.clone() },
                base: f
                    .base
                    .map(|b| Src { model: f.vector.base.expect("a base tensor has a base"), name: b.name.clone() }),
            })
            .collect();
        let full = t.shape.first().copied().unwrap_or(1);
        PlannedTensor {
            action: Action::Combine {
                target: Some(Src { model: TARGET, name: t.name.clone() }),
                terms,
                rows,
                porter: self.opts.porter,
                overrides: vec![],
            },
            kind: if rows < full { Kind::RowAdjusted } else { Kind::Merged },
            ..self.copy(t, Kind::Merged)
        }
    }
}

/// Tensors the vectors carry that the target does not.
fn missing_from_target(models: &[Checkpoint], vectors: &[VectorRef]) -> Vec<String> {
    let mut missing: Vec<String> = vec![];
    for v in vectors {
        for e in models[v.chat].tensors() {
            if models[TARGET].get(&e.name).is_none() && !missing.contains(&e.name) {
                missing.push(e.name.clone());
            }
        }
    }
    missing
}

/// The target tensor `t` with some rows replaced.
fn overrides_action(t: &TensorEntry, overrides: Vec<Override>) -> Action {
    Action::Combine {
        target: Some(Src { model: TARGET, name: t.name.clone() }),
        terms: vec![],
        rows: 0,
        porter: None,
        overrides,
    }
}

/// Rows of vocab tensor `name` that are untrained in the base (near-zero norm) but trained in the
/// chat model: without them a merge that skips embeddings keeps zero rows for `<|eot_id|>` and the
/// merged model never stops.
fn special_rows(
    models: &[Checkpoint],
    vectors: &[VectorRef],
    name: &str,
    threshold: f64,
    row_norms: &mut dyn FnMut(&Checkpoint, &TensorEntry) -> Result<Vec<f64>>,
) -> Result<Vec<Override>> {
    let Some(v) = vectors.iter().find(|v| v.base.is_some()) else {
        return Ok(vec![]);
    };
    let base = &models[v.base.expect("found above")];
    let chat = &models[v.chat];
    let (Some(b), Some(c)) = (base.get_or_tied(name), chat.get_or_tied(name)) else {
        return Ok(vec![]);
    };
    let bn = row_norms(base, b)?;
    let cn = row_norms(chat, c)?;
    let mut sorted: Vec<f64> = bn.iter().copied().filter(|x| x.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let cut = threshold * median;
    Ok((0..bn.len())
        .filter(|&r| bn[r] <= cut && cn[r] > cut)
        .map(|r| Override { row: r, src: Src { model: v.chat, name: c.name.clone() }, src_row: r })
        .collect())
}

/// Special-token rows that stored vectors carry for target tensor `t` (written by `extract` when
/// embeddings were left out), checked against the target's shape.
fn stored_special_rows(models: &[Checkpoint], vectors: &[VectorRef], t: &TensorEntry) -> Vec<Override> {
    let mut out = vec![];
    for v in vectors.iter().filter(|v| v.base.is_none()) {
        let Some((_, ids)) = v.special_rows.iter().find(|(n, _)| *n == t.name) else { continue };
        let name = format!("{SPECIAL_ROWS_PREFIX}{}", t.name);
        let Some(e) = models[v.chat].get(&name) else { continue };
        let fits = e.shape.len() == 2
            && e.shape[0] == ids.len()
            && e.shape[1..] == t.shape[1..]
            && ids.iter().all(|&r| r < t.shape[0]);
        if fits {
            out.extend(ids.iter().enumerate().map(|(j, &r)| Override {
                row: r,
                src: Src { model: v.chat, name: name.clone() },
                src_row: j,
            }));
        }
    }
    out
}

/// Plans `vector` (`chat − base`, both given) as a checkpoint, in the chat model's tensor order:
/// selected float tensors only, in `dtype` (f32 by default).
pub(crate) fn plan_extract(
    models: &[Checkpoint],
    vector: &VectorRef,
    opts: &PlanOptions,
    row_norms: &mut dyn FnMut(&Checkpoint, &TensorEntry) -> Result<Vec<f64>>,
) -> Result<Plan> {
    let base_model = vector.base.ok_or(Error::ExtractWithoutBase)?;
    let (chat, base) = (&models[vector.chat], &models[base_model]);
    let dtype = opts.dtype.unwrap_or(DType::F32);
    let mut plan = Plan::default();
    for c in chat.tensors() {
        let Some(b) = base.get_or_tied(&c.name) else {
            plan.warnings.push(format!("{} is in the chat model but not in the base: left out", c.name));
            continue;
        };
        if b.shape != c.shape {
            return Err(ModelError::tensor(
                &c.name,
                format!("base has shape {} but chat has {}", shape_str(&b.shape), shape_str(&c.shape)),
            )
            .into());
        }
        if c.dtype.is_none() || b.dtype.is_none() {
            continue;
        }
        if !opts.selection.selects(&c.name) {
            plan.not_selected.push(c.name.clone());
            if opts.special_rows && is_vocab_tensor(&c.name) {
                // Keep the chat model's special-token rows so `apply` can restore them as `merge` does.
                let vectors = std::slice::from_ref(vector);
                let rows = special_rows(models, vectors, &c.name, opts.untrained_threshold, row_norms)?;
                if !rows.is_empty() {
                    plan.special_rows.push((c.name.clone(), rows.iter().map(|o| o.row).collect()));
                    plan.tensors.push(stored_rows_tensor(c, rows, dtype));
                }
            }
            continue;
        }
        let term = Term {
            chat: Src { model: vector.chat, name: c.name.clone() },
            base: Some(Src { model: base_model, name: b.name.clone() }),
        };
        plan.tensors.push(vector_tensor(c, term, dtype));
    }
    Ok(plan)
}

/// The vector `term` of chat tensor `c`, stored in `dtype`.
fn vector_tensor(c: &TensorEntry, term: Term, dtype: DType) -> PlannedTensor {
    PlannedTensor {
        name: c.name.clone(),
        shape: c.shape.clone(),
        dtype_name: dtype.safetensors_name().to_string(),
        dtype: Some(dtype),
        action: Action::Combine {
            target: None,
            terms: vec![term],
            rows: c.shape.first().copied().unwrap_or(1),
            porter: None,
            overrides: vec![],
        },
        kind: Kind::Merged,
    }
}

/// The chat model's special-token `rows` of vocab tensor `c`, stored as
/// `chatvec.special_rows.<name>` (row `j` holds the `j`-th of them) in `dtype`.
fn stored_rows_tensor(c: &TensorEntry, rows: Vec<Override>, dtype: DType) -> PlannedTensor {
    let mut shape = c.shape.clone();
    shape[0] = rows.len();
    PlannedTensor {
        name: format!("{SPECIAL_ROWS_PREFIX}{}", c.name),
        shape,
        dtype_name: dtype.safetensors_name().to_string(),
        dtype: Some(dtype),
        action: Action::Combine {
            target: None,
            terms: vec![],
            rows: 0,
            porter: None,
            overrides: rows.into_iter().enumerate().map(|(j, o)| Override { row: j, ..o }).collect(),
        },
        kind: Kind::SpecialRows,
    }
}
