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
//! Why this is hand-written: no well-kept Rust crate reads torch checkpoints on its own. candle-core
//! has a reader, but it drags in candle's whole tensor stack and the core must stay free of candle;
//! `serde-pickle` does not handle persistent ids (which is how torch refers to storages) and would
//! not let us refuse arbitrary globals. The interpreter below implements only the opcodes pickle
//! emits for plain data, records every `GLOBAL` as a *name* (never importing or calling anything),
//! and gives meaning to a short allow-list of callables (`collections.OrderedDict` and torch's
//! tensor-rebuild functions). Any other call yields an opaque value, which is an error if a tensor
//! was expected there. Untrusted input can at worst produce an error: every length and offset is
//! checked, containers live in an arena (so sharing is cheap and nothing recurses on drop), and no
//! allocation is sized by an unchecked number from the file.

use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use crate::{Error, Result};

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

/// The message for a checkpoint written by torch < 1.6 (or with `_use_new_zipfile_serialization=False`).
const LEGACY_MSG: &str =
    "legacy (pre-1.6) torch format not supported; re-save with torch>=1.6 or convert to safetensors";

/// Lists the tensors of the zip checkpoint whose full bytes are `file` (an mmap of `path`,
/// `path` only for error messages). Every error is a `crate::Error`, one line, naming the file
/// (and tensor).
///
/// Tensors come in the order of the pickled state dict. Only C-contiguous tensors are accepted;
/// tensors that share a storage (tied weights, views) are each listed with their own offsets.
/// Non-tensor values of the state dict (ints, strings, `None`) are skipped.
pub fn read_torch_zip(path: &Path, file: &[u8]) -> Result<Vec<TorchTensor>> {
    read_torch_zip_contents(path, file).map(|c| c.tensors)
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

/// Like [`read_torch_zip`], also naming the keys it skipped because their values are not tensors.
pub fn read_torch_zip_contents(path: &Path, file: &[u8]) -> Result<TorchContents> {
    let fmt = |msg: String| Error::format(path, msg);
    if !file.starts_with(b"PK\x03\x04") {
        if looks_legacy(file) {
            return Err(fmt(LEGACY_MSG.to_string()));
        }
        return Err(fmt("not a PyTorch checkpoint (no zip signature at the start)".to_string()));
    }
    let mut zip = Zip::open(file).map_err(fmt)?;
    let prefix = zip.archive_prefix().map_err(fmt)?;

    if let Some(range) = zip.optional_entry(&format!("{prefix}byteorder")).map_err(fmt)? {
        let order = &file[range];
        if order.trim_ascii() != b"little" {
            return Err(fmt(format!(
                "byte order {:?} not supported (only little-endian checkpoints)",
                String::from_utf8_lossy(order).trim()
            )));
        }
    }

    let pkl_name = format!("{prefix}data.pkl");
    let pkl_range = zip.entry(&pkl_name).map_err(fmt)?;
    let mut unpickler = Unpickler::new(&file[pkl_range]);
    let root = unpickler.load().map_err(|e| fmt(format!("{pkl_name}: {e}")))?;

    let items = match root {
        Value::Obj(id) => match &unpickler.arena[id] {
            Obj::Dict(d) => &d.items,
            _ => return Err(fmt(format!("{pkl_name}: the pickled object is not a dict of tensors"))),
        },
        Value::Tensor(_) => {
            return Err(fmt(format!("{pkl_name}: the pickled object is a single tensor, not a state dict")))
        }
        _ => return Err(fmt(format!("{pkl_name}: the pickled object is not a dict of tensors"))),
    };

    let mut storages: HashMap<Rc<str>, Range<usize>> = HashMap::new();
    // Containers already looked into (one may be referenced under many keys).
    let mut checked = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut skipped_keys = Vec::new();
    for (key, value) in items {
        match value {
            Value::Tensor(t) => {
                let Value::Str(name) = key else {
                    return Err(fmt(format!("{pkl_name}: a tensor is stored under a non-string key")));
                };
                let entry = match storages.get(&t.storage.key) {
                    Some(r) => r.clone(),
                    None => {
                        let entry_name = format!("{prefix}data/{}", t.storage.key);
                        let r = zip
                            .entry(&entry_name)
                            .map_err(|e| Error::tensor(&**name, format!("{e} in {}", path.display())))?;
                        storages.insert(t.storage.key.clone(), r.clone());
                        r
                    }
                };
                out.push(
                    locate(name, t, entry).map_err(|e| Error::tensor(&**name, format!("{e} in {}", path.display())))?,
                );
            }
            // A torch global we do not know (quantized, sparse, wrapper-subclass tensors...)
            // stands where a tensor should be; other opaque values (numpy scalars, argparse
            // namespaces...) are metadata we may skip.
            Value::Opaque(global) if global.starts_with("torch") => {
                return Err(Error::tensor(
                    display_key(key),
                    format!("unsupported pickle global {global} in {}", path.display()),
                ));
            }
            Value::Obj(id) => {
                if let (true, Obj::Dict(d)) = (checked.insert(*id), &unpickler.arena[*id]) {
                    if d.items.iter().any(|(_, v)| matches!(v, Value::Tensor(_))) {
                        return Err(fmt(format!(
                            "{pkl_name}: value {:?} is a nested dict of tensors (a training \
                             checkpoint?); expected a flat state dict of name -> tensor",
                            display_key(key)
                        )));
                    }
                }
                skipped_keys.push(display_key(key));
            }
            _ => skipped_keys.push(display_key(key)),
        }
    }
    Ok(TorchContents { tensors: out, skipped_keys })
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
    let is_pickle = file.len() >= 2 && file[0] == 0x80 && (1..=5).contains(&file[1]);
    let is_tar = file.get(257..262) == Some(b"ustar");
    is_pickle || is_tar
}

/// Places tensor `t` within its storage's zip entry `entry` (absolute byte range in the file).
fn locate(name: &str, t: &Tensor, entry: Range<usize>) -> std::result::Result<TorchTensor, String> {
    let dtype = match &t.dtype {
        Ok(d) => *d,
        Err(what) => return Err(format!("unsupported dtype {what}")),
    };
    if t.shape.len() != t.stride.len() {
        return Err(format!("size has {} dims but stride has {}", t.shape.len(), t.stride.len()));
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {:?} overflows", t.shape))?;
    if numel > 0 && !is_contiguous(&t.shape, &t.stride) {
        return Err(format!(
            "non-contiguous tensor (shape {:?}, stride {:?}) not supported; save it with \
             .contiguous() or convert to safetensors",
            t.shape, t.stride
        ));
    }
    let el = dtype.size();
    let too_big = || format!("tensor of shape {:?} at storage offset {} overflows", t.shape, t.offset);
    let data_len = numel.checked_mul(el).ok_or_else(too_big)?;
    let byte_off = t.offset.checked_mul(el).ok_or_else(too_big)?;
    let end = byte_off.checked_add(data_len).ok_or_else(too_big)?;
    let entry_len = entry.end - entry.start;
    if end > entry_len {
        return Err(format!(
            "needs bytes {byte_off}..{end} of storage {} but its zip entry holds only {entry_len} \
             bytes (truncated or corrupt file)",
            t.storage.key
        ));
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

// ---------------------------------------------------------------------------------------------
// Zip access

/// The zip archive over the mmapped file, handing out byte ranges of stored entries.
struct Zip<'a> {
    archive: zip::ZipArchive<Cursor<&'a [u8]>>,
    len: usize,
}

impl<'a> Zip<'a> {
    fn open(file: &'a [u8]) -> std::result::Result<Self, String> {
        let archive = zip::ZipArchive::new(Cursor::new(file))
            .map_err(|e| format!("not a readable zip archive ({e}); is the file truncated?"))?;
        Ok(Zip { archive, len: file.len() })
    }

    /// The folder every entry lives in (`archive/` for current torch, the file's stem for
    /// older), found from the one `<folder>/data.pkl` entry; returned with its trailing slash.
    fn archive_prefix(&self) -> std::result::Result<String, String> {
        let mut found: Vec<String> = Vec::new();
        for raw in self.archive.file_names_raw() {
            let Ok(name) = std::str::from_utf8(raw) else {
                continue;
            };
            if let Some(dir) = name.strip_suffix("/data.pkl") {
                if !dir.is_empty() && !dir.contains('/') {
                    found.push(format!("{dir}/"));
                }
            } else if name == "data.pkl" {
                found.push(String::new());
            }
        }
        match found.len() {
            0 => Err("zip archive has no data.pkl entry; not a torch.save checkpoint".to_string()),
            1 => Ok(found.pop().unwrap_or_default()),
            _ => Err(format!(
                "zip archive has {} data.pkl entries ({}); cannot tell which is the checkpoint",
                found.len(),
                found.join(", ")
            )),
        }
    }

    /// The absolute byte range of stored entry `name`, or `None` if there is no such entry.
    fn optional_entry(&mut self, name: &str) -> std::result::Result<Option<Range<usize>>, String> {
        let Some(idx) = self.archive.index_for_name(name) else {
            return Ok(None);
        };
        let len = self.len;
        let f = self.archive.by_index_raw(idx).map_err(|e| format!("zip entry {name}: {e}; is the file truncated?"))?;
        if f.compression() != zip::CompressionMethod::Stored {
            return Err(format!(
                "zip entry {name} is compressed (method {}); torch writes uncompressed entries, \
                 re-save with torch.save or convert to safetensors",
                f.compression()
            ));
        }
        if f.encrypted() {
            return Err(format!("zip entry {name} is encrypted"));
        }
        if f.compressed_size() != f.size() {
            return Err(format!(
                "zip entry {name} is stored but its sizes disagree ({} vs {})",
                f.compressed_size(),
                f.size()
            ));
        }
        let start = f.data_start().ok_or_else(|| format!("zip entry {name}: cannot locate its data"))?;
        let end = start.checked_add(f.size());
        match (usize::try_from(start), end.and_then(|e| usize::try_from(e).ok())) {
            (Ok(s), Some(e)) if e <= len => Ok(Some(s..e)),
            _ => Err(format!("zip entry {name} runs past the end of the file ({} bytes); the file is truncated", len)),
        }
    }

    /// Like [`Zip::optional_entry`] but a missing entry is an error.
    fn entry(&mut self, name: &str) -> std::result::Result<Range<usize>, String> {
        self.optional_entry(name)?.ok_or_else(|| format!("zip archive has no entry {name}"))
    }
}

// ---------------------------------------------------------------------------------------------
// The pickle interpreter

/// Element types a torch checkpoint may hold that we can hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TorchDType {
    BF16,
    F16,
    F32,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl TorchDType {
    fn size(self) -> usize {
        match self {
            TorchDType::F64 | TorchDType::I64 => 8,
            TorchDType::F32 | TorchDType::I32 => 4,
            TorchDType::BF16 | TorchDType::F16 | TorchDType::I16 => 2,
            TorchDType::I8 | TorchDType::U8 | TorchDType::Bool => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            TorchDType::BF16 => "BF16",
            TorchDType::F16 => "F16",
            TorchDType::F32 => "F32",
            TorchDType::F64 => "F64",
            TorchDType::I64 => "I64",
            TorchDType::I32 => "I32",
            TorchDType::I16 => "I16",
            TorchDType::I8 => "I8",
            TorchDType::U8 => "U8",
            TorchDType::Bool => "BOOL",
        }
    }

    /// From a legacy typed-storage class name (`BFloat16Storage`).
    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "BFloat16Storage" => TorchDType::BF16,
            "HalfStorage" => TorchDType::F16,
            "FloatStorage" => TorchDType::F32,
            "DoubleStorage" => TorchDType::F64,
            "LongStorage" => TorchDType::I64,
            "IntStorage" => TorchDType::I32,
            "ShortStorage" => TorchDType::I16,
            "CharStorage" => TorchDType::I8,
            "ByteStorage" => TorchDType::U8,
            "BoolStorage" => TorchDType::Bool,
            _ => return None,
        })
    }

    /// From a dtype global (`torch.bfloat16`).
    fn from_dtype_global(global: &str) -> Option<Self> {
        Some(match global.strip_prefix("torch.")? {
            "bfloat16" => TorchDType::BF16,
            "float16" | "half" => TorchDType::F16,
            "float32" | "float" => TorchDType::F32,
            "float64" | "double" => TorchDType::F64,
            "int64" | "long" => TorchDType::I64,
            "int32" | "int" => TorchDType::I32,
            "int16" | "short" => TorchDType::I16,
            "int8" => TorchDType::I8,
            "uint8" => TorchDType::U8,
            "bool" => TorchDType::Bool,
            _ => return None,
        })
    }
}

/// What a storage's persistent id says about its elements.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StorageKind {
    /// A legacy typed storage (`torch.FloatStorage`...): the tensor's dtype.
    Typed(TorchDType),
    /// `torch.UntypedStorage`: bytes, the dtype comes with the tensor (`_rebuild_tensor_v3`).
    Untyped,
    /// A storage class we cannot read (complex, quantized...): its global name.
    Unsupported(Rc<str>),
}

/// A storage named by a persistent id: the zip entry `data/<key>`.
#[derive(Debug)]
struct Storage {
    kind: StorageKind,
    key: Rc<str>,
}

/// A tensor rebuilt (on paper) by one of torch's `_rebuild_tensor*` functions.
#[derive(Debug)]
struct Tensor {
    storage: Rc<Storage>,
    /// The element type, or the name of the unsupported one.
    dtype: std::result::Result<TorchDType, String>,
    /// Storage offset in elements.
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<i64>,
}

/// A pickle value. Containers live in the unpickler's arena and are referred to by index, as
/// Python refers to objects, so memo sharing and mutation after memoization behave as in Python.
#[derive(Debug, Clone)]
enum Value {
    None,
    /// A bool (its value is never needed).
    Bool,
    Int(i64),
    /// An integer too large for i64 (kept only as a marker).
    BigInt,
    /// A float (its value is never needed).
    Float,
    Str(Rc<str>),
    /// A bytes object (its contents are never needed).
    Bytes,
    /// A `module.name` reference, recorded and never resolved.
    Global(Rc<str>),
    /// A tuple, list or dict in the arena.
    Obj(usize),
    Storage(Rc<Storage>),
    Tensor(Rc<Tensor>),
    /// The result of calling a callable we do not interpret: the callable's name.
    Opaque(Rc<str>),
}

/// A dict keeping insertion order, with an index on its string keys.
#[derive(Debug, Default)]
struct Dict {
    items: Vec<(Value, Value)>,
    by_str: HashMap<Rc<str>, usize>,
}

impl Dict {
    /// Sets `key` to `value`; returns whether the key is new (the dict grew).
    fn insert(&mut self, key: Value, value: Value) -> bool {
        if let Value::Str(s) = &key {
            if let Some(&i) = self.by_str.get(s) {
                self.items[i].1 = value;
                return false;
            }
            self.by_str.insert(s.clone(), self.items.len());
        }
        self.items.push((key, value));
        true
    }
}

#[derive(Debug)]
enum Obj {
    Tuple(Vec<Value>),
    /// Lists and sets.
    List(Vec<Value>),
    Dict(Dict),
}

type PResult<T> = std::result::Result<T, String>;

/// A stack machine for the pickle opcodes that plain data (and torch checkpoints) use.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stacks saved by MARK.
    marks: Vec<Vec<Value>>,
    memo: HashMap<u64, Value>,
    arena: Vec<Obj>,
    /// Work left (items copied, key bytes hashed): a hostile pickle that reuses one big memoized
    /// object over and over could otherwise cost time quadratic in its size.
    budget: usize,
    /// Value slots the containers may still hold: the same reuse, copying a big memoized list
    /// into new containers, could otherwise fill memory long before the work runs out.
    slots: usize,
}

/// Value slots a dict item costs (key, value, and its index entry).
const DICT_ITEM_SLOTS: usize = 4;

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            arena: Vec::new(),
            budget: data.len().saturating_mul(16).saturating_add(1 << 20),
            // A pickle stores at most about one value per byte unless it copies containers;
            // twice that (about 50 bytes a slot) keeps a 5 MB pickle within a few hundred MB.
            slots: data.len().saturating_mul(2).saturating_add(1 << 20),
        }
    }

    /// Charges `n` value slots against the memory budget.
    fn store(&mut self, n: usize) -> PResult<()> {
        self.slots = self
            .slots
            .checked_sub(n)
            .ok_or_else(|| format!("pickle needs too much memory for its size (hostile?) at byte {}", self.pos))?;
        Ok(())
    }

    /// Charges `n` units of work against the budget.
    fn spend(&mut self, n: usize) -> PResult<()> {
        self.budget = self
            .budget
            .checked_sub(n)
            .ok_or_else(|| format!("pickle needs too much work for its size (hostile?) at byte {}", self.pos))?;
        Ok(())
    }

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("pickle ends early at byte {} (truncated?)", self.data.len()))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take_array::<1>()?[0])
    }

    fn u32_le(&mut self) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    fn u64_le(&mut self) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.take_array()?))
    }

    /// A length from the stream, checked against the bytes that remain.
    fn len_u64(&mut self, n: u64) -> PResult<usize> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len() - self.pos)
            .ok_or_else(|| format!("pickle length {n} at byte {} runs past its end", self.pos))
    }

    /// A text line (GLOBAL's operands), without its newline.
    fn line(&mut self) -> PResult<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| "pickle ends inside a GLOBAL name (truncated?)".to_string())?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| "GLOBAL name is not UTF-8".to_string())
    }

    fn string(&mut self, n: usize) -> PResult<Value> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| "string is not valid UTF-8".to_string())?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> PResult<Value> {
        self.stack.pop().ok_or_else(|| format!("pickle stack underflow at byte {}", self.pos))
    }

    fn top(&self) -> PResult<&Value> {
        self.stack.last().ok_or_else(|| format!("pickle stack underflow at byte {}", self.pos))
    }

    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let saved = self.marks.pop().ok_or_else(|| format!("pickle MARK missing at byte {}", self.pos))?;
        Ok(std::mem::replace(&mut self.stack, saved))
    }

    fn new_obj(&mut self, o: Obj) -> PResult<Value> {
        self.store(
            1 + match &o {
                Obj::Tuple(items) | Obj::List(items) => items.len(),
                Obj::Dict(d) => d.items.len() * DICT_ITEM_SLOTS,
            },
        )?;
        self.arena.push(o);
        Ok(Value::Obj(self.arena.len() - 1))
    }

    fn memo_get(&self, i: u64) -> PResult<Value> {
        self.memo.get(&i).cloned().ok_or_else(|| format!("pickle memo entry {i} read before it was written"))
    }

    /// The container on top of the stack, for APPEND / SETITEM; `None` for an opaque object
    /// (whose mutations we ignore).
    fn top_container(&self) -> PResult<Option<usize>> {
        match self.top()? {
            Value::Obj(id) => Ok(Some(*id)),
            Value::Opaque(_) => Ok(None),
            other => Err(format!("cannot add items to {}", kind(other))),
        }
    }

    fn append(&mut self, items: Vec<Value>) -> PResult<()> {
        let Some(id) = self.top_container()? else {
            return Ok(());
        };
        self.store(items.len())?;
        match &mut self.arena[id] {
            Obj::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err("APPEND to something that is not a list".to_string()),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> PResult<()> {
        if items.len() % 2 == 1 {
            return Err("SETITEMS with an odd number of items".to_string());
        }
        let cost = items
            .chunks(2)
            .map(|kv| match &kv[0] {
                Value::Str(k) => 1 + k.len() / 16,
                _ => 1,
            })
            .sum();
        self.spend(cost)?;
        let Some(id) = self.top_container()? else {
            return Ok(());
        };
        let Obj::Dict(d) = &mut self.arena[id] else {
            return Err("SETITEM on something that is not a dict".to_string());
        };
        let mut it = items.into_iter();
        let mut added = 0;
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            added += usize::from(d.insert(k, v));
        }
        self.store(added * DICT_ITEM_SLOTS)
    }

    /// Runs the pickle to its STOP and returns the object it built.
    fn load(&mut self) -> PResult<Value> {
        loop {
            let at = self.pos;
            let op = self.u8().map_err(|_| "pickle ends without STOP (truncated?)".to_string())?;
            match op {
                // PROTO
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(format!("unsupported pickle protocol {v}"));
                    }
                }
                // FRAME: a length hint only.
                0x95 => {
                    self.take(8)?;
                }
                // STOP
                b'.' => return self.pop(),
                // MARK
                b'(' => {
                    let saved = std::mem::take(&mut self.stack);
                    self.marks.push(saved);
                }
                // POP
                b'0' => {
                    if self.stack.is_empty() {
                        self.pop_mark()?;
                    } else {
                        self.pop()?;
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark()?;
                }
                // DUP
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                // NONE, NEWTRUE, NEWFALSE
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool),
                0x89 => self.push(Value::Bool),
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(v.into()));
                }
                // LONG1, LONG4: little-endian two's complement.
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        let n = self.u32_le()?;
                        self.len_u64(n.into())?
                    };
                    let bytes = self.take(n)?;
                    self.push(long_value(bytes));
                }
                // BINFLOAT (big-endian)
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float);
                }
                // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.push(v);
                }
                b'X' => {
                    let n = self.u32_le()?;
                    let n = self.len_u64(n.into())?;
                    let v = self.string(n)?;
                    self.push(v);
                }
                0x8d => {
                    let n = self.u64_le()?;
                    let n = self.len_u64(n)?;
                    let v = self.string(n)?;
                    self.push(v);
                }
                // SHORT_BINSTRING, BINSTRING: protocol-1 byte strings, read as text.
                b'U' | b'T' => {
                    let n = if op == b'U' {
                        self.u8()? as usize
                    } else {
                        let n = self.u32_le()?;
                        self.len_u64(n.into())?
                    };
                    let bytes = self.take(n)?;
                    self.push(Value::Str(Rc::from(String::from_utf8_lossy(bytes).as_ref())));
                }
                // SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                b'C' | b'B' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => self.u8()? as usize,
                        b'B' => {
                            let n = self.u32_le()?;
                            self.len_u64(n.into())?
                        }
                        _ => {
                            let n = self.u64_le()?;
                            self.len_u64(n)?
                        }
                    };
                    self.take(n)?;
                    self.push(Value::Bytes);
                }
                // EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, EMPTY_SET
                b'}' => {
                    let v = self.new_obj(Obj::Dict(Dict::default()))?;
                    self.push(v);
                }
                b']' | 0x8f => {
                    let v = self.new_obj(Obj::List(Vec::new()))?;
                    self.push(v);
                }
                b')' => {
                    let v = self.new_obj(Obj::Tuple(Vec::new()))?;
                    self.push(v);
                }
                // TUPLE, TUPLE1, TUPLE2, TUPLE3
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::Tuple(items))?;
                    self.push(v);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(format!("pickle stack underflow at byte {at}"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    let v = self.new_obj(Obj::Tuple(items))?;
                    self.push(v);
                }
                // LIST, FROZENSET (kept as a list)
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::List(items))?;
                    self.push(v);
                }
                // DICT
                b'd' => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::Dict(Dict::default()))?;
                    self.push(v);
                    self.set_items(items)?;
                }
                // APPEND, APPENDS, ADDITEMS
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                // SETITEM, SETITEMS
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                // GLOBAL, STACK_GLOBAL: recorded as a name, never resolved.
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(Rc::from(format!("{module}.{name}"))));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.spend(1 + (m.len() + n.len()) / 16)?;
                            self.push(Value::Global(Rc::from(format!("{m}.{n}"))))
                        }
                        _ => return Err("STACK_GLOBAL operands are not strings".to_string()),
                    }
                }
                // BINPUT, LONG_BINPUT, MEMOIZE
                b'q' => {
                    let i = self.u8()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i.into(), v);
                }
                b'r' => {
                    let i = self.u32_le()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i.into(), v);
                }
                0x94 => {
                    let v = self.top()?.clone();
                    self.memo.insert(self.memo.len() as u64, v);
                }
                // BINGET, LONG_BINGET
                b'h' => {
                    let i = self.u8()?;
                    let v = self.memo_get(i.into())?;
                    self.push(v);
                }
                b'j' => {
                    let i = self.u32_le()?;
                    let v = self.memo_get(i.into())?;
                    self.push(v);
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.push(v);
                }
                // REDUCE
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(&callable, &args)?;
                    self.push(v);
                }
                // NEWOBJ, NEWOBJ_EX: cls.__new__(cls, *args)
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop()?; // kwargs
                    }
                    self.pop()?; // args
                    let cls = self.pop()?;
                    let v = match &cls {
                        Value::Global(g) if &**g == "collections.OrderedDict" => {
                            self.new_obj(Obj::Dict(Dict::default()))?
                        }
                        Value::Global(g) => Value::Opaque(g.clone()),
                        other => return Err(format!("NEWOBJ on {}", kind(other))),
                    };
                    self.push(v);
                }
                // BUILD: sets an object's state (e.g. an OrderedDict's `_metadata`); ignored.
                b'b' => {
                    self.pop()?;
                    self.top()?;
                }
                _ => {
                    return Err(format!("unsupported pickle opcode 0x{op:02x} at byte {at}"));
                }
            }
        }
    }

    /// Resolves torch's persistent id `('storage', storage_type, key, location, numel)`.
    fn persistent_load(&self, pid: &Value) -> PResult<Value> {
        let items = self.tuple(pid).ok_or("persistent id is not a tuple")?;
        let [tag, storage_type, key, _location, _numel] = items else {
            return Err(format!("persistent id has {} fields, expected 5", items.len()));
        };
        match tag {
            Value::Str(s) if &**s == "storage" => {}
            _ => return Err("persistent id is not a ('storage', ...) tuple".to_string()),
        }
        let Value::Global(class) = storage_type else {
            return Err("persistent id's storage type is not a class".to_string());
        };
        let short = class.rsplit('.').next().unwrap_or(class);
        let kind = if matches!(short, "UntypedStorage" | "_UntypedStorage") {
            StorageKind::Untyped
        } else if let Some(d) = TorchDType::from_storage_class(short) {
            StorageKind::Typed(d)
        } else {
            StorageKind::Unsupported(class.clone())
        };
        let key: Rc<str> = match key {
            Value::Str(s) => s.clone(),
            Value::Int(i) => Rc::from(i.to_string()),
            _ => return Err("persistent id's storage key is not a string".to_string()),
        };
        if key.is_empty() || key.contains('/') || key.contains("..") {
            return Err(format!("storage key {key:?} is not a plain name"));
        }
        Ok(Value::Storage(Rc::new(Storage { kind, key })))
    }

    /// The items of a list or tuple value.
    fn seq<'s>(&'s self, v: &Value) -> Option<&'s [Value]> {
        match v {
            Value::Obj(id) => match &self.arena[*id] {
                Obj::Tuple(t) | Obj::List(t) => Some(t),
                Obj::Dict(_) => None,
            },
            _ => None,
        }
    }

    /// The items of a tuple value.
    fn tuple<'s>(&'s self, v: &Value) -> Option<&'s [Value]> {
        match v {
            Value::Obj(id) => match &self.arena[*id] {
                Obj::Tuple(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    /// Calls (on paper) `callable(*args)` for the allow-listed callables; anything else gives an
    /// opaque value carrying the callable's name.
    fn reduce(&mut self, callable: &Value, args: &Value) -> PResult<Value> {
        let Value::Global(name) = callable else {
            return Err(format!("REDUCE on {}, not a global", kind(callable)));
        };
        let n = self.tuple(args).ok_or_else(|| format!("arguments to {name} are not a tuple"))?.len();
        self.spend(1 + n)?;
        let args: Vec<Value> = self.tuple(args).unwrap_or_default().to_vec();
        match &**name {
            "collections.OrderedDict" | "builtins.dict" => {
                let v = self.new_obj(Obj::Dict(Dict::default()))?;
                if let Some(pairs) = args.first() {
                    // OrderedDict([(k, v), ...])
                    let n = self.seq(pairs).ok_or_else(|| format!("unsupported arguments to {name}"))?.len();
                    self.spend(n)?;
                    let pairs = self.seq(pairs).unwrap_or_default().to_vec();
                    let mut items = Vec::with_capacity(pairs.len() * 2);
                    for p in &pairs {
                        match self.tuple(p) {
                            Some([k, v]) => items.extend([k.clone(), v.clone()]),
                            _ => return Err(format!("unsupported arguments to {name}")),
                        }
                    }
                    self.push(v.clone());
                    let r = self.set_items(items);
                    self.pop()?;
                    r?;
                }
                Ok(v)
            }
            "torch._utils._rebuild_tensor" | "torch._utils._rebuild_tensor_v2" => {
                // (storage, storage_offset, size, stride[, requires_grad, backward_hooks[, metadata]])
                if args.len() < 4 {
                    return Err(format!("{name} with {} arguments", args.len()));
                }
                self.rebuild_tensor(name, &args[..4], None)
            }
            "torch._utils._rebuild_tensor_v3" => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
                if args.len() < 7 {
                    return Err(format!("{name} with {} arguments", args.len()));
                }
                let Value::Global(dtype) = &args[6] else {
                    return Err(format!("{name}: dtype argument is not a torch dtype"));
                };
                let dtype = TorchDType::from_dtype_global(dtype).ok_or_else(|| dtype.to_string());
                self.rebuild_tensor(name, &args[..4], Some(dtype))
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
                // (data, requires_grad, backward_hooks[, state]): the parameter is its data.
                match args.first() {
                    Some(v @ (Value::Tensor(_) | Value::Opaque(_))) => Ok(v.clone()),
                    _ => Err(format!("{name}: data argument is not a tensor")),
                }
            }
            "torch._tensor._rebuild_from_type_v2" => {
                // (func, new_type, args, state): a tensor (subclass) with Python state.
                let [func, _new_type, inner, ..] = args.as_slice() else {
                    return Err(format!("{name} with {} arguments", args.len()));
                };
                match func {
                    Value::Global(f) if f.starts_with("torch._utils._rebuild_tensor") => self.reduce(func, inner),
                    Value::Global(f) => Ok(Value::Opaque(f.clone())),
                    _ => Err(format!("{name}: rebuild function is not a global")),
                }
            }
            _ => Ok(Value::Opaque(name.clone())),
        }
    }

    /// Builds a tensor from `(storage, storage_offset, size, stride)`; `dtype` is given for an
    /// untyped storage (`_rebuild_tensor_v3`).
    fn rebuild_tensor(
        &mut self,
        func: &str,
        args: &[Value],
        dtype: Option<std::result::Result<TorchDType, String>>,
    ) -> PResult<Value> {
        let dims = |v: &Value| self.tuple(v).map_or(0, <[Value]>::len);
        let cost = 1 + dims(&args[2]) + dims(&args[3]);
        self.spend(cost)?;
        let Value::Storage(storage) = &args[0] else {
            return Err(format!("{func}: first argument is not a storage"));
        };
        let offset = match args[1] {
            Value::Int(i) => usize::try_from(i).map_err(|_| format!("{func}: negative storage offset"))?,
            _ => return Err(format!("{func}: storage offset is not an integer")),
        };
        let ints = |v: &Value, what: &str| -> PResult<Vec<i64>> {
            let items = self.tuple(v).ok_or_else(|| format!("{func}: {what} is not a tuple"))?;
            items
                .iter()
                .map(|x| match x {
                    Value::Int(i) => Ok(*i),
                    _ => Err(format!("{func}: {what} holds a non-integer")),
                })
                .collect()
        };
        let shape = ints(&args[2], "size")?
            .into_iter()
            .map(|d| usize::try_from(d).map_err(|_| format!("{func}: negative size")))
            .collect::<PResult<Vec<usize>>>()?;
        let stride = ints(&args[3], "stride")?;
        let dtype = match (&storage.kind, dtype) {
            (StorageKind::Unsupported(class), _) => Err(format!("(storage class {class})")),
            (StorageKind::Typed(d), None) => Ok(*d),
            (StorageKind::Typed(d), Some(Ok(t))) if *d == t => Ok(*d),
            (StorageKind::Typed(_), Some(_)) => return Err(format!("{func}: dtype disagrees with the storage's type")),
            (StorageKind::Untyped, Some(d)) => d,
            (StorageKind::Untyped, None) => return Err(format!("{func}: untyped storage without a dtype")),
        };
        Ok(Value::Tensor(Rc::new(Tensor { storage: storage.clone(), dtype, offset, shape, stride })))
    }
}

/// The value of a LONG1 / LONG4 payload (little-endian two's complement).
fn long_value(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() > 8 {
        return Value::BigInt;
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
    buf[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(buf))
}

/// A value's kind, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool => "a bool",
        Value::Int(_) | Value::BigInt => "an int",
        Value::Float => "a float",
        Value::Str(_) => "a string",
        Value::Bytes => "bytes",
        Value::Global(_) => "a global",
        Value::Obj(_) => "a container",
        Value::Storage(_) => "a storage",
        Value::Tensor(_) => "a tensor",
        Value::Opaque(_) => "an opaque object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/torch");

    fn fixture(name: &str) -> (PathBuf, Vec<u8>) {
        let path = Path::new(DIR).join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        (path, bytes)
    }

    fn read(name: &str) -> Result<Vec<TorchTensor>> {
        let (path, bytes) = fixture(name);
        read_torch_zip(&path, &bytes)
    }

    fn err(name: &str) -> String {
        match read(name) {
            Ok(t) => panic!("{name}: expected an error, got {} tensors", t.len()),
            Err(e) => e.to_string(),
        }
    }

    /// Checks that the tensors listed for `bin` are exactly those of the safetensors `twin`:
    /// same names, dtypes, shapes, and bytes read through the reported offsets.
    fn assert_matches_twin(file: &[u8], listed: &[TorchTensor], twin: &Path) {
        let twin_bytes = std::fs::read(twin).unwrap();
        let st = safetensors::SafeTensors::deserialize(&twin_bytes).unwrap();
        assert_eq!(listed.len(), st.len(), "tensor count vs {}", twin.display());
        for t in listed {
            let want = st.tensor(&t.name).unwrap_or_else(|_| panic!("{} not in {}", t.name, twin.display()));
            assert_eq!(t.dtype, format!("{:?}", want.dtype()), "{}", t.name);
            assert_eq!(t.shape, want.shape(), "{}", t.name);
            assert_eq!(t.data_len, want.data().len(), "{}", t.name);
            assert_eq!(&file[t.data_start..t.data_start + t.data_len], want.data(), "{}", t.name);
        }
    }

    fn by_name<'t>(ts: &'t [TorchTensor], name: &str) -> &'t TorchTensor {
        ts.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor {name}"))
    }

    #[test]
    fn pickle_mixed_matches_safetensors_twin() {
        let (path, file) = fixture("mixed.bin");
        let ts = read_torch_zip(&path, &file).unwrap();
        assert_matches_twin(&file, &ts, &Path::new(DIR).join("mixed.safetensors"));
        // State-dict order is kept.
        let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "w_bf16",
                "w_f16",
                "w_f32",
                "w_f64",
                "tail",
                "head",
                "row3",
                "embed.weight",
                "lm_head.weight",
                "position_ids",
                "i32",
                "i16",
                "i8",
                "u8",
                "mask",
                "scalar",
                "empty",
                "col"
            ]
        );
        let dtypes: Vec<&str> = ts.iter().map(|t| t.dtype.as_str()).collect();
        for d in ["BF16", "F16", "F32", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"] {
            assert!(dtypes.contains(&d), "{d} missing");
        }
    }

    #[test]
    fn pickle_shared_storage_and_offsets() {
        let ts = read("mixed.bin").unwrap();
        // Tied weights: both names, same bytes.
        let (e, l) = (by_name(&ts, "embed.weight"), by_name(&ts, "lm_head.weight"));
        assert_eq!((e.data_start, e.data_len), (l.data_start, l.data_len));
        // Three views of one 6x4 f32 storage at element offsets 0, 8 and 12.
        let (head, tail, row3) = (by_name(&ts, "head"), by_name(&ts, "tail"), by_name(&ts, "row3"));
        assert_eq!(tail.data_start, head.data_start + 8 * 4);
        assert_eq!(row3.data_start, head.data_start + 12 * 4);
        assert_eq!((tail.shape.as_slice(), tail.data_len), (&[4, 4][..], 64));
        assert_eq!((row3.shape.as_slice(), row3.data_len), (&[4][..], 16));
        // 0-dim and empty tensors.
        let s = by_name(&ts, "scalar");
        assert_eq!((s.shape.as_slice(), s.data_len, s.dtype.as_str()), (&[][..], 4, "F32"));
        let z = by_name(&ts, "empty");
        assert_eq!((z.shape.as_slice(), z.data_len), (&[0, 3][..], 0));
        assert_eq!(by_name(&ts, "position_ids").shape, [1, 7]);
    }

    #[test]
    fn pickle_module_parameters_match_twin() {
        let (path, file) = fixture("params.bin");
        let ts = read_torch_zip(&path, &file).unwrap();
        assert_matches_twin(&file, &ts, &Path::new(DIR).join("params.safetensors"));
        assert!(ts.iter().all(|t| t.dtype == "BF16"));
        assert_eq!(by_name(&ts, "0.weight").shape, [3, 4]);
    }

    #[test]
    fn pickle_untyped_storage_v3_matches_twin() {
        let (path, file) = fixture("untyped_v3.bin");
        let ts = read_torch_zip(&path, &file).unwrap();
        assert_matches_twin(&file, &ts, &Path::new(DIR).join("untyped_v3.safetensors"));
        assert_eq!(by_name(&ts, "a").dtype, "BF16");
        assert_eq!(by_name(&ts, "b_tail").dtype, "F32");
    }

    #[test]
    fn pickle_llama_shards_equal_safetensors() {
        let dir = Path::new(DIR).join("llama-sharded");
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("pytorch_model.bin.index.json")).unwrap()).unwrap();
        let map = index["weight_map"].as_object().unwrap();
        let st_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llama-tiny/target/model.safetensors");
        let st_bytes = std::fs::read(&st_path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
        assert_eq!(map.len(), st.len());
        let mut shards: Vec<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
        shards.sort();
        shards.dedup();
        assert_eq!(shards.len(), 2);
        let mut seen = 0;
        let mut total = 0;
        for shard in shards {
            let path = dir.join(shard);
            let file = std::fs::read(&path).unwrap();
            for t in read_torch_zip(&path, &file).unwrap() {
                assert_eq!(map[&t.name].as_str(), Some(shard), "{}", t.name);
                let want = st.tensor(&t.name).unwrap();
                assert_eq!(t.dtype, "BF16");
                assert_eq!(t.shape, want.shape(), "{}", t.name);
                assert_eq!(&file[t.data_start..t.data_start + t.data_len], want.data());
                seen += 1;
                total += t.data_len;
            }
        }
        assert_eq!(seen, st.len());
        assert_eq!(Some(total as u64), index["metadata"]["total_size"].as_u64());
    }

    #[test]
    fn pickle_non_contiguous_is_an_error_naming_the_tensor() {
        let e = err("noncontig.bin");
        assert!(e.contains("transposed") && e.contains("non-contiguous"), "{e}");
        assert!(e.contains("noncontig.bin"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn pickle_legacy_format_is_refused() {
        let e = err("legacy.bin");
        assert!(e.contains(LEGACY_MSG) && e.contains("legacy.bin"), "{e}");
        // The older tar format too.
        let mut tar = vec![0u8; 1024];
        tar[257..262].copy_from_slice(b"ustar");
        let e = read_torch_zip(Path::new("old.bin"), &tar).unwrap_err().to_string();
        assert!(e.contains(LEGACY_MSG), "{e}");
    }

    #[test]
    fn pickle_unsupported_contents_are_clear_errors() {
        let e = err("nested.bin");
        assert!(e.contains("nested dict") && e.contains("\"model\"") && e.contains("nested.bin"), "{e}");
        let e = err("uint16.bin");
        assert!(e.contains("u16") && e.contains("unsupported dtype torch.uint16"), "{e}");
        assert!(e.contains("uint16.bin"), "{e}");
        let e = err("sparse.bin");
        assert!(
            e.contains("sparse")
                && e.contains("unsupported pickle global torch._utils._rebuild_sparse_tensor")
                && e.contains("sparse.bin"),
            "{e}"
        );
        let e = err("deflated.bin");
        assert!(e.contains("compressed") && e.contains("deflated.bin"), "{e}");
    }

    #[test]
    fn pickle_not_a_checkpoint() {
        let p = Path::new("x.bin");
        for bytes in [&b""[..], b"hello world", b"PK\x03\x04garbage"] {
            let e = read_torch_zip(p, bytes).unwrap_err().to_string();
            assert!(e.starts_with("x.bin: "), "{e}");
        }
        let (_, st) = fixture("mixed.safetensors");
        assert!(read_torch_zip(p, &st).unwrap_err().to_string().contains("no zip signature"));
    }

    /// A tiny deterministic generator for the fuzz loops.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    fn check_in_bounds(file: &[u8], r: Result<Vec<TorchTensor>>) {
        if let Ok(ts) = r {
            for t in ts {
                assert!(t.data_start + t.data_len <= file.len(), "{t:?}");
            }
        }
    }

    #[test]
    fn pickle_truncated_files_are_errors() {
        for name in ["mixed.bin", "untyped_v3.bin"] {
            let (_, file) = fixture(name);
            for len in 0..file.len() {
                let r = read_torch_zip(Path::new(name), &file[..len]);
                let e = r.expect_err(&format!("{name} truncated to {len} bytes was accepted"));
                assert!(e.to_string().contains(name), "{e}");
            }
        }
    }

    #[test]
    fn pickle_corrupted_files_never_panic() {
        let (_, file) = fixture("mixed.bin");
        let p = Path::new("mixed.bin");
        let mut buf = file.clone();
        for i in 0..buf.len() {
            buf[i] ^= 0xff;
            check_in_bounds(&buf, read_torch_zip(p, &buf));
            buf[i] = file[i];
        }
        let mut rng = Lcg(7);
        for _ in 0..3000 {
            let mut buf = file.clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() as usize) % buf.len();
                buf[i] = rng.next() as u8;
            }
            check_in_bounds(&buf, read_torch_zip(p, &buf));
        }
    }

    /// The data.pkl of a fixture, read with the python-free zip path.
    fn data_pkl(name: &str) -> Vec<u8> {
        let (_, file) = fixture(name);
        let mut zip = Zip::open(&file).unwrap();
        let prefix = zip.archive_prefix().unwrap();
        let r = zip.entry(&format!("{prefix}data.pkl")).unwrap();
        file[r].to_vec()
    }

    #[test]
    fn pickle_interpreter_survives_garbage() {
        let pkl = data_pkl("params.bin");
        for len in 0..pkl.len() {
            assert!(Unpickler::new(&pkl[..len]).load().is_err(), "accepted {len} bytes");
        }
        let mut buf = pkl.clone();
        for i in 0..buf.len() {
            for x in [0xff, 0x01, 0x80] {
                buf[i] ^= x;
                let _ = Unpickler::new(&buf).load();
                buf[i] = pkl[i];
            }
        }
        // Opcode soup.
        let mut rng = Lcg(11);
        let ops = b"\x80\x95.(012N\x88\x89JKM\x8a\x8bGX\x8c\x8dUTCB\x8e\x96}]\x8f)t\x85\x86\x87l\x91dae\x90suc\x93qr\x94hjQR\x81\x92b";
        for _ in 0..20000 {
            let n = 1 + rng.next() % 64;
            let soup: Vec<u8> = (0..n)
                .map(|_| if rng.next() % 3 == 2 { rng.next() as u8 } else { ops[rng.next() as usize % ops.len()] })
                .collect();
            let _ = Unpickler::new(&soup).load();
        }
    }

    #[test]
    fn pickle_globals_are_never_called() {
        // {'x': os.system('ls'), 'y': 1}: the call is only recorded.
        let pkl = b"\x80\x02}q\x00(X\x01\x00\x00\x00xcos\nsystem\nX\x02\x00\x00\x00ls\x85RX\x01\x00\x00\x00yK\x01u.";
        let mut u = Unpickler::new(pkl);
        let Value::Obj(id) = u.load().unwrap() else { panic!("not a dict") };
        let Obj::Dict(d) = &u.arena[id] else { panic!("not a dict") };
        assert!(matches!(&d.items[0].1, Value::Opaque(g) if &**g == "os.system"));
        assert!(matches!(d.items[1].1, Value::Int(1)));
    }

    #[test]
    fn pickle_memo_shares_mutations_and_deep_nesting_is_flat() {
        // d = {}; memo it; fill it; the memo copy sees the items: [d, d] with d = {'k': 5}.
        let pkl = b"\x80\x02](}q\x00X\x01\x00\x00\x00kK\x05sh\x00e.";
        let mut u = Unpickler::new(pkl);
        let Value::Obj(list) = u.load().unwrap() else { panic!() };
        let Obj::List(items) = &u.arena[list] else { panic!() };
        assert_eq!(items.len(), 2);
        for v in items {
            let Value::Obj(d) = v else { panic!() };
            let Obj::Dict(d) = &u.arena[*d] else { panic!() };
            assert!(matches!(d.items.as_slice(), [(Value::Str(k), Value::Int(5))] if &**k == "k"));
        }
        // A million nested tuples and a memo "billion laughs" cost linear memory, no recursion.
        let mut deep = vec![b']'];
        deep.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        deep.push(b'.');
        assert!(Unpickler::new(&deep).load().is_ok());
        let mut laughs = b"]q\x00".to_vec();
        for _ in 0..10_000 {
            laughs.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        laughs.push(b'.');
        assert!(Unpickler::new(&laughs).load().is_ok());
    }

    #[test]
    fn pickle_reusing_a_big_object_hits_the_work_budget() {
        // l = [('k', 1)] * 20_000, then OrderedDict(l) 20_000 times: 4e8 steps without a budget.
        let mut pkl = b"\x80\x02]q\x00X\x01\x00\x00\x00kK\x01\x86q\x010(".to_vec();
        for _ in 0..20_000 {
            pkl.extend_from_slice(b"h\x01");
        }
        pkl.extend_from_slice(b"eccollections\nOrderedDict\nq\x02");
        for _ in 0..20_000 {
            pkl.extend_from_slice(b"h\x02h\x00\x85R0");
        }
        pkl.push(b'.');
        let t0 = std::time::Instant::now();
        let e = Unpickler::new(&pkl).load().unwrap_err();
        assert!(e.contains("too much work"), "{e}");
        assert!(t0.elapsed().as_secs() < 10);
    }

    #[test]
    fn pickle_long_values() {
        assert!(matches!(long_value(&[]), Value::Int(0)));
        assert!(matches!(long_value(&[0xff]), Value::Int(-1)));
        assert!(matches!(long_value(&[0x00, 0x80]), Value::Int(-32768)));
        assert!(matches!(long_value(&[0x34, 0x12]), Value::Int(0x1234)));
        assert!(matches!(long_value(&[1; 9]), Value::BigInt));
    }

    #[test]
    fn pickle_contiguity_rule() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
        assert!(is_contiguous(&[4, 1], &[1, 1]));
        assert!(is_contiguous(&[1, 4], &[99, 1]));
        assert!(is_contiguous(&[], &[]));
    }
}
