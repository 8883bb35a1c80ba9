//! The merge engine's errors: a refused job (ratios, vectors, outputs, a base/chat pair that do
//! not belong together), or an error of the checkpoints it reads and writes.

use std::path::PathBuf;

/// What stopped a merge, extract or apply, with the file or value it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A checkpoint read or written (see [`chatvec_format::Error`]).
    #[error(transparent)]
    Model(#[from] chatvec_format::Error),
    /// A base and a chat model that differ where a fine-tune cannot.
    #[error(
        "base {} and chat {} differ in {difference}: the chat model was not fine-tuned from this base",
        base.display(),
        chat.display()
    )]
    NotAFineTune {
        /// The base model's directory.
        base: PathBuf,
        /// The chat model's directory.
        chat: PathBuf,
        /// What differs, with both values.
        difference: String,
    },
    /// A merge given no ratio.
    #[error("merge needs at least one ratio")]
    NoRatio,
    /// Two ratios given the same output path.
    #[error("{}: two ratios would write the same output", path.display())]
    SameOutputTwice {
        /// The output path.
        path: PathBuf,
    },
    /// An apply given no vector.
    #[error("apply needs at least one --vector")]
    NoVector,
    /// A vector directory without a `chatvec.json` written by `chatvec extract`.
    #[error("{}: not a chat vector written by `chatvec extract`", path.display())]
    NotAChatVector {
        /// The directory (when it has no `chatvec.json`) or its `chatvec.json`.
        path: PathBuf,
    },
    /// A plan in which no tensor gets the vector: the output would be a copy of the target.
    #[error(
        "no tensor gets the vector: {inputs} share no selected tensor ({planned} tensors in the plan), so the \
         output would only copy the target"
    )]
    EmptyVector {
        /// The inputs, as the user named them.
        inputs: String,
        /// The tensors in the plan.
        planned: usize,
    },
    /// An output that would overwrite or lie inside an input model.
    #[error(
        "{}: the output would overwrite the input model {} or lie inside it; choose another --output",
        output.display(),
        input.display()
    )]
    OutputOverwritesInput {
        /// The output path (with symlinks resolved).
        output: PathBuf,
        /// The input model's directory.
        input: PathBuf,
    },
    /// Too little free space where the output goes.
    #[error(
        "{}: not enough free disk space: the output needs {}, {} are free",
        dir.display(),
        crate::ops::human_bytes(*need),
        crate::ops::human_bytes(*free)
    )]
    NotEnoughSpace {
        /// The directory the output goes in.
        dir: PathBuf,
        /// The bytes the output needs.
        need: u64,
        /// The bytes free.
        free: u64,
    },
    /// An `--include`/`--exclude` pattern that is not a regular expression.
    #[error("bad regex {pattern:?}: {source}")]
    BadRegex {
        /// The pattern as given.
        pattern: String,
        /// The regex crate's error.
        source: regex::Error,
    },
    /// An extraction plan without a base model: a bug in the caller, not bad input.
    #[error("extract needs a base model")]
    ExtractWithoutBase,
    /// A feature-porter merge without a target and a base: a bug in the caller, not bad input.
    #[error("feature-porter needs a target and a base model")]
    PorterWithoutBase,
}

impl Error {
    /// Whether the user stopped the run (Ctrl-C): the CLI exits with its own code then.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, Error::Model(chatvec_format::Error::Interrupted))
    }
}

/// The merge engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
