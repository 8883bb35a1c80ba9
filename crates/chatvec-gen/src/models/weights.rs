//! Where decoder weights come from: safetensors files of a model directory, or tensors built
//! in memory (benchmarks, tests).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::quantized::QTensor;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};

use crate::error::{GenError, Result};

/// A named-tensor store.
pub trait WeightSource {
    /// Whether a tensor of that name exists.
    fn contains(&self, name: &str) -> bool;
    /// The tensor in its stored dtype, checked against `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// The tensor in its stored ggml format, for sources that hold one (GGUF); None otherwise.
    fn qtensor(&self, _name: &str, _shape: &[usize]) -> Result<Option<QTensor>> {
        Ok(None)
    }
}

/// The `*.safetensors` files of a model directory, memory-mapped.
pub struct SafetensorsWeights {
    dir: PathBuf,
    files: MmapedSafetensors,
    names: HashSet<String>,
}

impl SafetensorsWeights {
    /// Maps the model's safetensors: the shards named by `model.safetensors.index.json`, else
    /// `model.safetensors`, else every `*.safetensors` except Mistral's `consolidated*` copies
    /// (those use another naming scheme).
    pub fn open(dir: &Path) -> Result<Self> {
        let paths = weight_files(dir)?;
        // SAFETY: the files are mapped read-only; like every safetensors reader we rely on them
        // not being truncated while the model is loaded (weights are copied out at load time).
        let files = unsafe { MmapedSafetensors::multi(&paths) }
            .map_err(|e| GenError::Weights { dir: dir.to_path_buf(), message: e.to_string() })?;
        let names = files.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(SafetensorsWeights { dir: dir.to_path_buf(), files, names })
    }
}

impl WeightSource for SafetensorsWeights {
    fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let err = |message: String| GenError::Weights { dir: self.dir.clone(), message };
        if !self.contains(name) {
            return Err(err(format!("missing tensor {name}")));
        }
        let t = self.files.load(name, &Device::Cpu).map_err(|e| err(format!("{name}: {e}")))?;
        check_shape(name, &t, shape).map_err(err)?;
        if let Ok(view) = self.files.get(name) {
            release_pages(view.data());
        }
        Ok(t)
    }
}

/// Unmaps the file pages behind `bytes` once the tensor has been copied out of them. Otherwise
/// every page read at load stays counted in the process's memory: an 8B model converted to q8_0
/// at load peaked at 15.5 GB (the 16 GB bf16 file's pages plus the 8.5 GB of q8_0 weights).
/// candle's `MmapedSafetensors` keeps its maps private, hence the raw `madvise` on the slice.
fn release_pages(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
        let (first, last) = (bytes.as_ptr() as usize, bytes.as_ptr() as usize + bytes.len());
        // Whole pages inside the slice only, so no other tensor's bytes are touched.
        let (start, end) = (first.div_ceil(page) * page, last / page * page);
        if end > start {
            // SAFETY: the range lies inside a read-only shared file mapping that stays mapped;
            // MADV_DONTNEED only drops the pages, and a later access re-reads the same file bytes.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
}

/// Tensors held in memory by name.
impl WeightSource for HashMap<String, Tensor> {
    fn contains(&self, name: &str) -> bool {
        self.contains_key(name)
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get(name).ok_or_else(|| GenError::InvalidArgument(format!("missing tensor {name}")))?;
        check_shape(name, t, shape).map_err(GenError::InvalidArgument)?;
        Ok(t.clone())
    }
}

fn check_shape(name: &str, t: &Tensor, shape: &[usize]) -> std::result::Result<(), String> {
    if t.dims() == shape {
        Ok(())
    } else {
        Err(format!("{name} has shape {:?}, config.json implies {:?}", t.dims(), shape))
    }
}

/// The weight files of `dir`, each checked by core's [`chatvec_core::resolve_shard`] so that an
/// index (or a symlink) cannot make generation read a file outside the model directory.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let inside = |named_in: &Path, name: &str| {
        chatvec_core::resolve_shard(dir, named_in, name).map_err(|e| GenError::NotAModel(e.to_string()))
    };
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| GenError::io(&index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| GenError::bad_file(&index, e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| GenError::bad_file(&index, "no `weight_map` object"))?;
        let mut files: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        files.sort_unstable();
        files.dedup();
        if files.is_empty() {
            return Err(GenError::bad_file(&index, "`weight_map` names no weight files"));
        }
        return files.iter().map(|f| inside(&index, f)).collect();
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![inside(&single, "model.safetensors")?]);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| GenError::io(dir, e))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .filter(|n| n.ends_with(".safetensors") && !n.starts_with("consolidated"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(GenError::NotAModel(format!("{}: no *.safetensors weights", dir.display())));
    }
    names.iter().map(|n| inside(&dir.join(n), n)).collect()
}
