//! Errors of the generation library: each names the file or the setting at fault, on one line.

use std::path::PathBuf;

/// Result alias for chatvec-gen.
pub type Result<T> = std::result::Result<T, GenError>;

/// What can go wrong when loading a model, rendering a prompt or generating.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A JSON file is malformed or lacks a required field.
    #[error("{path}: {message}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A model file the checkpoint library refused (too large, unreadable, malformed).
    #[error("{0}")]
    ModelFile(#[from] chatvec_format::Error),
    /// The directory is not a model directory.
    #[error("{0}")]
    NotAModel(String),
    /// The architecture named in config.json is not implemented.
    #[error("unsupported architecture {name} in {path}; supported: {supported}")]
    UnsupportedArchitecture {
        /// The `architectures` (or `model_type`) value.
        name: String,
        /// The config file.
        path: PathBuf,
        /// The accepted names.
        supported: String,
    },
    /// A config value this implementation cannot honour.
    #[error("{path}: {message}")]
    UnsupportedConfig {
        /// The config file.
        path: PathBuf,
        /// The setting and why.
        message: String,
    },
    /// A weight is missing or has the wrong shape.
    #[error("weights in {dir}: {message}")]
    Weights {
        /// The model directory.
        dir: PathBuf,
        /// The tensor and what is wrong.
        message: String,
    },
    /// The model has no chat template.
    #[error("{0}")]
    NoChatTemplate(String),
    /// The chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),
    /// Tokenizer failure.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A user-supplied option is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// A sequence longer than the model's context (`max_position_embeddings`).
    #[error(
        "{tokens} tokens do not fit the model's context of {limit} positions (max_position_embeddings); \
         shorten the prompt or pass --truncate left"
    )]
    ContextFull {
        /// Tokens the sequence needs.
        tokens: usize,
        /// Positions the model has.
        limit: usize,
    },
    /// The model produced NaN or infinite logits (broken or overflowing weights).
    #[error("the model's logits are not finite ({count} of {vocab} are NaN or infinite) at generated token {step}: its weights are broken or overflow in this dtype")]
    NonFiniteLogits {
        /// How many logits are NaN or infinite.
        count: usize,
        /// The vocabulary size.
        vocab: usize,
        /// The generated token at which it happened.
        step: usize,
    },
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

impl GenError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GenError::Io { path: path.into(), source }
    }

    pub(crate) fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        GenError::BadFile { path: path.into(), message: message.into() }
    }
}
