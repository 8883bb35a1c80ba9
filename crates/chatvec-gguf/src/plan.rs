//! Everything about the output decided before a byte of tensor data is read: the metadata, and
//! each tensor's GGUF name, shape, element type, transform and offset. Both the export of a
//! checkpoint and a merge streamed straight to GGUF start here.

use std::path::Path;

use chatvec_format::{DType, Error, ModelConfig, Result};
use serde_json::Value as Json;

use crate::arch::{Arch, Transform};
use crate::format::{self, Metadata, TensorInfo, Value};
use crate::general;
use crate::types::{tensor_type, FileType, GgmlType, Role};
use crate::vocab::{write_vocab, VocabSource};

/// One input tensor: its HF name, shape and float type.
#[derive(Debug, Clone)]
pub struct SourceTensor {
    /// HF name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Element type of the bytes that will be fed.
    pub dtype: DType,
}

/// Where an output tensor's values come from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The input tensor at this index of the source list.
    Input(usize),
    /// Values computed from the config (`rope_freqs`).
    Computed(Vec<f32>),
}

/// One output tensor.
#[derive(Debug, Clone)]
pub struct OutputTensor {
    /// Name, shape, ggml type and size in the header.
    pub info: TensorInfo,
    /// Element type.
    pub ggml: GgmlType,
    /// What happens to the values on the way.
    pub transform: Transform,
    /// Where the values come from.
    pub origin: Origin,
    /// Offset from the start of the data section.
    pub offset: u64,
}

/// The whole file, minus tensor data.
#[derive(Debug, Clone)]
pub struct GgufPlan {
    /// The architecture.
    pub arch: Arch,
    /// Metadata in file order.
    pub meta: Metadata,
    /// Output tensors in file order.
    pub tensors: Vec<OutputTensor>,
    /// The encoded header (up to the data section).
    pub header: Vec<u8>,
}

impl GgufPlan {
    /// Total file size.
    pub fn file_bytes(&self) -> u64 {
        let align = self.meta.alignment();
        self.header.len() as u64 + self.tensors.iter().map(|t| format::pad(t.info.bytes, align)).sum::<u64>()
    }
}

/// The model the file describes: config, tokenizer files and a name.
pub struct ModelInfo<'a> {
    /// `config.json`.
    pub config: &'a ModelConfig,
    /// The directory with the tokenizer and generation config.
    pub dir: &'a Path,
    /// The name `general.name` and friends are derived from (the converter uses the directory's).
    pub name: &'a str,
    /// A chat template for when the tokenizer files have none.
    pub fallback_template: Option<Json>,
    /// Ids that end an answer in chatvec (generation config and config eos, a merge's chat eos);
    /// llama.cpp is made to stop on each.
    pub stop_ids: Vec<u32>,
}

/// Plans a GGUF file of `sources` (in the order their data will come) for `model` as `ftype`.
pub fn plan(model: &ModelInfo, sources: &[SourceTensor], ftype: FileType) -> Result<GgufPlan> {
    let arch = Arch::of(model.config)?;
    let n_layers = model.config.get("num_hidden_layers").and_then(Json::as_u64).unwrap_or(0) as usize;
    let mut tensors = vec![];
    let mut tied = true;
    for s in sources {
        tied &= arch.gguf_name(&s.name)?.as_deref() != Some("output.weight");
    }
    if let Some(freqs) = arch.rope_freqs(model.config) {
        let shape = vec![freqs.len()];
        tensors.push(output("rope_freqs.weight", shape, GgmlType::F32, Transform::None, Origin::Computed(freqs)));
    }
    for (i, s) in sources.iter().enumerate() {
        let Some(name) = arch.gguf_name(&s.name)? else { continue };
        let layer = name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|n| n.parse().ok());
        let ggml = tensor_type(ftype, &s.shape, Role { name: &name, layer, n_layers, tied });
        let transform = arch.transform(&s.name, model.config);
        if let Transform::Permute { heads } = transform {
            let rows = s.shape[0];
            if heads == 0 || !rows.is_multiple_of(2 * heads) {
                return Err(Error::tensor(&s.name, format!("{rows} rows do not split into {heads} heads of pairs")));
            }
        }
        tensors.push(output(&name, s.shape.clone(), ggml, transform, Origin::Input(i)));
    }
    let total_params: u64 = tensors.iter().map(|t| t.info.shape.iter().product::<usize>() as u64).sum();
    let meta = metadata(arch, model, ftype, total_params)?;
    let infos: Vec<TensorInfo> = tensors.iter().map(|t| t.info.clone()).collect();
    let (header, offsets) = format::header(&meta, &infos);
    for (t, off) in tensors.iter_mut().zip(offsets) {
        t.offset = off;
    }
    Ok(GgufPlan { arch, meta, tensors, header })
}

fn output(name: &str, shape: Vec<usize>, ggml: GgmlType, transform: Transform, origin: Origin) -> OutputTensor {
    let bytes = ggml.bytes(shape.iter().product());
    OutputTensor {
        info: TensorInfo { name: name.into(), shape, ggml_type: ggml.id(), bytes },
        ggml,
        transform,
        origin,
        offset: 0,
    }
}

fn metadata(arch: Arch, model: &ModelInfo, ftype: FileType, total_params: u64) -> Result<Metadata> {
    let mut meta = Metadata::default();
    meta.set("general.architecture", Value::str(arch.name()));
    meta.set("general.type", Value::str("model"));
    let gen_path = model.dir.join("generation_config.json");
    let gen: Option<Json> = match std::fs::read_to_string(&gen_path) {
        Ok(t) => Some(serde_json::from_str(&t).map_err(|e| Error::json(&gen_path, e))?),
        Err(_) => None,
    };
    general::write_sampling(gen.as_ref(), &mut meta);
    general::write_names(model.name, total_params, &mut meta);
    arch.write_params(model.config, ftype.id(), &mut meta)?;
    meta.set("general.quantization_version", Value::U32(2));
    let src =
        VocabSource { dir: model.dir, config: &model.config.raw, fallback_template: model.fallback_template.clone() };
    write_vocab(arch, &src, &mut meta)?;
    crate::vocab::ensure_stop_ids(&mut meta, &model.stop_ids);
    Ok(meta)
}
