//! Reading a GGUF file someone else wrote: the header, the metadata and the tensor index, checked
//! as llama.cpp's `gguf_init_from_file` checks them before a byte of tensor data is trusted.
//!
//! Hand-written rather than candle's `gguf_file::Content::read`, which divides by a zero
//! alignment, accepts overlapping or mislabelled tensors and keeps every metadata array in memory
//! (about 32 bytes per element). Here:
//! - the alignment is a power of two, every tensor offset is aligned, tensors do not overlap,
//!   each one's bytes are what its type and shape say, and all lie inside the file;
//! - names and keys are unique, float metadata is finite;
//! - arrays are kept only under `tokenizer.` and up to [`MAX_KEPT_ELEMENTS`]; others are skipped by
//!   their byte length.
//!
//! Every count and length is checked against the bytes left in the file before anything is
//! allocated, so a hostile header costs no more memory than the file's size.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::stored::{NotRunnable, StoredType};

/// The most elements kept of one metadata array (the largest vocabularies have about 260k tokens).
pub const MAX_KEPT_ELEMENTS: u64 = 1 << 21;
/// The longest string kept (chat templates are a few kB, the largest known about 40 kB).
pub const MAX_STRING_BYTES: u64 = 16 << 20;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// llama.cpp's default alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// What is wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    /// The header ends before a value it announces.
    #[error("truncated: {0} runs past the end of the file")]
    Truncated(String),
    /// Not a GGUF file, or a version chatvec does not read.
    #[error("{0}")]
    Header(String),
    /// A metadata key or value is malformed.
    #[error("metadata {key:?}: {message}")]
    Metadata {
        /// The key (or the index of the key when the key itself is bad).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A float metadata value is NaN or infinite.
    #[error("metadata {0:?} is not a finite number")]
    NonFinite(String),
    /// `general.alignment` is not a power of two.
    #[error("general.alignment = {0} is not a power of two")]
    Alignment(u64),
    /// A tensor info is malformed.
    #[error("tensor {tensor:?}: {message}")]
    Tensor {
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor type chatvec does not run.
    #[error("tensor {tensor:?} has type {type_name}, which chatvec cannot run (it runs {runnable})")]
    UnsupportedType {
        /// The tensor's name.
        tensor: String,
        /// llama.cpp's name for the type, or its id.
        type_name: String,
        /// The types chatvec runs.
        runnable: String,
    },
    /// Two tensors' bytes overlap.
    #[error("tensors {first:?} and {second:?} overlap in the data section")]
    Overlap {
        /// The tensor that starts first.
        first: String,
        /// The one that starts inside it.
        second: String,
    },
    /// A tensor's type and shape do not account for the bytes before the next tensor.
    #[error(
        "tensor {tensor:?}: type {type_name} and shape {shape:?} make {bytes} bytes, but the next \
         tensor starts {room} bytes later (wrong type or shape)"
    )]
    SizeMismatch {
        /// The tensor's name.
        tensor: String,
        /// Its type.
        type_name: &'static str,
        /// Its shape, outermost first.
        shape: Vec<u64>,
        /// The bytes its type and shape make.
        bytes: u64,
        /// The bytes between its offset and the next tensor's.
        room: u64,
    },
}

/// A GGUF file that fails a check, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct GgufError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: Problem,
}

/// A metadata value as kept by the reader.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any unsigned integer type.
    UInt(u64),
    /// Any signed integer type.
    Int(i64),
    /// `f32` or `f64`, always finite.
    Float(f64),
    /// `bool`.
    Bool(bool),
    /// A string.
    Str(String),
    /// An array of strings, kept.
    Strings(Vec<String>),
    /// An array of numbers or bools, kept (as `f64`: token types and scores are exact).
    Numbers(Vec<f64>),
    /// An array the reader skipped (not under `tokenizer.`): its element type and length.
    Skipped {
        /// The GGUF value type id of the elements.
        element_type: u32,
        /// The number of elements.
        len: u64,
    },
}

/// One tensor of the index.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// The GGUF name.
    pub name: String,
    /// The shape, outermost first (ggml's `ne` reversed).
    pub shape: Vec<usize>,
    /// The element type.
    pub stored: StoredType,
    /// Where its bytes start, from the start of the file.
    pub start: u64,
    /// How many bytes it has.
    pub bytes: u64,
}

/// A checked GGUF header: metadata and tensor index. Tensor bytes are read on demand.
#[derive(Debug)]
pub struct GgufIndex {
    path: PathBuf,
    file: Option<Mutex<File>>,
    metadata: HashMap<String, MetaValue>,
    tensors: Vec<TensorEntry>,
    by_name: HashMap<String, usize>,
}

impl GgufIndex {
    /// Opens and checks `path`.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let fail = |problem| GgufError { path: path.to_path_buf(), problem };
        let file = File::open(path).map_err(|e| fail(Problem::Io(e)))?;
        let len = file.metadata().map_err(|e| fail(Problem::Io(e)))?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut index = Self::parse(&mut reader, len, path)?;
        index.file = Some(Mutex::new(reader.into_inner()));
        Ok(index)
    }

    /// Checks GGUF bytes held in memory (for the fuzz target and tests).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, GgufError> {
        Self::parse(&mut std::io::Cursor::new(bytes), bytes.len() as u64, path)
    }

    fn parse<R: Read + Seek>(r: &mut R, len: u64, path: &Path) -> Result<Self, GgufError> {
        let fail = |problem| GgufError { path: path.to_path_buf(), problem };
        let mut src = Source { r, len, pos: 0 };
        let (n_tensors, n_kv) = read_counts(&mut src).map_err(fail)?;
        let metadata = read_metadata(&mut src, n_kv).map_err(fail)?;
        let alignment = alignment(&metadata).map_err(fail)?;
        let infos = read_tensor_infos(&mut src, n_tensors).map_err(fail)?;
        let data_start = src.pos.div_ceil(alignment) * alignment;
        let tensors = check_layout(infos, data_start, alignment, len).map_err(fail)?;
        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufIndex { path: path.to_path_buf(), file: None, metadata, tensors, by_name })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of `t` (an entry of this index), read from the file.
    pub fn read_bytes(&self, t: &TensorEntry) -> Result<Vec<u8>, GgufError> {
        let fail = |e| GgufError { path: self.path.clone(), problem: Problem::Io(e) };
        let file = self.file.as_ref().ok_or_else(|| fail(std::io::Error::other("opened from memory")))?;
        let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = vec![0u8; t.bytes as usize];
        file.seek(SeekFrom::Start(t.start)).map_err(fail)?;
        file.read_exact(&mut out).map_err(fail)?;
        Ok(out)
    }
}

/// A reader that knows how many bytes are left, so no length is trusted beyond them.
struct Source<'a, R> {
    r: &'a mut R,
    len: u64,
    pos: u64,
}

type Parsed<T> = Result<T, Problem>;

impl<R: Read + Seek> Source<'_, R> {
    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Parsed<[u8; N]> {
        let mut b = [0u8; N];
        if self.left() < N as u64 {
            return Err(Problem::Truncated(what()));
        }
        self.r.read_exact(&mut b)?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Parsed<u32> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Parsed<u64> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    /// Moves `n` bytes on (`n` already checked against [`Source::left`]).
    fn skip(&mut self, n: u64, what: &dyn Fn() -> String) -> Parsed<()> {
        if self.left() < n {
            return Err(Problem::Truncated(what()));
        }
        // Short skips read through the buffer: a seek would discard it (one system call per
        // string of a skipped array).
        if n <= 1 << 16 {
            std::io::copy(&mut self.r.by_ref().take(n), &mut std::io::sink())?;
        } else {
            self.r.seek(SeekFrom::Current(n as i64))?;
        }
        self.pos += n;
        Ok(())
    }

    /// A length-prefixed string, as bytes.
    fn string(&mut self, what: &dyn Fn() -> String) -> Parsed<Vec<u8>> {
        let n = self.u64(what)?;
        if n > self.left() {
            return Err(Problem::Truncated(what()));
        }
        if n > MAX_STRING_BYTES {
            return Err(Problem::Header(format!(
                "{} is {n} bytes, more than chatvec reads ({MAX_STRING_BYTES})",
                what()
            )));
        }
        let mut b = vec![0u8; n as usize];
        self.r.read_exact(&mut b)?;
        self.pos += n;
        Ok(b)
    }

    /// Skips a length-prefixed string.
    fn skip_string(&mut self, what: &dyn Fn() -> String) -> Parsed<()> {
        let n = self.u64(what)?;
        self.skip(n, what)
    }
}

fn utf8(bytes: Vec<u8>, what: &dyn Fn() -> String) -> Parsed<String> {
    String::from_utf8(bytes).map_err(|_| Problem::Header(format!("{} is not UTF-8", what())))
}

fn read_counts<R: Read + Seek>(src: &mut Source<R>) -> Parsed<(u64, u64)> {
    let magic = src.bytes::<4>(&|| "the magic".into())?;
    if &magic != b"GGUF" {
        return Err(Problem::Header("not a GGUF file (no GGUF magic)".into()));
    }
    let version = src.u32(&|| "the version".into())?;
    match version {
        2 | 3 => {}
        1 => return Err(Problem::Header("GGUF version 1 is not supported (llama.cpp reads 2 and 3)".into())),
        v if v.swap_bytes() <= 3 => {
            return Err(Problem::Header("a big-endian GGUF; chatvec reads little-endian".into()))
        }
        v => return Err(Problem::Header(format!("unknown GGUF version {v}"))),
    }
    let n_tensors = src.u64(&|| "the tensor count".into())?;
    let n_kv = src.u64(&|| "the metadata count".into())?;
    Ok((n_tensors, n_kv))
}

// gguf value type ids (ggml/include/gguf.h).
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

/// Bytes of one value of scalar type `t` (not string or array).
fn scalar_size(t: u32) -> Option<u64> {
    match t {
        0 | 1 | 7 => Some(1), // u8, i8, bool
        2 | 3 => Some(2),     // u16, i16
        4..=6 => Some(4),     // u32, i32, f32
        10..=12 => Some(8),   // u64, i64, f64
        _ => None,
    }
}

fn read_metadata<R: Read + Seek>(src: &mut Source<R>, n_kv: u64) -> Parsed<HashMap<String, MetaValue>> {
    // A key-value pair takes at least 13 bytes (key length, type, one byte of value).
    if n_kv > src.left() / 13 {
        return Err(Problem::Header(format!("{n_kv} metadata entries announced, more than the file can hold")));
    }
    let mut metadata = HashMap::new();
    for i in 0..n_kv {
        let what = || format!("metadata key {i}");
        let key = utf8(src.string(&what)?, &what)?;
        let value = read_value(src, &key).map_err(|p| match p {
            Problem::Header(message) => Problem::Metadata { key: key.clone(), message },
            other => other,
        })?;
        if let MetaValue::Float(x) = value {
            if !x.is_finite() {
                return Err(Problem::NonFinite(key));
            }
        }
        if metadata.insert(key.clone(), value).is_some() {
            return Err(Problem::Metadata { key, message: "the key appears twice".into() });
        }
    }
    Ok(metadata)
}

fn read_value<R: Read + Seek>(src: &mut Source<R>, key: &str) -> Parsed<MetaValue> {
    let what = || format!("metadata {key:?}");
    let t = src.u32(&what)?;
    match t {
        T_STRING => Ok(MetaValue::Str(utf8(src.string(&what)?, &what)?)),
        T_ARRAY => read_array(src, key),
        _ => read_scalar(src, t, &what),
    }
}

fn read_scalar<R: Read + Seek>(src: &mut Source<R>, t: u32, what: &dyn Fn() -> String) -> Parsed<MetaValue> {
    Ok(match t {
        0 => MetaValue::UInt(src.bytes::<1>(what)?[0] as u64),
        1 => MetaValue::Int(src.bytes::<1>(what)?[0] as i8 as i64),
        2 => MetaValue::UInt(u16::from_le_bytes(src.bytes(what)?) as u64),
        3 => MetaValue::Int(i16::from_le_bytes(src.bytes(what)?) as i64),
        4 => MetaValue::UInt(src.u32(what)? as u64),
        5 => MetaValue::Int(i32::from_le_bytes(src.bytes(what)?) as i64),
        6 => MetaValue::Float(f32::from_le_bytes(src.bytes(what)?) as f64),
        7 => match src.bytes::<1>(what)?[0] {
            0 => MetaValue::Bool(false),
            1 => MetaValue::Bool(true),
            b => return Err(Problem::Header(format!("bool value {b} is neither 0 nor 1"))),
        },
        10 => MetaValue::UInt(src.u64(what)?),
        11 => MetaValue::Int(i64::from_le_bytes(src.bytes(what)?)),
        12 => MetaValue::Float(f64::from_le_bytes(src.bytes(what)?)),
        _ => return Err(Problem::Header(format!("unknown value type {t}"))),
    })
}

fn read_array<R: Read + Seek>(src: &mut Source<R>, key: &str) -> Parsed<MetaValue> {
    let what = || format!("metadata {key:?}");
    let element_type = src.u32(&what)?;
    let len = src.u64(&what)?;
    let min_size = match element_type {
        T_STRING => 8,
        T_ARRAY => return Err(Problem::Header("arrays of arrays are not supported".into())),
        t => scalar_size(t).ok_or_else(|| Problem::Header(format!("unknown array element type {t}")))?,
    };
    if len > src.left() / min_size {
        return Err(Problem::Header(format!("{len} elements announced, more than the file holds")));
    }
    if !key.starts_with("tokenizer.") {
        match element_type {
            T_STRING => (0..len).try_for_each(|_| src.skip_string(&what))?,
            _ => src.skip(len * min_size, &what)?,
        }
        return Ok(MetaValue::Skipped { element_type, len });
    }
    if len > MAX_KEPT_ELEMENTS {
        return Err(Problem::Header(format!("{len} elements, more than chatvec keeps ({MAX_KEPT_ELEMENTS})")));
    }
    if element_type == T_STRING {
        let strings = (0..len).map(|_| utf8(src.string(&what)?, &what)).collect::<Parsed<_>>()?;
        return Ok(MetaValue::Strings(strings));
    }
    let number = |v| match v {
        MetaValue::UInt(x) => x as f64,
        MetaValue::Int(x) => x as f64,
        MetaValue::Float(x) => x,
        MetaValue::Bool(b) => b as u8 as f64,
        _ => unreachable!("scalar types only"),
    };
    let numbers = (0..len).map(|_| read_scalar(src, element_type, &what).map(number)).collect::<Parsed<_>>()?;
    Ok(MetaValue::Numbers(numbers))
}

fn alignment(metadata: &HashMap<String, MetaValue>) -> Parsed<u64> {
    match metadata.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(MetaValue::UInt(a)) if a.is_power_of_two() && *a <= u32::MAX as u64 => Ok(*a),
        Some(MetaValue::UInt(a)) => Err(Problem::Alignment(*a)),
        Some(_) => {
            Err(Problem::Metadata { key: "general.alignment".into(), message: "is not an unsigned integer".into() })
        }
    }
}

/// A tensor info as read, before the layout checks.
struct RawInfo {
    name: String,
    dims: Vec<u64>,
    stored: StoredType,
    offset: u64,
}

fn read_tensor_infos<R: Read + Seek>(src: &mut Source<R>, n: u64) -> Parsed<Vec<RawInfo>> {
    // A tensor info takes at least 24 bytes (name length, dimension count, type, offset).
    if n > src.left() / 24 {
        return Err(Problem::Header(format!("{n} tensors announced, more than the file can hold")));
    }
    let mut infos = Vec::with_capacity(n as usize);
    let mut seen = HashMap::new();
    for i in 0..n {
        let what = || format!("tensor info {i}");
        let name = utf8(src.string(&what)?, &what)?;
        let info = read_tensor_info(src, name)?;
        if seen.insert(info.name.clone(), ()).is_some() {
            return Err(Problem::Tensor { tensor: info.name, message: "the name appears twice".into() });
        }
        infos.push(info);
    }
    Ok(infos)
}

fn read_tensor_info<R: Read + Seek>(src: &mut Source<R>, name: String) -> Parsed<RawInfo> {
    let what = || format!("tensor {name:?}");
    let bad = |message: String| Problem::Tensor { tensor: name.clone(), message };
    let n_dims = src.u32(&what)?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(bad(format!("{n_dims} dimensions (ggml has 1 to {MAX_DIMS})")));
    }
    let mut dims = (0..n_dims).map(|_| src.u64(&what)).collect::<Parsed<Vec<_>>>()?;
    dims.reverse();
    let id = src.u32(&what)?;
    let stored = StoredType::from_id(id).map_err(|e| Problem::UnsupportedType {
        tensor: name.clone(),
        type_name: match e {
            NotRunnable::Refused(n) => n.to_string(),
            NotRunnable::Unknown(id) => format!("id {id} (unknown)"),
        },
        runnable: StoredType::runnable_names(),
    })?;
    let offset = src.u64(&what)?;
    Ok(RawInfo { name, dims, stored, offset })
}

/// Bytes of a tensor of `dims` (outermost first) in `stored`, or why there is no such tensor.
fn tensor_bytes(dims: &[u64], stored: StoredType) -> Result<u64, String> {
    let numel = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).filter(|&n| n <= i64::MAX as u64);
    let numel = numel.ok_or_else(|| format!("shape {dims:?} overflows"))?;
    let row = *dims.last().expect("at least one dimension");
    if !row.is_multiple_of(stored.block_elements()) {
        return Err(format!(
            "rows of {row} elements are not whole {} blocks of {}",
            stored.name,
            stored.block_elements()
        ));
    }
    (numel / stored.block_elements())
        .checked_mul(stored.block_bytes())
        .ok_or_else(|| format!("shape {dims:?} overflows"))
}

/// Checks offsets and sizes: aligned, inside the file, no overlap, no unexplained gap.
fn check_layout(infos: Vec<RawInfo>, data_start: u64, align: u64, len: u64) -> Parsed<Vec<TensorEntry>> {
    let mut sized = Vec::with_capacity(infos.len());
    for info in infos {
        let bad = |message: String| Problem::Tensor { tensor: info.name.clone(), message };
        let bytes = tensor_bytes(&info.dims, info.stored).map_err(bad)?;
        if !info.offset.is_multiple_of(align) {
            return Err(bad(format!("offset {} is not a multiple of the alignment {align}", info.offset)));
        }
        let end = data_start.checked_add(info.offset).and_then(|s| s.checked_add(bytes));
        if end.is_none_or(|e| e > len) {
            return Err(bad(format!("its {bytes} bytes at data offset {} run past the end of the file", info.offset)));
        }
        sized.push((info, bytes));
    }
    let mut order: Vec<usize> = (0..sized.len()).collect();
    order.sort_by_key(|&i| sized[i].0.offset);
    for pair in order.windows(2) {
        let ((a, a_bytes), (b, _)) = (&sized[pair[0]], &sized[pair[1]]);
        if a.offset + a_bytes > b.offset {
            return Err(Problem::Overlap { first: a.name.clone(), second: b.name.clone() });
        }
        let room = b.offset - a.offset;
        if (a.offset + a_bytes).div_ceil(align) * align != b.offset {
            return Err(Problem::SizeMismatch {
                tensor: a.name.clone(),
                type_name: a.stored.name,
                shape: a.dims.clone(),
                bytes: *a_bytes,
                room,
            });
        }
    }
    Ok(sized
        .into_iter()
        .map(|(i, bytes)| TensorEntry {
            shape: i.dims.iter().map(|&d| d as usize).collect(),
            stored: i.stored,
            start: data_start + i.offset,
            bytes,
            name: i.name,
        })
        .collect())
}

/// The fuzz target's harness, replayed over its corpus by `cargo test`: any bytes either are
/// refused or give an index whose tensors lie inside them, aligned and apart.
pub fn fuzz_index(data: &[u8]) {
    let Ok(index) = GgufIndex::from_bytes(data, Path::new("fuzz.gguf")) else { return };
    let mut spans: Vec<(u64, u64)> = index.tensors().iter().map(|t| (t.start, t.start + t.bytes)).collect();
    spans.sort_unstable();
    assert!(spans.last().is_none_or(|s| s.1 <= data.len() as u64), "a tensor past the end");
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "overlapping tensors");
}
