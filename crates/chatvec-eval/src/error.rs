//! What can go wrong while judging models, as data: each variant says what failed and names the
//! file, key, URL or prompt, in one line. The CLI prints it (with its causes) as one line.

use std::path::PathBuf;

/// An evaluation error.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Loading, tokenizing or running a model failed (the message names the file or setting).
    /// Not `transparent`: the inner error stays in the chain, where the CLI finds an interrupt.
    #[error("{0}")]
    Model(#[from] chatvec_gen::GenError),
    /// A checkpoint could not be read (inspect, the heatmap).
    #[error("{0}")]
    Checkpoint(#[from] chatvec_format::Error),
    /// The sweep's merge was refused or failed.
    #[error("{0}")]
    Merge(#[from] chatvec_merge::Error),
    /// A tensor operation on model outputs failed.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A file or directory could not be read or written.
    #[error("{}: cannot {what}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// read, write, create, ...
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A prompt file (or the bundled set) holds something that is not a prompt.
    #[error("{source_name}{}: {problem}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    PromptFile {
        /// The file, or "bundled prompts".
        source_name: String,
        /// 1-based line; none for the file as a whole.
        line: Option<usize>,
        /// What is wrong.
        problem: String,
    },
    /// A setting is out of range (names the flag or option).
    #[error("{0}")]
    InvalidSetting(String),
    /// The input cannot be judged as asked (a text too short, a model without a template, ...).
    #[error("{0}")]
    Input(String),
    /// The server did not answer (down, refused the connection, timed out).
    #[error("{url}: no answer: {reason}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// Why (the transport's message).
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}: {message}")]
    HttpStatus {
        /// The URL asked.
        url: String,
        /// The status code.
        status: u16,
        /// The server's message (escaped for a terminal).
        message: String,
    },
    /// The server's answer is not the JSON an OpenAI-compatible server sends.
    #[error("{url}: {problem}")]
    BadAnswer {
        /// The URL asked.
        url: String,
        /// What is missing or wrong.
        problem: String,
    },
    /// An error while answering one prompt.
    #[error("prompt {id}")]
    Prompt {
        /// The prompt's id.
        id: String,
        /// What went wrong.
        #[source]
        source: Box<EvalError>,
    },
    /// Drawing a plot failed.
    #[error("{}: cannot draw the plot: {message}", path.display())]
    Plot {
        /// The image written.
        path: PathBuf,
        /// The drawing library's message.
        message: String,
    },
    /// Writing JSON failed.
    #[error("cannot serialize the result: {0}")]
    Json(#[from] serde_json::Error),
    /// Stopped by Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

/// A result of this crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

impl EvalError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        EvalError::Io { path: path.into(), what, source }
    }

    /// This error in prompt `id`.
    pub fn in_prompt(self, id: &str) -> Self {
        EvalError::Prompt { id: id.to_string(), source: Box::new(self) }
    }
}
