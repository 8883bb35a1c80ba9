//! `chatvec export gguf`: a checkpoint into one GGUF file, tensor by tensor, in the converter's
//! order (weight files sorted by name, tensors sorted by name within each).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use chatvec_format::{Checkpoint, Error, Progress, Result};

use crate::encode::TensorEncoder;
use crate::output::GgufFile;
use crate::plan::{plan, GgufPlan, ModelInfo, Origin, SourceTensor};
use crate::types::FileType;

/// Bytes read from a checkpoint per step.
const READ_BYTES: usize = 16 << 20;

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of the file.
    pub bytes: u64,
    /// The architecture name.
    pub arch: &'static str,
}

/// The converter's tensor order for `ckpt`: files by name, then tensors by name.
pub fn converter_order(ckpt: &Checkpoint) -> Result<Vec<SourceTensor>> {
    let mut entries: Vec<_> = ckpt.tensors().iter().collect();
    if ckpt.format == chatvec_format::WeightFormat::Safetensors {
        entries.sort_by(|a, b| (ckpt.file_of(a), &a.name).cmp(&(ckpt.file_of(b), &b.name)));
    }
    entries
        .into_iter()
        .map(|e| {
            let dtype =
                e.dtype.ok_or_else(|| Error::tensor(&e.name, format!("is {}, not a float tensor", e.dtype_name)))?;
            Ok(SourceTensor { name: e.name.clone(), shape: e.shape.clone(), dtype })
        })
        .collect()
}

/// Plans the GGUF of the checkpoint in `dir`.
pub fn plan_export(ckpt: &Checkpoint, ftype: FileType) -> Result<(GgufPlan, Vec<SourceTensor>)> {
    let sources = converter_order(ckpt)?;
    let dir = ckpt.dir.canonicalize().unwrap_or_else(|_| ckpt.dir.clone());
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let stop_ids = chatvec_format::modelfiles::eos_ids(&ckpt.dir, &ckpt.config)?;
    let info = ModelInfo { config: &ckpt.config, dir: &ckpt.dir, name: &name, fallback_template: None, stop_ids };
    Ok((plan(&info, &sources, ftype)?, sources))
}

/// Exports the model in `dir` to `out` as `ftype`.
pub fn export(
    dir: &Path,
    out: &Path,
    ftype: FileType,
    force: bool,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<ExportSummary> {
    let ckpt = Checkpoint::open(dir)?;
    let (plan, sources) = plan_export(&ckpt, ftype)?;
    let mut file = GgufFile::create(out, force, plan.file_bytes(), &[dir])?;
    progress.begin(plan.file_bytes());
    file.writer().write_all(&plan.header).map_err(|e| Error::io(out, e))?;
    let align = plan.meta.alignment();
    for t in &plan.tensors {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let mut enc = TensorEncoder::new(t, sources_dtype(t, &sources));
        match &t.origin {
            Origin::Computed(values) => {
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                enc.feed(&bytes, file.writer())?;
            }
            Origin::Input(i) => {
                let e = ckpt.get(&sources[*i].name).expect("planned from this checkpoint");
                let mut off = 0;
                while off < e.byte_len() {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Error::Interrupted);
                    }
                    let end = (off + READ_BYTES).min(e.byte_len());
                    ckpt.prefetch(e, end..end + READ_BYTES);
                    enc.feed(ckpt.bytes(e, off..end), file.writer())?;
                    ckpt.release(e, off..end);
                    off = end;
                }
            }
        }
        enc.finish(align, file.writer())?;
        progress.advance(t.info.bytes);
    }
    ckpt.check_unchanged()?;
    file.commit()?;
    progress.finish();
    Ok(ExportSummary { tensors: plan.tensors.len(), bytes: plan.file_bytes(), arch: plan.arch.name() })
}

/// The element type of the bytes fed for `t` (computed tensors are f32).
pub fn sources_dtype(t: &crate::plan::OutputTensor, sources: &[SourceTensor]) -> chatvec_format::DType {
    match t.origin {
        Origin::Input(i) => sources[i].dtype,
        Origin::Computed(_) => chatvec_format::DType::F32,
    }
}
