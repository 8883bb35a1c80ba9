//! The lab's errors: a file of the lab's data or models that cannot be read or written, a
//! checkpoint that is not the lab's shape, a training run that diverges, or an error of the
//! libraries it drives (candle, the merge engine, generation, evaluation), each naming what it
//! was doing.

use std::path::PathBuf;

/// An error of the tokenizers crate (a boxed error).
type TokenizerError = Box<dyn std::error::Error + Send + Sync>;

/// What stopped a lab step, with the file, tensor or step it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file (or one line of a JSON-lines file) that does not parse.
    #[error("{}{}: not valid JSON: {source}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Json {
        /// The file.
        path: PathBuf,
        /// The line, in a JSON-lines file.
        line: Option<usize>,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A value that does not serialize as JSON (not expected of the lab's plain records).
    #[error("serializing JSON: {0}")]
    Serialize(#[from] serde_json::Error),
    /// A tokenizer that cannot be loaded.
    #[error("{}: {source}", path.display())]
    LoadTokenizer {
        /// The `tokenizer.json`.
        path: PathBuf,
        /// The tokenizers crate's error.
        source: TokenizerError,
    },
    /// Text the tokenizer cannot encode, or ids it cannot decode.
    #[error("{step}: {source}")]
    Tokenize {
        /// "tokenizing" or "decoding".
        step: &'static str,
        /// The tokenizers crate's error.
        source: TokenizerError,
    },
    /// A lab checkpoint without one of the lab model's parameters.
    #[error("{}: missing {name}", path.display())]
    MissingTensor {
        /// The `model.safetensors`.
        path: PathBuf,
        /// The parameter.
        name: String,
    },
    /// A lab checkpoint parameter of another shape than the lab model's.
    #[error("{name}: shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The parameter.
        name: String,
        /// Its shape in the file.
        found: Vec<usize>,
        /// The lab model's.
        expected: Vec<usize>,
    },
    /// A parameter the model does not hold (a bug in the lab, not bad input).
    #[error("no parameter {0}")]
    NoParameter(String),
    /// A sequence longer than the model's positions.
    #[error("{tokens} tokens, more than the model's {max}")]
    TooManyTokens {
        /// The sequence's length.
        tokens: usize,
        /// The model's positions.
        max: usize,
    },
    /// A training corpus shorter than one sequence.
    #[error("corpus shorter than one sequence ({tokens} tokens, sequences of {seq})")]
    CorpusTooShort {
        /// The corpus's tokens.
        tokens: usize,
        /// The sequence length asked for.
        seq: usize,
    },
    /// A training run whose loss stopped being a number.
    #[error("loss became {loss} at step {step}")]
    Diverged {
        /// The loss.
        loss: f32,
        /// The step.
        step: usize,
    },
    /// The plot that cannot be drawn or written.
    #[error("{}: drawing the plot: {message}", path.display())]
    Plot {
        /// The image file.
        path: PathBuf,
        /// The plotting library's message.
        message: String,
    },
    /// A tensor operation of the trainer.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A model folder that does not resolve.
    #[error("resolving {}: {source}", path.display())]
    Resolve {
        /// The folder.
        path: PathBuf,
        /// The hub crate's error.
        source: Box<chatvec_hub::Error>,
    },
    /// A merge of the family.
    #[error("merging into {}: {source}", output.display())]
    Merge {
        /// The merged model's folder.
        output: PathBuf,
        /// The merge engine's error.
        source: Box<chatvec_merge::Error>,
    },
    /// A bad `--exclude` pattern of an entry, or another refused merge setting.
    #[error(transparent)]
    MergeSettings(#[from] Box<chatvec_merge::Error>),
    /// A model that chatvec-gen cannot load.
    #[error("loading {}: {source}", dir.display())]
    LoadModel {
        /// The model's folder.
        dir: PathBuf,
        /// The generator's error.
        source: Box<chatvec_gen::GenError>,
    },
    /// A generation step.
    #[error(transparent)]
    Generate(#[from] Box<chatvec_gen::GenError>),
    /// A perplexity measurement (chatvec-eval's error).
    #[error("perplexity: {0}")]
    Perplexity(Box<dyn std::error::Error + Send + Sync>),
}

impl From<chatvec_merge::Error> for Error {
    fn from(e: chatvec_merge::Error) -> Self {
        Error::MergeSettings(Box::new(e))
    }
}

impl From<chatvec_gen::GenError> for Error {
    fn from(e: chatvec_gen::GenError) -> Self {
        Error::Generate(Box::new(e))
    }
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// The lab's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
