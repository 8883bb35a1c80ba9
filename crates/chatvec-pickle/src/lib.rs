//! Lists the tensors of a PyTorch zip checkpoint (`pytorch_model.bin`, the format `torch.save`
//! has written since torch 1.6) without executing any pickle code.
//!
//! Such a file is a zip archive of *stored* (uncompressed) entries: `<archive>/data.pkl`, a pickle
//! of the state dict, and one entry `<archive>/data/<key>` per storage holding its raw
//! little-endian bytes. Each tensor in the pickle is a call to
//! `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, ...)` whose storage is
//! a persistent id `('storage', torch.BFloat16Storage, key, location, numel)`. Reading the pickle
//! tells us, for every tensor, which zip entry holds its bytes and where; because the entries are
//! stored, the bytes can then be read in place from an mmap of the file.
//!
//! # Why this is hand-written
//!
//! No Rust crate reads these files safely on untrusted input:
//! - candle-core's `pickle` module panics on short tuples (it calls `Vec::remove` on a rebuild
//!   call's arguments without checking their count), and silently skips every tensor it cannot
//!   rebuild (an untyped storage's `_rebuild_tensor_v3`, for one), so a tensor simply goes
//!   missing;
//! - `serde-pickle` has no persistent ids, which is how torch refers to every storage;
//! - `repugnant-pickle` is unmaintained.
//!
//! The interpreter here implements only the opcodes pickle emits for plain data, records every
//! `GLOBAL` as a *name* (never importing or calling anything), and gives meaning to a short
//! allow-list of callables (`collections.OrderedDict` and torch's tensor-rebuild functions). Any
//! other call yields an opaque value, which is an error if a tensor was expected there.
//! Untrusted input can at worst produce an [`Error`]: every length and offset is checked,
//! containers live in an arena (so sharing is cheap and nothing recurses on drop), and work and
//! memory are budgeted by the pickle's size.
#![deny(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

mod archive;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod opcode;
#[cfg(test)]
mod tests;
mod torch;
mod unpickle;

pub use error::{Error, FileError, PickleError, Result, StateDictError, TensorError, ZipError};

use archive::Zip;
use torch::Tensor;
use unpickle::{Obj, Unpickler, Value};

/// One tensor found in a PyTorch zip checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchTensor {
    /// The state-dict key, e.g. `model.layers.0.mlp.up_proj.weight`.
    pub name: String,
    /// safetensors-style dtype name: "BF16","F16","F32","F64","I64","I32","I16","I8","U8","BOOL"
    pub dtype: String,
    /// The tensor's shape (empty for a 0-dim scalar).
    pub shape: Vec<usize>,
    /// absolute byte offset of the tensor's first element within the .bin file
    pub data_start: usize,
    /// byte length (numel * element size)
    pub data_len: usize,
}

/// What a PyTorch zip checkpoint holds: its tensors, and the keys of values that are not tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchContents {
    /// The tensors, in the order of the pickled state dict.
    pub tensors: Vec<TorchTensor>,
    /// State-dict keys whose values are not tensors (numbers, strings, or calls that were
    /// recorded and never run, such as `os.system`); they are left out.
    pub skipped_keys: Vec<String>,
}

/// Lists the tensors of the zip checkpoint whose full bytes are `file` (an mmap of `path`,
/// `path` only for error messages). Every error is one line naming the file (and tensor).
///
/// Tensors come in the order of the pickled state dict. Only C-contiguous tensors are accepted;
/// tensors that share a storage (tied weights, views) are each listed with their own offsets.
/// Non-tensor values of the state dict (ints, strings, `None`) are skipped.
pub fn read_torch_zip(path: &Path, file: &[u8]) -> Result<Vec<TorchTensor>> {
    read_torch_zip_contents(path, file).map(|c| c.tensors)
}

/// Like [`read_torch_zip`], also naming the keys it skipped because their values are not tensors.
pub fn read_torch_zip_contents(path: &Path, file: &[u8]) -> Result<TorchContents> {
    let file_error = |reason: FileError| Error::File { path: path.to_path_buf(), reason };
    let mut zip = open_archive(file).map_err(file_error)?;
    let prefix = zip.archive_prefix().map_err(|e| file_error(e.into()))?;
    check_byte_order(&mut zip, &prefix, file).map_err(file_error)?;

    let entry = format!("{prefix}data.pkl");
    let pkl_range = zip.entry(&entry).map_err(|e| file_error(e.into()))?;
    let mut unpickler = Unpickler::new(&file[pkl_range]);
    let root = unpickler.load().map_err(|source| file_error(FileError::Pickle { entry: entry.clone(), source }))?;
    let not_a_state_dict = |problem| file_error(FileError::NotAStateDict { entry: entry.clone(), problem });
    let items = match root {
        Value::Obj(id) => match &unpickler.arena[id] {
            Obj::Dict(d) => &d.items,
            _ => return Err(not_a_state_dict(StateDictError::NotADict)),
        },
        Value::Tensor(_) => return Err(not_a_state_dict(StateDictError::SingleTensor)),
        _ => return Err(not_a_state_dict(StateDictError::NotADict)),
    };
    let mut reader = StateDictReader { path, prefix: &prefix, zip, storages: HashMap::new() };
    reader.read(&unpickler, items).map_err(|e| match e {
        Found::Bad(problem) => not_a_state_dict(problem),
        Found::Error(e) => e,
    })
}

/// The zip archive of `file`, or why `file` is not one.
fn open_archive(file: &[u8]) -> std::result::Result<Zip<'_>, FileError> {
    if !file.starts_with(b"PK\x03\x04") {
        return Err(if looks_legacy(file) { FileError::Legacy } else { FileError::NotZip });
    }
    Ok(Zip::open(file)?)
}

/// Refuses a big-endian checkpoint (its `byteorder` entry, when present, must say `little`).
fn check_byte_order(zip: &mut Zip, prefix: &str, file: &[u8]) -> std::result::Result<(), FileError> {
    if let Some(range) = zip.optional_entry(&format!("{prefix}byteorder"))? {
        let order = &file[range];
        if order.trim_ascii() != b"little" {
            return Err(FileError::ByteOrder(String::from_utf8_lossy(order).trim().to_string()));
        }
    }
    Ok(())
}

/// Why walking the state dict stopped: a dict that is not flat, or a tensor that cannot be read.
enum Found {
    Bad(StateDictError),
    Error(Error),
}

/// Walks the unpickled state dict, locating each tensor in its storage's zip entry.
struct StateDictReader<'a, 'f> {
    path: &'a Path,
    prefix: &'a str,
    zip: Zip<'f>,
    /// Storage key → its entry's byte range, looked up once per storage.
    storages: HashMap<Rc<str>, Range<usize>>,
}

impl StateDictReader<'_, '_> {
    fn read(&mut self, unpickler: &Unpickler, items: &[(Value, Value)]) -> std::result::Result<TorchContents, Found> {
        // Containers already looked into (one may be referenced under many keys).
        let mut checked = HashSet::new();
        let mut tensors = Vec::new();
        let mut skipped_keys = Vec::new();
        for (key, value) in items {
            match value {
                Value::Tensor(t) => {
                    let Value::Str(name) = key else {
                        return Err(Found::Bad(StateDictError::NonStringKey));
                    };
                    tensors.push(self.tensor(name, t).map_err(Found::Error)?);
                }
                // A torch global we do not know (quantized, sparse, wrapper-subclass tensors...)
                // stands where a tensor should be; other opaque values (numpy scalars, argparse
                // namespaces...) are metadata we may skip.
                Value::Opaque(global) if global.starts_with("torch") => {
                    return Err(Found::Error(
                        self.tensor_error(display_key(key), TensorError::UnsupportedGlobal(global.to_string())),
                    ));
                }
                Value::Obj(id) => {
                    if let (true, Obj::Dict(d)) = (checked.insert(*id), &unpickler.arena[*id]) {
                        if d.items.iter().any(|(_, v)| matches!(v, Value::Tensor(_))) {
                            return Err(Found::Bad(StateDictError::Nested(display_key(key))));
                        }
                    }
                    skipped_keys.push(display_key(key));
                }
                _ => skipped_keys.push(display_key(key)),
            }
        }
        Ok(TorchContents { tensors, skipped_keys })
    }

    /// Tensor `t` under `name`, placed within its storage's entry.
    fn tensor(&mut self, name: &str, t: &Tensor) -> Result<TorchTensor> {
        let entry = match self.storages.get(&t.storage.key) {
            Some(r) => r.clone(),
            None => {
                let entry_name = format!("{}data/{}", self.prefix, t.storage.key);
                let r = self.zip.entry(&entry_name).map_err(|e| self.tensor_error(name.to_string(), e.into()))?;
                self.storages.insert(t.storage.key.clone(), r.clone());
                r
            }
        };
        locate(name, t, entry).map_err(|e| self.tensor_error(name.to_string(), e))
    }

    fn tensor_error(&self, name: String, reason: TensorError) -> Error {
        Error::Tensor { name, path: self.path.to_path_buf(), reason }
    }
}

/// A dict key for messages.
fn display_key(key: &Value) -> String {
    match key {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        _ => "<non-string key>".to_string(),
    }
}

/// True when `file` looks like a pre-1.6 torch checkpoint: a bare pickle stream (it starts with
/// the PROTO opcode, then torch's magic number) or the even older tar archive.
fn looks_legacy(file: &[u8]) -> bool {
    let is_pickle = file.len() >= 2 && file[0] == opcode::PROTO && (1..=5).contains(&file[1]);
    let is_tar = file.get(257..262) == Some(b"ustar");
    is_pickle || is_tar
}

/// Places tensor `t` within its storage's zip entry `entry` (absolute byte range in the file).
fn locate(name: &str, t: &Tensor, entry: Range<usize>) -> std::result::Result<TorchTensor, TensorError> {
    let dtype = t.dtype.clone().map_err(TensorError::UnsupportedDtype)?;
    if t.shape.len() != t.stride.len() {
        return Err(TensorError::RankMismatch { shape: t.shape.len(), stride: t.stride.len() });
    }
    let too_big = || TensorError::Overflow { shape: t.shape.clone(), offset: t.offset };
    let numel = t.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(too_big)?;
    if numel > 0 && !is_contiguous(&t.shape, &t.stride) {
        return Err(TensorError::NonContiguous { shape: t.shape.clone(), stride: t.stride.clone() });
    }
    let el = dtype.size();
    let data_len = numel.checked_mul(el).ok_or_else(too_big)?;
    let byte_off = t.offset.checked_mul(el).ok_or_else(too_big)?;
    let end = byte_off.checked_add(data_len).ok_or_else(too_big)?;
    let entry_len = entry.end - entry.start;
    if end > entry_len {
        return Err(TensorError::PastStorage {
            storage: t.storage.key.to_string(),
            start: byte_off,
            end,
            len: entry_len,
        });
    }
    Ok(TorchTensor {
        name: name.to_string(),
        dtype: dtype.name().to_string(),
        shape: t.shape.clone(),
        data_start: entry.start + byte_off,
        data_len,
    })
}

/// torch's notion of contiguity: strides of size-1 dimensions do not matter.
fn is_contiguous(shape: &[usize], stride: &[i64]) -> bool {
    let mut expected: i64 = 1;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 {
            if s != expected {
                return false;
            }
            let Ok(d) = i64::try_from(d) else {
                return false;
            };
            let Some(e) = expected.checked_mul(d) else {
                return false;
            };
            expected = e;
        }
    }
    true
}
