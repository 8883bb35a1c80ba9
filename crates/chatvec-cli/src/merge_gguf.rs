//! `chatvec merge --gguf`: runs a merge whose output blocks go straight into a GGUF file through
//! chatvec-gguf's [`GgufSink`]. The glue between the merge engine and the GGUF writer lives here so
//! neither library depends on the other.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use chatvec_format::modelfiles::{self, ChatTemplate};
use chatvec_format::{Error, Progress};
use chatvec_gguf::output::GgufFile;
use chatvec_gguf::plan::{plan, ModelInfo, Origin, SourceTensor};
use chatvec_gguf::sink::GgufSink;
use chatvec_gguf::FileType;
use chatvec_merge::{prepare_merge, MergeJob};
use serde_json::Value as Json;

/// What `merge --gguf` wrote.
#[derive(Debug, Clone)]
pub struct MergeGgufSummary {
    /// Tensors in the file.
    pub tensors: usize,
    /// Bytes of the file.
    pub bytes: u64,
    /// Input bytes read.
    pub bytes_read: u64,
    /// Warnings from the merge's pre-flight checks.
    pub warnings: Vec<String>,
}

/// Runs `job` and writes the merged model to the GGUF file `out` as `ftype`. The metadata are
/// those `chatvec export gguf` gives the merged directory: the target's config and tokenizer,
/// the chat model's template when the target has none, the name from `out`'s file stem.
pub fn merge_to_gguf(
    job: &MergeJob,
    out: &Path,
    ftype: FileType,
    force: bool,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<MergeGgufSummary> {
    let merge = prepare_merge(job)?;
    let target = merge.target();
    let mut by_name: Vec<usize> = (0..merge.plan.tensors.len()).collect();
    by_name.sort_by(|&a, &b| merge.plan.tensors[a].name.cmp(&merge.plan.tensors[b].name));
    let sources = by_name
        .iter()
        .map(|&i| {
            let t = &merge.plan.tensors[i];
            let dtype =
                t.dtype.ok_or_else(|| Error::tensor(&t.name, format!("is {}, not a float tensor", t.dtype_name)))?;
            Ok(SourceTensor { name: t.name.clone(), shape: t.shape.clone(), dtype })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let fallback_template = match modelfiles::chat_template(&target.dir)? {
        Some(_) => None,
        None => merge.chat_template.clone().map(|t| match t {
            ChatTemplate::JinjaFile(s) => Json::String(s),
            ChatTemplate::TokenizerConfig(v) => v,
        }),
    };
    let name = out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    // The stop ids the merged model's generation_config.json gets: the target's and the chat model's.
    let mut stop_ids = modelfiles::eos_ids(&target.dir, &target.config)?;
    let in_vocab = |id: &u32| target.config.vocab_size().is_none_or(|v| (*id as usize) < v);
    stop_ids.extend(merge.chat_eos.iter().filter(|id| in_vocab(id) && !stop_ids.contains(id)).collect::<Vec<_>>());
    let info = ModelInfo { config: &target.config, dir: &target.dir, name: &name, fallback_template, stop_ids };
    let gguf = plan(&info, &sources, ftype)?;
    let order: Vec<usize> = gguf
        .tensors
        .iter()
        .filter_map(|t| match t.origin {
            Origin::Input(i) => Some(by_name[i]),
            Origin::Computed(_) => None,
        })
        .collect();
    let inputs = [job.base.path.as_path(), &job.chat.path, &job.target.path];
    let file = GgufFile::create(out, force, gguf.file_bytes(), &inputs)?;
    let mut sink = GgufSink::start(&gguf, &sources, file)?;
    progress.begin(
        order
            .iter()
            .map(|&i| {
                merge.plan.tensors[i].shape.iter().product::<usize>() as u64 * sources_size(&merge.plan.tensors[i])
            })
            .sum(),
    );
    let bytes_read = merge.stream(&order, &mut sink, progress, cancel)?;
    merge.check_inputs_unchanged()?;
    sink.finish()?;
    progress.finish();
    Ok(MergeGgufSummary {
        tensors: gguf.tensors.len(),
        bytes: gguf.file_bytes(),
        bytes_read,
        warnings: merge.plan.warnings.clone(),
    })
}

fn sources_size(t: &chatvec_merge::plan::PlannedTensor) -> u64 {
    t.dtype.map_or(0, |d| d.size() as u64)
}
