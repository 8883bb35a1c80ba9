//! The three jobs, `merge`, `extract` and `apply`: open the inputs, run the pre-flight checks, plan,
//! stream the tensors into a temporary directory, add the files that make a complete model, and
//! move it into place.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

use crate::{Error, Result};
use chatvec_format::modelfiles::{self, ChatTemplate};
use chatvec_format::writer::{
    plan_shards, write_index, write_json, OutputDir, Shard, ShardWriter, TensorSink, TensorSpec,
};
use chatvec_format::Error as ModelError;
use chatvec_format::{Checkpoint, Progress, ResolvedModel};

use crate::exec::{self, Stats};
use crate::kernel::PorterParams;
use crate::plan::{self, Kind, Plan, PlanOptions, VectorRef};

/// Where and how to write the output.
#[derive(Debug, Clone)]
pub struct OutputOptions {
    /// The output directory.
    pub path: PathBuf,
    /// Replace an existing output.
    pub force: bool,
    /// Largest shard in bytes (transformers' default is 5 GB).
    pub shard_size: u64,
    /// Plan and report, write nothing.
    pub dry_run: bool,
}

/// `merge`: `target + ratio·(chat − base)`.
#[derive(Debug, Clone)]
pub struct MergeJob {
    /// The base model the chat model was fine-tuned from.
    pub base: ResolvedModel,
    /// The instruction-tuned model.
    pub chat: ResolvedModel,
    /// The continually pre-trained model to give chat skills.
    pub target: ResolvedModel,
    /// How much of the vector to add.
    pub ratio: f64,
    /// Tensor selection, dtype, method.
    pub plan: PlanOptions,
    /// Output.
    pub output: OutputOptions,
}

/// `extract`: the vector `chat − base` as a checkpoint.
#[derive(Debug, Clone)]
pub struct ExtractJob {
    /// The base model.
    pub base: ResolvedModel,
    /// The instruction-tuned model.
    pub chat: ResolvedModel,
    /// Tensor selection and dtype (f32 unless set).
    pub plan: PlanOptions,
    /// Output.
    pub output: OutputOptions,
}

/// `apply`: `target + Σ ratio_i·vector_i`.
#[derive(Debug, Clone)]
pub struct ApplyJob {
    /// The model to add the vectors to.
    pub target: ResolvedModel,
    /// Extracted vectors and their ratios.
    pub vectors: Vec<(ResolvedModel, f64)>,
    /// Tensor selection and dtype.
    pub plan: PlanOptions,
    /// Output.
    pub output: OutputOptions,
}

/// What a run did, for people (printed by the CLI) and programs (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `merge`, `extract` or `apply`.
    pub command: String,
    /// The output directory.
    pub output: PathBuf,
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// Method name.
    pub method: String,
    /// Tensors written.
    pub tensors: usize,
    /// Tensors the vector was added to, whole.
    pub merged: usize,
    /// Vocab tensors whose shared rows got the vector while grown rows kept the target's values.
    pub row_adjusted: usize,
    /// Tensors copied unchanged.
    pub copied: usize,
    /// Tensors left out by --include/--exclude.
    pub not_selected: Vec<String>,
    /// Special-token rows taken from the chat model: tensor → token ids.
    pub special_rows: Vec<(String, Vec<usize>)>,
    /// Tensors only the target has (copied).
    pub only_in_target: Vec<String>,
    /// Tensors of the inputs that the target lacks (not written).
    pub missing_from_target: Vec<String>,
    /// Warnings from the pre-flight checks.
    pub warnings: Vec<String>,
    /// Stop ids written to generation_config.json.
    pub eos_token_ids: Vec<u32>,
    /// Where the chat template came from, if one was carried over.
    pub chat_template_from: Option<String>,
    /// Output shards.
    pub shards: usize,
    /// Bytes read from the inputs.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Estimated peak memory of the run, in bytes.
    pub peak_memory_estimate: u64,
    /// Elements not exactly representable in the output dtype (extract only).
    pub inexact_elements: u64,
    /// Wall time.
    pub seconds: f64,
}

fn open(m: &ResolvedModel) -> Result<Checkpoint> {
    Ok(Checkpoint::open(&m.path)?)
}

/// The inputs of a merge, by role. The plan and the run read them as one list, in the order
/// [`into_list`](Self::into_list) gives; [`MERGE`] says where each role sits in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MergeRoles<T> {
    /// The continually pre-trained model that gets the vector.
    target: T,
    /// The instruction-tuned model.
    chat: T,
    /// The model the chat model was fine-tuned from.
    base: T,
}

impl<T> MergeRoles<T> {
    fn into_list(self) -> Vec<T> {
        vec![self.target, self.chat, self.base]
    }
}

/// Where each role of a merge sits in its model list.
const MERGE: MergeRoles<usize> = MergeRoles { target: plan::TARGET, chat: 1, base: 2 };
/// The roles' names, for messages.
const MERGE_NAMES: MergeRoles<&str> = MergeRoles { target: "target", chat: "chat", base: "base" };

/// The inputs of an extract, by role, as [`MergeRoles`] for a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExtractRoles<T> {
    /// The instruction-tuned model.
    chat: T,
    /// The model it was fine-tuned from.
    base: T,
}

impl<T> ExtractRoles<T> {
    fn into_list(self) -> Vec<T> {
        vec![self.chat, self.base]
    }
}

/// Where each role of an extract sits in its model list.
const EXTRACT: ExtractRoles<usize> = ExtractRoles { chat: 0, base: 1 };
/// The roles' names, for messages.
const EXTRACT_NAMES: ExtractRoles<&str> = ExtractRoles { chat: "chat", base: "base" };

/// Config keys in which a chat model must agree with its base: a mismatch means it was not
/// fine-tuned from that base (the classic: Mistral-7B-v0.1 with Instruct-v0.2, whose
/// rope_theta and sliding_window differ).
const SAME_ARCH_KEYS: &[&str] = &[
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "sliding_window",
];

/// A config value for messages: the number, or `unset`.
fn shown<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "unset".into())
}

fn describe(v: Option<&Value>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "unset".into())
}

/// Refuses a base/chat pair that cannot be a base and its fine-tune.
pub(crate) fn check_base_chat(base: &Checkpoint, chat: &Checkpoint) -> Result<()> {
    let why =
        |what: String| Err(Error::NotAFineTune { base: base.dir.clone(), chat: chat.dir.clone(), difference: what });
    if base.config.architecture() != chat.config.architecture() {
        return why(format!(
            "architecture ({} vs {})",
            base.config.architecture().unwrap_or("unset"),
            chat.config.architecture().unwrap_or("unset")
        ));
    }
    for k in SAME_ARCH_KEYS {
        let (a, b) = (base.config.get(k), chat.config.get(k));
        if a != b {
            return why(format!("{k} ({} vs {})", describe(a), describe(b)));
        }
    }
    if base.config.rope_theta() != chat.config.rope_theta() {
        let (a, b) = (base.config.rope_theta(), chat.config.rope_theta());
        return why(format!("rope_theta ({} vs {})", shown(a), shown(b)));
    }
    if base.config.rope_scaling() != chat.config.rope_scaling() {
        return why("rope_scaling".into());
    }
    Ok(())
}

/// Warnings about a target whose config differs from the base in ways that break generation.
pub(crate) fn target_warnings(base: &Checkpoint, target: &Checkpoint) -> Vec<String> {
    let (b, t) = (&base.config, &target.config);
    let mut w = vec![];
    if b.architecture() != t.architecture() {
        w.push(format!(
            "target architecture {} differs from base {}",
            t.architecture().unwrap_or("unset"),
            b.architecture().unwrap_or("unset")
        ));
    }
    if b.rope_theta() != t.rope_theta() {
        w.push(format!(
            "target rope_theta {} differs from base {}: check the target's config.json",
            shown(t.rope_theta()),
            shown(b.rope_theta())
        ));
    }
    for k in ["bos_token_id", "eos_token_id"] {
        if b.get(k) != t.get(k) {
            let show = |v: Option<&Value>| v.map_or_else(|| "none".to_string(), Value::to_string);
            w.push(format!("target {k} {} differs from base {}", show(t.get(k)), show(b.get(k))));
        }
    }
    if b.max_position_embeddings() != t.max_position_embeddings() {
        w.push(format!(
            "target max_position_embeddings {} differs from base {}",
            shown(t.max_position_embeddings()),
            shown(b.max_position_embeddings())
        ));
    }
    w
}

/// A merge opened, checked and planned: ready to stream into any [`TensorSink`] (the GGUF
/// export writes a merge this way, without a safetensors directory in between).
pub struct PreparedMerge {
    models: Vec<Checkpoint>,
    /// What happens to each tensor.
    pub plan: Plan,
    /// The chat model's template, carried over when the target has none.
    pub chat_template: Option<ChatTemplate>,
    /// The chat model's stop ids.
    pub chat_eos: Vec<u32>,
    /// The ratio of the vector.
    pub ratio: f64,
    /// Write NaN/Inf values instead of refusing them.
    pub allow_nonfinite: bool,
}

/// Opens the three models of `job`, runs the pre-flight checks and plans the merge.
pub fn prepare_merge(job: &MergeJob) -> Result<PreparedMerge> {
    let inputs = MergeRoles { target: open(&job.target)?, chat: open(&job.chat)?, base: open(&job.base)? };
    // The stop ids the output's generation_config.json gets, checked before any work.
    modelfiles::eos_ids(&job.target.path, &inputs.target.config)?;
    check_base_chat(&inputs.base, &inputs.chat)?;
    let warnings = target_warnings(&inputs.base, &inputs.target);
    let models = inputs.into_list();
    let vectors = [VectorRef { chat: MERGE.chat, base: Some(MERGE.base), special_rows: vec![] }];
    let mut plan = plan::plan_merge(&models, &vectors, &job.plan, &mut exec::row_norms)?;
    plan.warnings.extend(warnings);
    refuse_empty_vector(&plan, "base, chat and target")?;
    let chat_template = modelfiles::chat_template(&job.chat.path)?;
    let chat_eos = modelfiles::eos_ids(&job.chat.path, &models[MERGE.chat].config)?;
    Ok(PreparedMerge {
        models,
        plan,
        chat_template,
        chat_eos,
        ratio: job.ratio,
        allow_nonfinite: job.plan.allow_nonfinite,
    })
}

impl PreparedMerge {
    /// The target model (its config and tokenizer describe the merged model).
    pub fn target(&self) -> &Checkpoint {
        &self.models[MERGE.target]
    }

    /// Refuses when an input file changed since it was opened (see
    /// [`Checkpoint::check_unchanged`]); for a sink to call before it commits its output.
    pub fn check_inputs_unchanged(&self) -> Result<()> {
        Ok(self.models.iter().try_for_each(Checkpoint::check_unchanged)?)
    }

    /// Streams the planned tensors at `order` (indices into `plan.tensors`) into `sink`;
    /// returns the bytes read.
    pub fn stream(
        &self,
        order: &[usize],
        sink: &mut dyn TensorSink,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Result<u64> {
        let stats = Stats::default();
        let run = exec::Run {
            models: &self.models,
            roles: &MERGE_NAMES.into_list(),
            plan: &self.plan,
            order,
            allow_nonfinite: self.allow_nonfinite,
            progress,
            cancel,
            stats: &stats,
        };
        run.run(&mut [exec::Output { writer: sink, ratios: vec![self.ratio] }])?;
        Ok(stats.bytes_read.load(Ordering::Relaxed))
    }
}

/// Runs `merge`.
pub fn merge(job: &MergeJob, progress: &dyn Progress, cancel: &AtomicBool) -> Result<Summary> {
    let mut summaries = merge_ratios(job, &[(job.ratio, job.output.clone())], progress, cancel)?;
    Ok(summaries.remove(0))
}

/// Runs `merge` at several ratios in one pass: each block of the inputs is read once and written
/// to every output, ratio `outputs[i].0` into `outputs[i].1` (`job.ratio` and `job.output` are
/// not used). Returns a summary per output.
pub fn merge_ratios(
    job: &MergeJob,
    outputs: &[(f64, OutputOptions)],
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Vec<Summary>> {
    let started = Instant::now();
    if outputs.is_empty() {
        return Err(Error::NoRatio);
    }
    for (i, (_, a)) in outputs.iter().enumerate() {
        if outputs[..i].iter().any(|(_, b)| b.path == a.path) {
            return Err(Error::SameOutputTwice { path: a.path.clone() });
        }
    }
    let PreparedMerge { models, plan, chat_template, chat_eos, .. } = prepare_merge(job)?;
    let outs = outputs
        .iter()
        .map(|(ratio, output)| JobOutput {
            options: output.clone(),
            ratios: vec![*ratio],
            recipe: json!({
                "ratio": ratio,
                "inputs": {
                    "base": input_record(&job.base, &models[MERGE.base]),
                    "chat": input_record(&job.chat, &models[MERGE.chat]),
                    "target": input_record(&job.target, &models[MERGE.target]),
                },
            }),
        })
        .collect();
    let carry = Carry { template: chat_template, template_from: "chat model", eos: chat_eos };
    let job = Job {
        command: "merge",
        models: &models,
        roles: MERGE_NAMES.into_list(),
        files_from: MERGE.target,
        plan: &plan,
        opts: &job.plan,
        carry: Some(carry),
    };
    job.write(outs, progress, cancel, started)
}

/// Runs `apply`.
pub fn apply(job: &ApplyJob, progress: &dyn Progress, cancel: &AtomicBool) -> Result<Summary> {
    let started = Instant::now();
    if job.vectors.is_empty() {
        return Err(Error::NoVector);
    }
    // The target first (every merge plan reads it as model `plan::TARGET`), then the vectors.
    let mut models = vec![open(&job.target)?];
    modelfiles::eos_ids(&job.target.path, &models[0].config)?;
    let mut vectors = vec![];
    let mut manifests = vec![];
    for (v, _) in &job.vectors {
        let manifest = read_vector_manifest(&v.path)?;
        let special_rows =
            manifest.get("special_rows").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
        vectors.push(VectorRef { chat: models.len(), base: None, special_rows });
        models.push(open(v)?);
        manifests.push(manifest);
    }
    let mut plan = plan::plan_merge(&models, &vectors, &job.plan, &mut exec::row_norms)?;
    refuse_empty_vector(&plan, "the target and its vectors")?;
    let target = &models[plan::TARGET];
    let first = &manifests[0];
    let template = first.get("chat_template").cloned().and_then(|t| serde_json::from_value(t).ok());
    let manifest_path = job.vectors[0].0.path.join("chatvec.json");
    let eos =
        chatvec_format::config::ids_of(first.get("chat_eos_token_ids"), &manifest_path, "chat_eos_token_ids", None)?;
    for (m, (v, _)) in manifests.iter().zip(&job.vectors) {
        if let Some(arch) = m.pointer("/architecture").and_then(Value::as_str) {
            if Some(arch) != target.config.architecture() {
                plan.warnings.push(format!("vector {} was extracted from {arch} models", v.spec));
            }
        }
    }
    let recipe = json!({
        "vectors": job.vectors.iter().zip(vectors.iter().map(|v| &models[v.chat])).map(|((v, r), m)| json!({"ratio": r, "vector": input_record(v, m)})).collect::<Vec<_>>(),
        "inputs": {"target": input_record(&job.target, target)},
    });
    let carry = Carry { template, template_from: "vector manifest", eos };
    let roles: Vec<String> =
        std::iter::once("target".to_string()).chain((1..models.len()).map(|i| format!("vector {i}"))).collect();
    let out = JobOutput { options: job.output.clone(), ratios: job.vectors.iter().map(|(_, r)| *r).collect(), recipe };
    let job = Job {
        command: "apply",
        models: &models,
        roles: roles.iter().map(String::as_str).collect(),
        files_from: plan::TARGET,
        plan: &plan,
        opts: &job.plan,
        carry: Some(carry),
    };
    Ok(job.write(vec![out], progress, cancel, started)?.remove(0))
}

/// The `chatvec.json` of a stored vector, refused unless `chatvec extract` wrote it.
fn read_vector_manifest(dir: &std::path::Path) -> Result<Value> {
    let path = dir.join("chatvec.json");
    if !path.is_file() {
        return Err(Error::NotAChatVector { path: dir.to_path_buf() });
    }
    let text = chatvec_format::metadata::read_metadata(&path)?;
    let manifest: Value = serde_json::from_str(&text).map_err(|e| chatvec_format::Error::json(&path, e))?;
    if manifest.get("kind").and_then(Value::as_str) != Some("chat_vector") {
        return Err(Error::NotAChatVector { path });
    }
    Ok(manifest)
}

/// Runs `extract`.
pub fn extract(job: &ExtractJob, progress: &dyn Progress, cancel: &AtomicBool) -> Result<Summary> {
    let started = Instant::now();
    let inputs = ExtractRoles { chat: open(&job.chat)?, base: open(&job.base)? };
    check_base_chat(&inputs.base, &inputs.chat)?;
    let models = inputs.into_list();
    let (chat, base) = (&models[EXTRACT.chat], &models[EXTRACT.base]);
    let vector = VectorRef { chat: EXTRACT.chat, base: Some(EXTRACT.base), special_rows: vec![] };
    let plan = plan::plan_extract(&models, &vector, &job.plan, &mut exec::row_norms)?;
    let template = modelfiles::chat_template(&job.chat.path)?;
    let recipe = json!({
        "kind": "chat_vector",
        "architecture": chat.config.architecture(),
        "inputs": {
            "base": input_record(&job.base, base),
            "chat": input_record(&job.chat, chat),
        },
        "tensors": plan.tensors.iter().map(|t| &t.name).collect::<Vec<_>>(),
        "chat_template": template,
        "chat_eos_token_ids": modelfiles::eos_ids(&job.chat.path, &chat.config)?,
    });
    let out = JobOutput { options: job.output.clone(), ratios: vec![1.0], recipe };
    let job = Job {
        command: "extract",
        models: &models,
        roles: EXTRACT_NAMES.into_list(),
        files_from: EXTRACT.chat,
        plan: &plan,
        opts: &job.plan,
        carry: None,
    };
    Ok(job.write(vec![out], progress, cancel, started)?.remove(0))
}

/// A merge in which no tensor gets the vector would write a copy of the target and call it
/// merged; it is refused with the reason.
fn refuse_empty_vector(plan: &Plan, inputs: &str) -> Result<()> {
    if plan.count(Kind::Merged) + plan.count(Kind::RowAdjusted) + plan.count(Kind::SpecialRows) > 0 {
        return Ok(());
    }
    Err(Error::EmptyVector { inputs: inputs.to_string(), planned: plan.tensors.len() })
}

/// One input of the recipe. The path is absolute (canonical), so `chatvec.json` means the same
/// from any working directory; hub inputs also carry their id and commit.
fn input_record(m: &ResolvedModel, c: &Checkpoint) -> Value {
    json!({
        "spec": m.spec,
        "path": std::fs::canonicalize(&m.path).unwrap_or_else(|_| m.path.clone()),
        "hub_id": m.hub_id,
        "revision": m.revision,
        "config_sha256": c.config_sha256(),
        "format": c.format,
    })
}

/// What a merged model takes from the chat side: its template and its stop ids.
struct Carry {
    template: Option<ChatTemplate>,
    template_from: &'static str,
    eos: Vec<u32>,
}

/// A planned job, ready to write: its inputs, its plan, and what its outputs take from the inputs.
struct Job<'a> {
    /// `merge`, `extract` or `apply`.
    command: &'static str,
    models: &'a [Checkpoint],
    /// A name per model, for messages ("target", "chat", ...).
    roles: Vec<&'a str>,
    /// The model whose config, tokenizer and other files the outputs take (the target; the chat
    /// model for extract).
    files_from: usize,
    plan: &'a Plan,
    opts: &'a PlanOptions,
    /// What a merged model takes from the chat side (nothing for a vector).
    carry: Option<Carry>,
}

/// One output directory of a job: where, the ratio of each vector, and its `chatvec.json` so far.
struct JobOutput {
    options: OutputOptions,
    ratios: Vec<f64>,
    recipe: Value,
}

/// An output being written: its directory and its shard writer.
struct Writing {
    dir: OutputDir,
    writer: ShardWriter,
}

impl Job<'_> {
    /// Streams the plan into every output, then completes each and moves it into place; returns
    /// a summary per output (only the plan's, for a dry run).
    fn write(
        &self,
        outs: Vec<JobOutput>,
        progress: &dyn Progress,
        cancel: &AtomicBool,
        started: Instant,
    ) -> Result<Vec<Summary>> {
        let shards = shard_layout(self.models, self.plan, outs[0].options.shard_size);
        let bytes_out: u64 = shards.iter().flat_map(|s| &s.tensors).map(|t| t.bytes as u64).sum();
        let mut summaries: Vec<Summary> =
            outs.iter().map(|o| self.planned_summary(&o.options, shards.len(), bytes_out, outs.len())).collect();
        if outs[0].options.dry_run {
            summaries.iter_mut().for_each(|s| s.seconds = started.elapsed().as_secs_f64());
            return Ok(summaries);
        }
        let (written, stats) = self.stream_shards(&outs, &shards, bytes_out, progress, cancel)?;
        let nonfinite = stats.nonfinite.into_inner().expect("no panics while held");
        for (k, ((dir, bytes), (summary, out))) in written.into_iter().zip(summaries.iter_mut().zip(outs)).enumerate() {
            summary.bytes_written = bytes;
            summary.bytes_read = stats.bytes_read.load(Ordering::Relaxed);
            summary.inexact_elements = stats.inexact.load(Ordering::Relaxed);
            for nf in nonfinite.iter().filter(|nf| nf.output == k) {
                summary.warnings.push(format!("tensor {}: written with {}", nf.tensor, nf.describe(&self.roles)));
            }
            self.finish_output(&shards, dir, summary, out.recipe)?;
            summary.seconds = started.elapsed().as_secs_f64();
        }
        Ok(summaries)
    }

    /// Creates every output's temporary directory and streams the shards into them; returns each
    /// directory with the bytes written to it, and the run's counters.
    fn stream_shards(
        &self,
        outs: &[JobOutput],
        shards: &[Shard],
        bytes_out: u64,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Result<(Vec<(OutputDir, u64)>, Stats)> {
        let mut writing = self.start_writers(outs, shards, bytes_out)?;
        progress.begin(bytes_out * outs.len() as u64);
        let stats = Stats::default();
        let streamed = {
            let mut outputs: Vec<exec::Output> = writing
                .iter_mut()
                .zip(outs)
                .map(|(w, o)| exec::Output { writer: &mut w.writer, ratios: o.ratios.clone() })
                .collect();
            let order = write_order(shards);
            let run = exec::Run {
                models: self.models,
                roles: &self.roles,
                plan: self.plan,
                order: &order,
                allow_nonfinite: self.opts.allow_nonfinite,
                progress,
                cancel,
                stats: &stats,
            };
            run.run(&mut outputs)
        };
        let mut written = vec![];
        let mut finished = Ok(());
        for w in writing {
            match w.writer.finish() {
                Ok(bytes) => written.push((w.dir, bytes)),
                Err(e) => finished = Err(e),
            }
        }
        streamed?;
        finished?;
        progress.finish();
        if cancel.load(Ordering::Relaxed) {
            return Err(ModelError::Interrupted.into());
        }
        Ok((written, stats))
    }

    /// Every output's temporary directory, once it is known to be no input and to have room,
    /// with a shard writer started in it.
    fn start_writers(&self, outs: &[JobOutput], shards: &[Shard], bytes_out: u64) -> Result<Vec<Writing>> {
        let mut writing: Vec<Writing> = vec![];
        for o in outs {
            refuse_input_as_output(self.models, &o.options.path)?;
            let dir = OutputDir::create(&o.options.path, o.options.force)?;
            let sharing = writing.iter().filter(|w| same_disk(w.dir.path(), dir.path())).count() as u64;
            check_free_space(dir.path(), bytes_out * (1 + sharing))?;
            let writer = if outs.len() > 1 {
                ShardWriter::start_streaming(dir.path(), shards.to_vec())?
            } else {
                ShardWriter::start(dir.path(), shards.to_vec())?
            };
            writing.push(Writing { dir, writer });
        }
        Ok(writing)
    }

    /// The summary the plan alone gives (what a dry run reports), for one of `outputs` outputs.
    fn planned_summary(&self, out: &OutputOptions, shards: usize, bytes_out: u64, outputs: usize) -> Summary {
        let (plan, opts) = (self.plan, self.opts);
        let threads = rayon::current_num_threads();
        Summary {
            command: self.command.into(),
            output: out.path.clone(),
            dry_run: out.dry_run,
            method: if opts.porter.is_some() { "feature-porter" } else { "chat-vector" }.into(),
            tensors: plan.tensors.len(),
            merged: plan.count(Kind::Merged),
            row_adjusted: plan.count(Kind::RowAdjusted),
            copied: plan.count(Kind::Copied) + plan.count(Kind::SpecialRows),
            not_selected: plan.not_selected.clone(),
            special_rows: plan.special_rows.clone(),
            only_in_target: plan.only_in_target.clone(),
            missing_from_target: plan.missing_from_target.clone(),
            warnings: plan.warnings.iter().cloned().chain(self.models.iter().flat_map(Checkpoint::warnings)).collect(),
            eos_token_ids: vec![],
            chat_template_from: None,
            shards,
            bytes_read: plan_read_bytes(self.models, plan),
            bytes_written: bytes_out,
            peak_memory_estimate: exec::peak_memory(self.models.len(), outputs, threads),
            inexact_elements: 0,
            seconds: 0.0,
        }
    }

    /// Completes a written output: index, support files, template, generation config, recipe;
    /// then moves it into place.
    fn finish_output(&self, shards: &[Shard], dir: OutputDir, summary: &mut Summary, recipe: Value) -> Result<()> {
        write_index(dir.path(), shards, "model")?;
        let files_from = &self.models[self.files_from];
        modelfiles::copy_support_files(&files_from.dir, dir.path())?;
        if let Some(d) = self.opts.dtype {
            modelfiles::set_config_dtype(dir.path(), d)?;
        }
        if let Some(carry) = &self.carry {
            if modelfiles::chat_template(dir.path())?.is_none() {
                if let Some(t) = &carry.template {
                    modelfiles::install_chat_template(dir.path(), t)?;
                    summary.chat_template_from = Some(carry.template_from.into());
                }
            }
            summary.eos_token_ids = modelfiles::write_generation_config(dir.path(), &files_from.config, &carry.eos)?;
        }
        write_json(&dir.path().join("chatvec.json"), &self.recipe(recipe, summary))?;
        self.models.iter().try_for_each(Checkpoint::check_unchanged)?;
        Ok(dir.commit()?)
    }

    /// `chatvec.json`: the job's `recipe` with what the run did.
    fn recipe(&self, mut recipe: Value, summary: &Summary) -> Value {
        let opts = self.opts;
        if let Value::Object(r) = &mut recipe {
            r.insert("tool".into(), json!("chatvec"));
            r.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
            r.insert("command".into(), json!(summary.command));
            r.insert("method".into(), json!(summary.method));
            if let Some(p) = opts.porter {
                r.insert("porter".into(), json!(p));
            }
            r.insert("dtype".into(), json!(opts.dtype.map(|d| d.to_string())));
            r.insert(
                "selection".into(),
                json!({
                    "include": opts.selection.include.as_ref().map(|r| r.as_str()),
                    "exclude": opts.selection.exclude.as_ref().map(|r| r.as_str()),
                }),
            );
            r.insert("special_rows".into(), json!(summary.special_rows));
            r.insert("eos_token_ids".into(), json!(summary.eos_token_ids));
            r.insert("inexact_elements".into(), json!(summary.inexact_elements));
        }
        recipe
    }
}
/// Whether two directories are on one file system (their outputs share its free space).
fn same_disk(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => true,
    }
}

fn shard_layout(models: &[Checkpoint], plan: &Plan, shard_size: u64) -> Vec<Shard> {
    let specs: Vec<TensorSpec> = plan
        .tensors
        .iter()
        .enumerate()
        .map(|(index, t)| TensorSpec {
            name: t.name.clone(),
            dtype: t.dtype_name.clone(),
            shape: t.shape.clone(),
            bytes: t.bytes(models),
            index,
        })
        .collect();
    plan_shards(specs, shard_size.max(1), "model")
}

/// Plan indices in the order the shards store them.
fn write_order(shards: &[Shard]) -> Vec<usize> {
    shards.iter().flat_map(|s| s.tensors.iter().map(|t| t.index)).collect()
}

/// `--force` must never replace (or write into) a model being read, directly or through a
/// symlink, whether or not the output exists yet.
fn refuse_input_as_output(models: &[Checkpoint], out: &std::path::Path) -> Result<()> {
    let out = chatvec_format::writer::resolve_existing_prefix(out);
    for m in models {
        let dir = m.dir.canonicalize().unwrap_or_else(|_| m.dir.clone());
        if out == dir || dir.starts_with(&out) || out.starts_with(&dir) {
            return Err(Error::OutputOverwritesInput { output: out, input: m.dir.clone() });
        }
    }
    Ok(())
}

fn plan_read_bytes(models: &[Checkpoint], plan: &Plan) -> u64 {
    use crate::plan::{entry, Action};
    plan.tensors
        .iter()
        .map(|t| match &t.action {
            Action::Copy(s) => entry(models, s).byte_len() as u64,
            Action::Combine { target, terms, .. } => {
                let srcs = target.iter().chain(terms.iter().flat_map(|x| std::iter::once(&x.chat).chain(&x.base)));
                srcs.map(|s| entry(models, s).byte_len() as u64).sum()
            }
        })
        .sum()
}

fn check_free_space(dir: &std::path::Path, need: u64) -> Result<()> {
    let free = fs4::available_space(dir).map_err(|e| ModelError::io(dir, e))?;
    // Headers, config and tokenizer files are small; keep a 64 MiB margin for them.
    if free < need + (64 << 20) {
        return Err(Error::NotEnoughSpace { dir: dir.parent().unwrap_or(dir).to_path_buf(), need, free });
    }
    Ok(())
}

/// A byte count for people in decimal units (`3.2 GB`, `4.5 MB`, `300 B`), as bytesize writes it.
pub fn human_bytes(b: u64) -> String {
    bytesize::ByteSize::b(b).display().si().to_string()
}

/// Feature-porter parameters from user flags.
pub fn porter(steepness: f64, shift: f64) -> PorterParams {
    PorterParams { steepness, shift }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_are_never_shown_as_zero_gigabytes() {
        assert_eq!(human_bytes(3_200_000_000), "3.2 GB");
        assert_eq!(human_bytes(4_500_000), "4.5 MB");
        assert_eq!(human_bytes(12_000), "12.0 kB");
        assert_eq!(human_bytes(300), "300 B");
        assert_eq!(human_bytes(40_000_000), "40.0 MB");
    }
}
