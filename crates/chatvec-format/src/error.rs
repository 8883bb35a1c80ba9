//! The error type of model files and outputs (read by format, and shared by merge, hub and gguf):
//! one specific variant per problem, each naming the file, tensor or key it is about.

use std::path::{Path, PathBuf};

/// What went wrong, specific enough to tell the user which file or tensor to look at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A tensor that cannot take part as asked (shape, dtype, missing).
    #[error("tensor {name}: {msg}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// A JSON metadata file over the size cap (see [`crate::metadata`]).
    #[error("{}: {size} bytes, larger than the {cap} bytes a model's JSON metadata file may have", path.display())]
    MetadataTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (or the bytes read before stopping).
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// An input file changed while the run read it; the output was not written.
    #[error("{}: changed while it was read ({what}); the output was not written", path.display())]
    InputChanged {
        /// The input file.
        path: PathBuf,
        /// How it changed.
        what: String,
    },
    /// A model directory that does not exist.
    #[error("{}: no such model directory", dir.display())]
    NoModelDir {
        /// The directory asked for.
        dir: PathBuf,
    },
    /// A model directory with neither safetensors nor PyTorch weights.
    #[error(
        "{}: no weights found (looked for model.safetensors[.index.json] and pytorch_model.bin[.index.json])",
        dir.display()
    )]
    NoWeights {
        /// The model directory.
        dir: PathBuf,
    },
    /// Weight files that hold no tensor at all.
    #[error("{}: the weight files hold no tensors", dir.display())]
    NoTensors {
        /// The model directory.
        dir: PathBuf,
    },
    /// A tensor that two weight files both hold.
    #[error("{}: tensor {tensor} also appears in another shard", path.display())]
    DuplicateTensor {
        /// The second file holding it.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
    },
    /// An index that places a tensor in a file that does not hold it.
    #[error("{}: tensor {tensor} is listed in {file} but that file does not hold it", index.display())]
    TensorNotInListedFile {
        /// The index file.
        index: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The weight file the index names for it.
        file: String,
    },
    /// A weight file name, given by an index or found in a model directory, that chatvec refuses.
    #[error("{}: names {name}, {why}", named_in.display())]
    BadShardName {
        /// The file that names it (the index, or the weight file itself).
        named_in: PathBuf,
        /// The name as written.
        name: String,
        /// Why it is refused ("which is missing", "which lies outside the model directory"...).
        why: &'static str,
    },
    /// An index without a usable `weight_map`.
    #[error("{}: {problem}", path.display())]
    BadWeightMap {
        /// The index file.
        path: PathBuf,
        /// What is wrong with its `weight_map`.
        problem: WeightMapProblem,
    },
    /// A safetensors file whose header cannot be read.
    #[error("{}: {}", path.display(), safetensors_problem(problem))]
    SafetensorsHeader {
        /// The weight file.
        path: PathBuf,
        /// The safetensors crate's error (worded by the message, so not a `source` to repeat).
        problem: safetensors::SafeTensorError,
    },
    /// A PyTorch checkpoint the pickle reader refused (about the file, or about one tensor).
    #[error(transparent)]
    Torch(#[from] chatvec_pickle::Error),
    /// A JSON file that does not parse.
    #[error("{}: not valid JSON: {source}", path.display())]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// The parser's error (line and column).
        source: serde_json::Error,
    },
    /// A JSON file whose top level is not an object.
    #[error("{}: expected a JSON object", path.display())]
    NotJsonObject {
        /// The file.
        path: PathBuf,
    },
    /// A text file that is not UTF-8.
    #[error("{}: not UTF-8 text", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// A value under `key` of a JSON file that is not what chatvec needs there.
    #[error("{}: `{key}` {problem}", path.display())]
    BadKey {
        /// The JSON file.
        path: PathBuf,
        /// The key, with its index or member (`chat_template[2]`, `eos_token_id`).
        key: String,
        /// What is wrong, worded to follow the key ("is a number, not a string").
        problem: String,
    },
    /// A value under `key` of a JSON file that should be a token id and is not.
    #[error("{}: `{key}`: {value} is not a token id (a whole number below 2^32)", path.display())]
    NotATokenId {
        /// The JSON file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The value as JSON.
        value: String,
    },
    /// A token id beyond the vocabulary, under `key` of a JSON file.
    #[error("{}: `{key}`: token id {id} is beyond the vocabulary of {vocab} tokens", path.display())]
    TokenIdBeyondVocab {
        /// The JSON file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A list of chat templates that cannot be stored because the output has no
    /// `tokenizer_config.json` to hold it.
    #[error("{}: missing; cannot store a list of chat templates", path.display())]
    NoTokenizerConfig {
        /// The `tokenizer_config.json` that is missing.
        path: PathBuf,
    },
    /// An output that exists, without `--force`.
    #[error("{}: already exists (use --force to replace it)", path.display())]
    OutputExists {
        /// The output path.
        path: PathBuf,
    },
    /// An output that appeared while chatvec wrote its temporary copy.
    #[error("{}: appeared while writing; not replaced", path.display())]
    OutputAppeared {
        /// The output path.
        path: PathBuf,
    },
    /// An output path chatvec cannot place (no file name, or a parent that is no directory).
    #[error("{}: {problem}", path.display())]
    BadOutputPath {
        /// The output path.
        path: PathBuf,
        /// What is wrong with it.
        problem: OutputPathProblem,
    },
    /// An output that would land inside one of the inputs.
    #[error("{}: the output lies inside the input model {}; write it elsewhere", path.display(), input.display())]
    OutputInsideInput {
        /// The output path.
        path: PathBuf,
        /// The input model's directory.
        input: PathBuf,
    },
    /// Too little free space where an output file goes.
    #[error(
        "{}: not enough free disk space: the output needs {:.2} GB, {:.2} GB are free",
        dir.display(),
        *need as f64 / 1e9,
        *free as f64 / 1e9
    )]
    NotEnoughSpace {
        /// The directory the output goes in.
        dir: PathBuf,
        /// The bytes the output needs.
        need: u64,
        /// The bytes free.
        free: u64,
    },
    /// A model whose architecture a step does not support.
    #[error("{}: {step} supports {supported}, not {found:?}", path.display())]
    UnsupportedArchitecture {
        /// The `config.json`.
        path: PathBuf,
        /// The step ("GGUF export").
        step: &'static str,
        /// What it supports, for the user.
        supported: &'static str,
        /// The `architectures` entry found.
        found: String,
    },
    /// A model without `architectures`, whose `model_type` a step does not know.
    #[error(
        "{}: no `architectures`, and `model_type` {model_type:?} is not one {step} supports ({supported})",
        path.display()
    )]
    UnknownModelType {
        /// The `config.json`.
        path: PathBuf,
        /// The step ("GGUF export").
        step: &'static str,
        /// The model types it supports.
        supported: &'static str,
        /// The `model_type` found (empty when none).
        model_type: String,
    },
    /// A model directory without a file a step needs.
    #[error("{}: {step} needs {file}", dir.display())]
    MissingFile {
        /// The model directory.
        dir: PathBuf,
        /// The step ("Gemma export").
        step: &'static str,
        /// The file (or files) it needs.
        file: &'static str,
    },
    /// A tokenizer file that cannot be read as its format says.
    #[error("{}: {problem}", path.display())]
    BadTokenizer {
        /// `tokenizer.json` or `tokenizer.model`.
        path: PathBuf,
        /// What is wrong, with the token or field it is about.
        problem: String,
    },
    /// A name that is not one of a fixed list (a GGUF type...).
    #[error("unknown {what} {name:?}; use one of {known}")]
    UnknownName {
        /// What kind of name ("GGUF type").
        what: &'static str,
        /// The name given.
        name: String,
        /// The names accepted, comma-separated.
        known: String,
    },
    /// Values that the quantizer refused.
    #[error("quantizing to {to}: {source}")]
    Quantize {
        /// The target type.
        to: String,
        /// The quantizer's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A write of a tensor's bytes that failed.
    #[error("{}: writing tensor {tensor}: {source}", path.display())]
    WriteTensor {
        /// The output file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A writer given more bytes than its layout holds: a bug in the caller, not bad input.
    #[error("more data than the layout holds (internal error)")]
    LayoutOverflow,
    /// A stream of tensors that ended before the layout was full: a bug in the caller.
    #[error("the input stopped before every tensor of the layout was written (internal error)")]
    LayoutIncomplete,
    /// The run was stopped by the user (Ctrl-C).
    #[error("interrupted; nothing was written")]
    Interrupted,
    /// A download stopped by the user (Ctrl-C); its partial file stays for the next run.
    #[error("interrupted; the partial download {} is kept, and the next run resumes it", partial.display())]
    DownloadInterrupted {
        /// The `.incomplete` file.
        partial: PathBuf,
    },
}

/// What is wrong with an index's `weight_map`.
#[derive(Debug, thiserror::Error)]
pub enum WeightMapProblem {
    /// There is none, or it is not an object.
    #[error("no weight_map object")]
    Missing,
    /// It names no tensors.
    #[error("weight_map is empty: the index names no tensors")]
    Empty,
    /// One entry's value is not a string.
    #[error("weight_map[{tensor}] is not a file name")]
    NotAFileName {
        /// The tensor whose entry it is.
        tensor: String,
    },
}

/// What is wrong with an output path.
#[derive(Debug, thiserror::Error)]
pub enum OutputPathProblem {
    /// It ends in `..` or is a root: there is no name to give the output.
    #[error("not a usable output path")]
    NoFileName,
    /// Its parent exists and is a file.
    #[error("{} is not a directory", .0.display())]
    ParentNotADirectory(PathBuf),
    /// Its parent does not exist.
    #[error("parent directory does not exist")]
    NoParentDirectory,
    /// It is an existing directory where a file is written.
    #[error("is a directory; give a file name such as {0}")]
    IsADirectory(&'static str),
}

/// The one line for a safetensors header the crate refused.
fn safetensors_problem(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => "truncated or padded: the header's offsets do not match the file size".into(),
        E::HeaderTooSmall | E::InvalidHeaderLength => "truncated or not a safetensors file (bad header length)".into(),
        other => format!("corrupt safetensors header ({other})"),
    }
}

impl Error {
    /// An invalid-JSON error on `path`.
    pub fn json(path: impl AsRef<Path>, source: serde_json::Error) -> Self {
        Error::InvalidJson { path: path.as_ref().to_path_buf(), source }
    }
    /// A refused value under `key` of the JSON file `path`.
    pub fn bad_key(path: impl AsRef<Path>, key: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::BadKey { path: path.as_ref().to_path_buf(), key: key.into(), problem: problem.into() }
    }
    /// A refused output path.
    pub fn bad_output(path: impl AsRef<Path>, problem: OutputPathProblem) -> Self {
        Error::BadOutputPath { path: path.as_ref().to_path_buf(), problem }
    }
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    /// An error about tensor `name`.
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { name: name.into(), msg: msg.into() }
    }
}

/// The core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
