//! A Hugging Face model directory opened for streaming: its config, and every tensor's dtype, shape
//! and byte range in memory-mapped weight files (sharded or not, safetensors or legacy PyTorch).
//!
//! Nothing is read until asked for, and [`Checkpoint::release`] drops pages already used, so the
//! resident memory of a pass over the model stays at a chunk or two, not the model's size.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Advice, Mmap, UncheckedAdvice};
use sha2::{Digest, Sha256};

use crate::config::ModelConfig;
use crate::error::WeightMapProblem;
use crate::{DType, Error, Result};

/// The files a weight format is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// `model.safetensors` or shards with `model.safetensors.index.json`.
    Safetensors,
    /// `pytorch_model.bin` or shards with `pytorch_model.bin.index.json`.
    Torch,
}

/// One tensor of a checkpoint: where its bytes are and what they mean.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// The tensor's name, e.g. `model.layers.0.mlp.up_proj.weight`.
    pub name: String,
    /// The safetensors dtype name (`BF16`, `I64`, ...), kept for copying non-float tensors.
    pub dtype_name: String,
    /// The float type, or `None` for integer / bool / 8-bit tensors, which are only copied.
    pub dtype: Option<DType>,
    /// The shape.
    pub shape: Vec<usize>,
    file: usize,
    start: usize,
    len: usize,
}

impl TensorEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Size in bytes.
    pub fn byte_len(&self) -> usize {
        self.len
    }
}

struct WeightFile {
    path: PathBuf,
    map: Arc<WatchedMap>,
    /// The file as it was when opened, to tell that it changed before an output is committed.
    stamp: FileStamp,
    /// What was odd about the file but did not stop reading it (for the run's summary).
    warning: Option<String>,
}

/// A weight file's map, registered with the SIGBUS handler of [`crate::fault`] while alive.
struct WatchedMap {
    // Declared first so that it is dropped (unregistered) before the map is unmapped.
    _guard: crate::fault::MapGuard,
    map: Mmap,
}

impl std::ops::Deref for WatchedMap {
    type Target = Mmap;
    fn deref(&self) -> &Mmap {
        &self.map
    }
}

/// What identifies a file's contents without reading them: size, modification time, and the
/// inode (a file replaced by a rename has another).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    mtime: (i64, i64),
    ino: (u64, u64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp { len: meta.len(), mtime: (meta.mtime(), meta.mtime_nsec()), ino: (meta.dev(), meta.ino()) }
    }

    /// How `now` differs from `self`, in words; `None` when it does not.
    fn change(&self, now: &FileStamp) -> Option<String> {
        if now.ino != self.ino {
            Some("it was replaced by another file".into())
        } else if now.len != self.len {
            Some(format!("its size went from {} to {} bytes", self.len, now.len))
        } else if now.mtime != self.mtime {
            Some("it was rewritten (its modification time changed)".into())
        } else {
            None
        }
    }
}

/// Bytes of a weight file that stay mapped while held ([`Checkpoint::mapped`]); when dropped,
/// their pages leave this process's memory (they stay in the page cache).
pub struct MappedBytes {
    map: Arc<WatchedMap>,
    range: Range<usize>,
}

impl std::ops::Deref for MappedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

impl Drop for MappedBytes {
    fn drop(&mut self) {
        // SAFETY: as in `Checkpoint::release`: a read-only file mapping re-reads the same file
        // contents after MADV_DONTNEED.
        let _ =
            unsafe { self.map.unchecked_advise_range(UncheckedAdvice::DontNeed, self.range.start, self.range.len()) };
    }
}

/// A model directory opened for streaming reads.
pub struct Checkpoint {
    /// The model directory.
    pub dir: PathBuf,
    /// Its `config.json`.
    pub config: ModelConfig,
    /// How the weights are stored.
    pub format: WeightFormat,
    files: Vec<WeightFile>,
    tensors: Vec<TensorEntry>,
    by_name: HashMap<String, usize>,
}

/// Names under which models store the input embedding that a tied `lm_head` shares.
const EMBED_NAMES: &[&str] = &[
    "model.embed_tokens.weight",
    "model.language_model.embed_tokens.weight",
    "transformer.wte.weight",
    "gpt_neox.embed_in.weight",
    "model.tok_embeddings.weight",
    "embed_tokens.weight",
];

impl Checkpoint {
    /// Opens `dir`: reads `config.json`, the index if any, and every weight file's header.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::NoModelDir { dir: dir.to_path_buf() });
        }
        let config = ModelConfig::load(dir)?;
        let (format, file_names, index) = find_weight_files(dir)?;
        let mut ckpt = Checkpoint {
            dir: dir.to_path_buf(),
            config,
            format,
            files: Vec::new(),
            tensors: Vec::new(),
            by_name: HashMap::new(),
        };
        for path in file_names {
            ckpt.add_file(&path)?;
        }
        if ckpt.tensors.is_empty() {
            return Err(Error::NoTensors { dir: dir.to_path_buf() });
        }
        if let Some((index_path, weight_map)) = index {
            for (tensor, file) in weight_map {
                let found = ckpt.by_name.get(&tensor).map(|&i| &ckpt.tensors[i]);
                let in_file = found.is_some_and(|t| ckpt.files[t.file].path == dir.join(&file));
                if !in_file {
                    return Err(Error::TensorNotInListedFile { index: index_path, tensor, file });
                }
            }
        }
        Ok(ckpt)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let stamp = FileStamp::of(&file.metadata().map_err(|e| Error::io(path, e))?);
        // SAFETY: the map is read-only; chatvec never writes its inputs. A file truncated by another
        // process while mapped faults on reading; `crate::fault` turns that into an error line.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let _ = map.advise(Advice::Sequential);
        let idx = self.files.len();
        let (entries, warning) = match self.format {
            WeightFormat::Safetensors => (safetensors_entries(path, &map, idx)?, None),
            WeightFormat::Torch => torch_entries(path, &map, idx)?,
        };
        let map = WatchedMap { _guard: crate::fault::guard_map(map.as_ptr(), map.len(), path), map };
        self.files.push(WeightFile { path: path.to_path_buf(), map: Arc::new(map), stamp, warning });
        for e in entries {
            if self.by_name.contains_key(&e.name) {
                return Err(Error::DuplicateTensor { path: path.to_path_buf(), tensor: e.name });
            }
            self.by_name.insert(e.name.clone(), self.tensors.len());
            self.tensors.push(e);
        }
        Ok(())
    }

    /// Refuses, naming the file, when a weight file is no longer as it was when opened (another
    /// size, modification time or inode): what was read from it may mix old and new bytes.
    /// Checked before an output is moved into place.
    pub fn check_unchanged(&self) -> Result<()> {
        for f in &self.files {
            let now = std::fs::metadata(&f.path).map(|m| FileStamp::of(&m));
            let change = match now {
                Ok(now) => f.stamp.change(&now),
                Err(e) => Some(format!("it can no longer be read ({e})")),
            };
            if let Some(what) = change {
                return Err(Error::InputChanged { path: f.path.clone(), what });
            }
        }
        Ok(())
    }

    /// What was odd about the weight files but did not stop reading them, one line each.
    pub fn warnings(&self) -> Vec<String> {
        self.files.iter().filter_map(|f| f.warning.clone()).collect()
    }

    /// Every tensor in storage order (file by file, by offset).
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// The tensor stored under `name`.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Like [`get`](Self::get), but a missing `lm_head.weight` of a model with tied embeddings
    /// resolves to its input embedding, which is what the model computes with.
    pub fn get_or_tied(&self, name: &str) -> Option<&TensorEntry> {
        self.get(name).or_else(|| {
            if !self.ties_lm_head() || !name.ends_with("lm_head.weight") {
                return None;
            }
            EMBED_NAMES.iter().find_map(|e| self.get(e))
        })
    }

    /// Whether `lm_head` is tied to the input embedding (config says so, and no `lm_head` stored).
    pub fn ties_lm_head(&self) -> bool {
        // transformers' PretrainedConfig defaults to tying when the key is absent.
        self.config.tie_word_embeddings().unwrap_or(true)
            && !self.tensors.iter().any(|t| t.name.ends_with("lm_head.weight"))
    }

    /// The weight file holding `t`.
    pub fn file_of(&self, t: &TensorEntry) -> &Path {
        &self.files[t.file].path
    }

    /// The bytes `range` (relative to the tensor's start) of tensor `t`.
    pub fn bytes(&self, t: &TensorEntry, range: Range<usize>) -> &[u8] {
        debug_assert!(range.end <= t.len);
        &self.files[t.file].map[t.start + range.start..t.start + range.end]
    }

    /// The bytes `range` of tensor `t` as a value another thread can hold (the shard writer
    /// writes copied tensors straight from the map this way); dropping it releases their pages
    /// as [`release`](Self::release) does.
    pub fn mapped(&self, t: &TensorEntry, range: Range<usize>) -> MappedBytes {
        debug_assert!(range.end <= t.len);
        MappedBytes { map: Arc::clone(&self.files[t.file].map), range: t.start + range.start..t.start + range.end }
    }

    /// Drops the pages of `range` of `t` from this process's memory (they stay in the page cache),
    /// so a streaming pass does not accumulate the whole model as resident memory.
    pub fn release(&self, t: &TensorEntry, range: Range<usize>) {
        let map = &self.files[t.file].map;
        // SAFETY: the map is a read-only file mapping: after MADV_DONTNEED a later access re-reads
        // the same file contents, so no Rust reference can observe changed data.
        let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, t.start + range.start, range.len()) };
    }

    /// Asks the kernel to start reading `range` of `t` in the background, so the disk works while
    /// the current block is computed.
    pub fn prefetch(&self, t: &TensorEntry, range: Range<usize>) {
        let end = range.end.min(t.len);
        if range.start < end {
            let _ = self.files[t.file].map.advise_range(Advice::WillNeed, t.start + range.start, end - range.start);
        }
    }

    /// Total bytes of all tensors.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.len as u64).sum()
    }

    /// SHA-256 of `config.json`, to record which model a vector came from.
    pub fn config_sha256(&self) -> String {
        let bytes = std::fs::read(self.dir.join("config.json")).unwrap_or_default();
        Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
    }
}

type IndexMap = Option<(PathBuf, Vec<(String, String)>)>;

/// Finds the weight files of `dir`, preferring safetensors, and the index's weight map if sharded.
fn find_weight_files(dir: &Path) -> Result<(WeightFormat, Vec<PathBuf>, IndexMap)> {
    for (format, single, index) in [
        (WeightFormat::Safetensors, "model.safetensors", "model.safetensors.index.json"),
        (WeightFormat::Torch, "pytorch_model.bin", "pytorch_model.bin.index.json"),
    ] {
        let index_path = dir.join(index);
        if index_path.is_file() {
            let weight_map = read_index(&index_path)?;
            let mut files: Vec<&str> = weight_map.iter().map(|(_, f)| f.as_str()).collect();
            files.sort_unstable();
            files.dedup();
            let paths = files.iter().map(|f| resolve_shard(dir, &index_path, f)).collect::<Result<_>>()?;
            return Ok((format, paths, Some((index_path, weight_map))));
        }
        if dir.join(single).is_file() {
            return Ok((format, vec![resolve_shard(dir, &dir.join(single), single)?], None));
        }
    }
    Err(Error::NoWeights { dir: dir.to_path_buf() })
}

/// The one rule for a weight file named by a model directory (in its index, or found in it):
/// the name is relative, has no `..`, and the file lies inside `dir` once symlinks are resolved.
/// A Hugging Face cache snapshot (`models--org--name/snapshots/REV/`) may link into the
/// `blobs/` folder of the same repository. `named_in` is the file that named it, for messages.
pub fn resolve_shard(dir: &Path, named_in: &Path, name: &str) -> Result<PathBuf> {
    use std::path::Component;
    let refuse =
        |why: &'static str| Err(Error::BadShardName { named_in: named_in.to_path_buf(), name: name.to_string(), why });
    let rel = Path::new(name);
    if name.is_empty() || name.contains('\\') || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return refuse("which is not a plain relative path inside the model directory");
    }
    let path = dir.join(rel);
    let Ok(real) = path.canonicalize() else {
        return refuse("which is missing");
    };
    let root = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let inside = real.starts_with(&root) || hub_blobs(&root).is_some_and(|b| real.starts_with(b));
    if !inside {
        return refuse("which lies outside the model directory");
    }
    if !real.is_file() {
        return refuse("which is not a file");
    }
    Ok(path)
}

/// The `blobs/` folder a hub cache snapshot directory's files may link into.
fn hub_blobs(snapshot: &Path) -> Option<PathBuf> {
    let snapshots = snapshot.parent()?;
    let repo = snapshots.parent()?;
    let is_repo = repo.file_name()?.to_str()?.starts_with("models--");
    (snapshots.file_name()? == "snapshots" && is_repo).then(|| repo.join("blobs"))
}

fn read_index(path: &Path) -> Result<Vec<(String, String)>> {
    let text = crate::metadata::read_metadata(path)?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::json(path, e))?;
    let bad = |problem| Error::BadWeightMap { path: path.to_path_buf(), problem };
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad(WeightMapProblem::Missing))?;
    if map.is_empty() {
        return Err(bad(WeightMapProblem::Empty));
    }
    map.iter()
        .map(|(k, f)| {
            let f = f.as_str().ok_or_else(|| bad(WeightMapProblem::NotAFileName { tensor: k.clone() }))?;
            Ok((k.clone(), f.to_string()))
        })
        .collect()
}

/// The tensors of a PyTorch zip checkpoint, and a warning naming keys whose values are not tensors.
fn torch_entries(path: &Path, map: &[u8], file: usize) -> Result<(Vec<TensorEntry>, Option<String>)> {
    let contents = chatvec_pickle::read_torch_zip_contents(path, map)?;
    let keys = &contents.skipped_keys;
    let warning = (!keys.is_empty()).then(|| {
        let shown = keys.iter().take(10).map(String::as_str).collect::<Vec<_>>().join(", ");
        let more = if keys.len() > 10 { format!(" and {} more", keys.len() - 10) } else { String::new() };
        format!(
            "{}: skipped {} state-dict entries that are not tensors (never executed): {shown}{more}",
            path.display(),
            keys.len()
        )
    });
    let entries = contents
        .tensors
        .into_iter()
        .map(|t| TensorEntry {
            dtype: DType::parse(&t.dtype),
            dtype_name: t.dtype,
            name: t.name,
            shape: t.shape,
            file,
            start: t.data_start,
            len: t.data_len,
        })
        .collect();
    Ok((entries, warning))
}

/// The shard files an index names, sorted, each once; a name that is not a plain file name in the
/// model's folder is refused.
pub fn index_files(index_path: &Path) -> Result<Vec<String>> {
    let mut files: Vec<String> = read_index(index_path)?.into_iter().map(|(_, f)| f).collect();
    files.sort();
    files.dedup();
    if let Some(f) = files.iter().find(|f| f.contains(['/', '\\']) || f.is_empty() || *f == "." || *f == "..") {
        let why = "which is not a file in the model's folder";
        return Err(Error::BadShardName { named_in: index_path.to_path_buf(), name: f.clone(), why });
    }
    Ok(files)
}

fn safetensors_entries(path: &Path, map: &[u8], file: usize) -> Result<Vec<TensorEntry>> {
    let (n, meta) = safetensors::SafeTensors::read_metadata(map)
        .map_err(|problem| Error::SafetensorsHeader { path: path.to_path_buf(), problem })?;
    let data_start = 8 + n;
    let mut out: Vec<TensorEntry> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| TensorEntry {
            dtype: DType::from_safetensors(info.dtype),
            dtype_name: format!("{:?}", info.dtype),
            shape: info.shape.clone(),
            file,
            start: data_start + info.data_offsets.0,
            len: info.data_offsets.1 - info.data_offsets.0,
            name,
        })
        .collect();
    out.sort_by_key(|t| t.start);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llama-tiny").join(name)
    }

    #[test]
    fn sharded_and_single_file_models_list_the_same_tensors() {
        let base = Checkpoint::open(&fixture("base")).unwrap();
        let target = Checkpoint::open(&fixture("target")).unwrap();
        let mut a: Vec<_> = base.tensors().iter().map(|t| (&t.name, &t.shape)).collect();
        let mut b: Vec<_> = target.tensors().iter().map(|t| (&t.name, &t.shape)).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        assert_eq!(base.files.len(), 4);
        let emb = base.get("model.embed_tokens.weight").unwrap();
        assert_eq!(emb.shape, vec![2008, 64]);
        assert_eq!(emb.dtype, Some(DType::BF16));
        assert_eq!(base.bytes(emb, 0..emb.byte_len()).len(), 2008 * 64 * 2);
    }

    #[test]
    fn untied_model_has_no_alias() {
        let base = Checkpoint::open(&fixture("base")).unwrap();
        assert!(!base.ties_lm_head());
    }
}
