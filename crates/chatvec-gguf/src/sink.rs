//! `chatvec merge --gguf`: the merge's output blocks go straight into a GGUF file, in the same
//! single pass and flat memory as a safetensors merge, with no directory in between.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use chatvec_core::modelfiles::{self, ChatTemplate};
use chatvec_core::{prepare_merge, Error, MergeJob, Progress, Result, TensorSink};
use serde_json::Value as Json;

use crate::encode::TensorEncoder;
use crate::export::sources_dtype;
use crate::output::GgufFile;
use crate::plan::{plan, GgufPlan, ModelInfo, Origin, SourceTensor};
use crate::types::FileType;

/// Takes a merge's tensors, in the plan's order, and writes them as GGUF.
pub struct GgufSink<'a> {
    plan: &'a GgufPlan,
    sources: &'a [SourceTensor],
    file: GgufFile,
    next: usize,
    current: Option<(TensorEncoder<'a>, usize)>,
}

impl<'a> GgufSink<'a> {
    /// Starts the file: writes the header.
    pub fn start(plan: &'a GgufPlan, sources: &'a [SourceTensor], mut file: GgufFile) -> Result<Self> {
        file.writer().write_all(&plan.header).map_err(|e| Error::msg(format!("writing the GGUF header: {e}")))?;
        Ok(GgufSink { plan, sources, file, next: 0, current: None })
    }

    /// Writes computed tensors up to the next input tensor and starts encoding that one.
    fn advance(&mut self) -> Result<()> {
        let align = self.plan.meta.alignment();
        while let Some(t) = self.plan.tensors.get(self.next) {
            self.next += 1;
            let mut enc = TensorEncoder::new(t, sources_dtype(t, self.sources));
            match &t.origin {
                Origin::Computed(values) => {
                    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    enc.feed(&bytes, self.file.writer())?;
                    enc.finish(align, self.file.writer())?;
                }
                Origin::Input(i) => {
                    let s = &self.sources[*i];
                    let len = s.shape.iter().product::<usize>() * s.dtype.size();
                    self.current = Some((enc, len));
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Checks that every tensor arrived and moves the file into place.
    pub fn finish(mut self) -> Result<()> {
        if self.current.is_none() {
            self.advance()?;
        }
        if self.current.is_some() || self.next < self.plan.tensors.len() {
            return Err(Error::msg("the merge stopped before every tensor reached the GGUF file"));
        }
        self.file.commit()
    }
}

impl TensorSink for GgufSink<'_> {
    fn buffer(&self, len: usize) -> Vec<u8> {
        vec![0; len]
    }

    fn push(&mut self, block: Vec<u8>) -> Result<()> {
        if self.current.is_none() {
            self.advance()?;
        }
        let align = self.plan.meta.alignment();
        let (mut enc, left) = self.current.take().ok_or_else(|| Error::msg("more merge output than GGUF tensors"))?;
        enc.feed(&block, self.file.writer())?;
        let left = left.checked_sub(block.len()).ok_or_else(|| Error::msg("a block crossed a tensor's end"))?;
        if left == 0 {
            enc.finish(align, self.file.writer())?;
            self.advance()?;
        } else {
            self.current = Some((enc, left));
        }
        Ok(())
    }
}

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
        .collect::<Result<Vec<_>>>()?;
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
    let file = GgufFile::create(out, force, gguf.file_bytes(), &[&job.base.path, &job.chat.path, &job.target.path])?;
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

fn sources_size(t: &chatvec_core::plan::PlannedTensor) -> u64 {
    t.dtype.map_or(0, |d| d.size() as u64)
}
