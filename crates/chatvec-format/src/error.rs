//! One error type for the core; every message names the file (and tensor) it is about.

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
    /// A file whose contents are not what its format promises (corrupt, truncated, bad JSON).
    #[error("{}: {msg}", path.display())]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
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
    /// The run was stopped by the user (Ctrl-C).
    #[error("interrupted; nothing was written")]
    Interrupted,
    /// A download stopped by the user (Ctrl-C); its partial file stays for the next run.
    #[error("interrupted; the partial download {} is kept, and the next run resumes it", partial.display())]
    DownloadInterrupted {
        /// The `.incomplete` file.
        partial: PathBuf,
    },
    /// Anything else, already worded for the user.
    #[error("{0}")]
    Msg(String),
}

impl Error {
    /// An error with a ready message.
    pub fn msg(m: impl Into<String>) -> Self {
        Error::Msg(m.into())
    }
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    /// A format error in `path`.
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    /// An error about tensor `name`.
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { name: name.into(), msg: msg.into() }
    }
}

/// The core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
