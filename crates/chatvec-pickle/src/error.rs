//! The reader's errors: what is wrong, with which file, entry or tensor. Every message is one
//! line.

use std::path::PathBuf;

/// The reader's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the tensors of a checkpoint could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file as a whole is not a checkpoint this reader can list.
    #[error("{}: {reason}", path.display())]
    File {
        /// The checkpoint.
        path: PathBuf,
        /// What is wrong with it.
        reason: FileError,
    },
    /// One tensor of an otherwise readable checkpoint cannot be located.
    #[error("tensor {name}: {reason} in {}", path.display())]
    Tensor {
        /// The state-dict key.
        name: String,
        /// The checkpoint.
        path: PathBuf,
        /// What is wrong with the tensor.
        reason: TensorError,
    },
}

/// What makes a whole file unreadable.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A bare pickle or tar archive: torch before 1.6, or `_use_new_zipfile_serialization=False`.
    #[error("legacy (pre-1.6) torch format not supported; re-save with torch>=1.6 or convert to safetensors")]
    Legacy,
    /// Neither a zip archive nor a legacy checkpoint.
    #[error("not a PyTorch checkpoint (no zip signature at the start)")]
    NotZip,
    /// The zip structure or one of its entries.
    #[error(transparent)]
    Zip(#[from] ZipError),
    /// The `byteorder` entry names another order than `little`.
    #[error("byte order {0:?} not supported (only little-endian checkpoints)")]
    ByteOrder(String),
    /// The pickle in `entry` could not be run.
    #[error("{entry}: {source}")]
    Pickle {
        /// The pickle's zip entry (`archive/data.pkl`).
        entry: String,
        /// What stopped it.
        source: PickleError,
    },
    /// The pickle ran, but what it built is not a flat state dict.
    #[error("{entry}: {problem}")]
    NotAStateDict {
        /// The pickle's zip entry.
        entry: String,
        /// How it differs from a state dict.
        problem: StateDictError,
    },
}

/// How the unpickled object differs from a flat `name -> tensor` dict.
#[derive(Debug, thiserror::Error)]
pub enum StateDictError {
    /// Something other than a dict.
    #[error("the pickled object is not a dict of tensors")]
    NotADict,
    /// One bare tensor.
    #[error("the pickled object is a single tensor, not a state dict")]
    SingleTensor,
    /// A tensor under a number or other non-string key.
    #[error("a tensor is stored under a non-string key")]
    NonStringKey,
    /// A dict of tensors inside the dict (a training checkpoint with `model`, `optimizer`...).
    #[error(
        "value {0:?} is a nested dict of tensors (a training checkpoint?); expected a flat state dict of name -> tensor"
    )]
    Nested(String),
}

/// A zip archive, or one of its entries, that cannot be read in place.
#[derive(Debug, thiserror::Error)]
pub enum ZipError {
    /// The central directory could not be read.
    #[error("not a readable zip archive ({0}); is the file truncated?")]
    Unreadable(String),
    /// No `<folder>/data.pkl`.
    #[error("zip archive has no data.pkl entry; not a torch.save checkpoint")]
    NoPickle,
    /// Several `<folder>/data.pkl`, so the checkpoint's folder is ambiguous.
    #[error("zip archive has {} data.pkl entries ({}); cannot tell which is the checkpoint", .0.len(), .0.join(", "))]
    ManyPickles(Vec<String>),
    /// A required entry is absent.
    #[error("zip archive has no entry {0}")]
    Missing(String),
    /// The entry's local header cannot be read.
    #[error("zip entry {entry}: {reason}; is the file truncated?")]
    BadEntry {
        /// The entry's name.
        entry: String,
        /// The zip crate's message.
        reason: String,
    },
    /// The entry is compressed, so its bytes cannot be read in place.
    #[error(
        "zip entry {entry} is compressed (method {method}); torch writes uncompressed entries, re-save with torch.save or convert to safetensors"
    )]
    Compressed {
        /// The entry's name.
        entry: String,
        /// The compression method.
        method: String,
    },
    /// The entry is encrypted.
    #[error("zip entry {0} is encrypted")]
    Encrypted(String),
    /// A stored entry whose compressed and uncompressed sizes differ.
    #[error("zip entry {entry} is stored but its sizes disagree ({compressed} vs {size})")]
    SizesDisagree {
        /// The entry's name.
        entry: String,
        /// Its compressed size.
        compressed: u64,
        /// Its size.
        size: u64,
    },
    /// The entry's data offset is unknown.
    #[error("zip entry {0}: cannot locate its data")]
    NoDataStart(String),
    /// The entry's bytes end beyond the file.
    #[error("zip entry {entry} runs past the end of the file ({file_len} bytes); the file is truncated")]
    PastEnd {
        /// The entry's name.
        entry: String,
        /// The file's length.
        file_len: usize,
    },
}

/// Why one tensor cannot be handed out.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    /// Its storage's zip entry.
    #[error(transparent)]
    Storage(#[from] ZipError),
    /// An element type the reader does not hand out (e.g. `torch.uint16`, complex, quantized).
    #[error("unsupported dtype {0}")]
    UnsupportedDtype(String),
    /// A torch object that is not a plain tensor (sparse, quantized, a tensor subclass...).
    #[error("unsupported pickle global {0}")]
    UnsupportedGlobal(String),
    /// `size` and `stride` have different lengths.
    #[error("size has {shape} dims but stride has {stride}")]
    RankMismatch {
        /// Dimensions in `size`.
        shape: usize,
        /// Dimensions in `stride`.
        stride: usize,
    },
    /// The element count or byte range does not fit in memory addresses.
    #[error("tensor of shape {shape:?} at storage offset {offset} overflows")]
    Overflow {
        /// The shape.
        shape: Vec<usize>,
        /// The storage offset in elements.
        offset: usize,
    },
    /// A view with a layout other than C-contiguous (a transpose, a slice with steps).
    #[error(
        "non-contiguous tensor (shape {shape:?}, stride {stride:?}) not supported; save it with .contiguous() or convert to safetensors"
    )]
    NonContiguous {
        /// The shape.
        shape: Vec<usize>,
        /// The strides in elements.
        stride: Vec<i64>,
    },
    /// The tensor's bytes reach past its storage.
    #[error(
        "needs bytes {start}..{end} of storage {storage} but its zip entry holds only {len} bytes (truncated or corrupt file)"
    )]
    PastStorage {
        /// The storage's key.
        storage: String,
        /// First byte needed.
        start: usize,
        /// One past the last byte needed.
        end: usize,
        /// Bytes in the storage's entry.
        len: usize,
    },
}

/// Why the pickle interpreter stopped. `at` is a byte offset within the pickle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickleError {
    /// The stream ends before its STOP opcode.
    #[error("pickle ends without STOP (truncated?)")]
    NoStop,
    /// An operand runs past the end of the stream.
    #[error("pickle ends early at byte {0} (truncated?)")]
    Truncated(usize),
    /// A length operand larger than the rest of the stream.
    #[error("pickle length {len} at byte {at} runs past its end")]
    LengthPastEnd {
        /// The length read.
        len: u64,
        /// Where.
        at: usize,
    },
    /// A protocol newer than 5.
    #[error("unsupported pickle protocol {0}")]
    Protocol(u8),
    /// An opcode this reader does not implement (plain data never needs it).
    #[error("unsupported pickle opcode 0x{op:02x} at byte {at}")]
    Opcode {
        /// The opcode.
        op: u8,
        /// Where.
        at: usize,
    },
    /// Text that is not UTF-8 (`what` says which).
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// An opcode needs more values than the stack holds.
    #[error("pickle stack underflow at byte {0}")]
    StackUnderflow(usize),
    /// An opcode needs a MARK that was never set.
    #[error("pickle MARK missing at byte {0}")]
    MarkMissing(usize),
    /// A memo read before any write to it.
    #[error("pickle memo entry {0} read before it was written")]
    MemoMissing(u64),
    /// The work budget ran out: the pickle reuses big objects far more than a checkpoint does.
    #[error("pickle needs too much work for its size (hostile?) at byte {0}")]
    TooMuchWork(usize),
    /// The memory budget ran out, for the same reason.
    #[error("pickle needs too much memory for its size (hostile?) at byte {0}")]
    TooMuchMemory(usize),
    /// An opcode applied to a value of the wrong kind.
    #[error("{op} on {found}")]
    WrongOperand {
        /// The opcode's name.
        op: &'static str,
        /// What it found instead.
        found: &'static str,
    },
    /// A persistent id that is not torch's `('storage', class, key, location, numel)`.
    #[error("persistent id {0}")]
    PersistentId(String),
    /// A call to an allow-listed torch or collections function with arguments it never takes.
    #[error("{func}: {problem}")]
    BadCall {
        /// The function's name.
        func: String,
        /// What is wrong with the arguments.
        problem: String,
    },
}
