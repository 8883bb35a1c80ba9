//! The hub's errors: a model argument that names nothing, a refused or broken download, a cache
//! that is not as the hub left it, or an error of the files read and written on the way.

use std::path::PathBuf;

/// What stopped a model from resolving or downloading, with the repo, file or URL it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file read or written (see [`chatvec_format::Error`]).
    #[error(transparent)]
    Model(#[from] chatvec_format::Error),
    /// A model argument that is an existing file, not a folder.
    #[error("{spec}: not a directory (give the model's folder, not a file in it)")]
    NotADirectory {
        /// The argument.
        spec: String,
    },
    /// A model argument that is neither a folder nor a hub id.
    #[error("{spec}: no such directory, and not a hub id of the form org/name[@revision]")]
    NotAModel {
        /// The argument.
        spec: String,
    },
    /// A hub id whose revision is not a branch, tag or commit hash.
    #[error("{spec}: `{revision}` is not a revision (give a branch or tag name, or a commit hash)")]
    BadRevisionInId {
        /// The argument.
        spec: String,
        /// Its revision part.
        revision: String,
    },
    /// A revision that is not a branch, tag or commit hash.
    #[error("`{revision}` is not a revision (a branch or tag name, or a commit hash)")]
    NotARevision {
        /// The revision.
        revision: String,
    },
    /// A model the cache lacks while offline.
    #[error("{spec}: {why} (offline: HF_HUB_OFFLINE or --offline is set)")]
    Offline {
        /// The argument.
        spec: String,
        /// What the cache lacks, naming the folder searched.
        why: String,
    },
    /// An `HF_HUB_DOWNLOAD_TIMEOUT` that is not a positive number of seconds.
    #[error("HF_HUB_DOWNLOAD_TIMEOUT={value:?}: expected a positive number of seconds")]
    BadDownloadTimeout {
        /// The variable's value.
        value: String,
    },
    /// A ref file in the cache that does not hold a commit hash.
    #[error("{}: does not hold a commit hash (40 hex digits)", path.display())]
    BadRef {
        /// The ref file.
        path: PathBuf,
    },
    /// A snapshot folder that resolves outside the cache's `snapshots/`.
    #[error("{}: resolves to {}, which is not a snapshot folder inside {}", snap.display(), real.display(), snapshots.display())]
    SnapshotOutside {
        /// The snapshot folder.
        snap: PathBuf,
        /// Where it resolves.
        real: PathBuf,
        /// The `snapshots/` folder it should be in.
        snapshots: PathBuf,
    },
    /// A hub that cannot be reached.
    #[error(
        "{id}: cannot reach {endpoint} ({source}); to use cached models only, set HF_HUB_OFFLINE=1 or pass --offline"
    )]
    Unreachable {
        /// The model (`org/name@revision`).
        id: String,
        /// The hub's address.
        endpoint: String,
        /// The HTTP client's error.
        source: ureq::Error,
    },
    /// An answer to the model-info request that is not one.
    #[error("{url}: the hub's answer is not a model's info ({source})")]
    NotModelInfo {
        /// The request's URL.
        url: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A model info whose commit is not a commit hash.
    #[error("{url}: the hub gave `{sha}`, which is not a commit hash")]
    NotACommit {
        /// The request's URL.
        url: String,
        /// What it gave.
        sha: String,
    },
    /// Redirects that did not end.
    #[error("{url}: too many redirects")]
    TooManyRedirects {
        /// The last URL.
        url: String,
    },
    /// A file's answer without a header chatvec needs (commit, ETag, size).
    #[error("{id}/{file}: the hub sent no usable {header}")]
    MissingHeader {
        /// The model.
        id: String,
        /// The file.
        file: String,
        /// The header, as the user should look for it.
        header: &'static str,
    },
    /// A JSON metadata file the hub announces larger than chatvec reads.
    #[error(
        "{id}/{file}: the hub announces {size} bytes, more than the {cap} bytes a model's JSON metadata file \
         may have; nothing was downloaded"
    )]
    MetadataTooLarge {
        /// The model.
        id: String,
        /// The file.
        file: String,
        /// The announced size.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// A repo without weights chatvec reads.
    #[error("{repo} has no weights chatvec reads (model.safetensors[.index.json] or pytorch_model.bin[.index.json])")]
    NoWeightsInRepo {
        /// The model.
        repo: String,
    },
    /// An index naming a shard the repo does not list.
    #[error("{repo}: {index} names {shard}, which the repo does not have")]
    ShardNotInRepo {
        /// The model.
        repo: String,
        /// The index file.
        index: String,
        /// The shard it names.
        shard: String,
    },
    /// A gated repo the token has no access to.
    #[error(
        "{repo} is gated and your token has no access to it: accept the licence on {page} with that account, \
         or set HF_TOKEN to a token of an account that has (or run `huggingface-cli login`)"
    )]
    GatedNoAccess {
        /// The repo.
        repo: String,
        /// Its page on the hub.
        page: String,
    },
    /// A gated repo asked for without a token.
    #[error("{repo} is gated: accept the licence on {page}, then set HF_TOKEN or run `huggingface-cli login`")]
    Gated {
        /// The repo.
        repo: String,
        /// Its page on the hub.
        page: String,
    },
    /// A repo the hub does not have (or hides).
    #[error(
        "{repo}: no such model on {endpoint} (if it is private, {})",
        if *has_token { "your token cannot see it" } else { "set HF_TOKEN or run `huggingface-cli login`" }
    )]
    RepoNotFound {
        /// The repo.
        repo: String,
        /// The hub's address.
        endpoint: String,
        /// Whether a token was sent.
        has_token: bool,
    },
    /// A revision the hub does not have.
    #[error("{repo}: no revision `{revision}` on the hub (give a branch, tag or commit hash)")]
    RevisionNotFound {
        /// The repo.
        repo: String,
        /// The revision.
        revision: String,
    },
    /// A file the hub does not have at that revision.
    #[error("{repo}@{revision}: the hub has no file {file}")]
    EntryNotFound {
        /// The repo.
        repo: String,
        /// The revision.
        revision: String,
        /// The file.
        file: String,
    },
    /// A request refused for want of credentials.
    #[error(
        "{repo}: the hub refused the request (HTTP 401{}); set HF_TOKEN or run `huggingface-cli login`",
        with_colon(message)
    )]
    Unauthorized {
        /// The repo.
        repo: String,
        /// The hub's `X-Error-Message`, if any.
        message: String,
    },
    /// Any other HTTP refusal.
    #[error("{repo}@{revision}: {page} answered HTTP {status}{}", with_colon(message))]
    HttpStatus {
        /// The repo.
        repo: String,
        /// The revision.
        revision: String,
        /// The repo's page.
        page: String,
        /// The HTTP status.
        status: u16,
        /// The hub's `X-Error-Message`, if any.
        message: String,
    },
    /// A transfer that kept failing; the partial file is kept for the next run.
    #[error(
        "{id}/{file}: the connection kept dropping ({why}); {have} of {size} bytes are kept in {}, run again to resume",
        partial.display()
    )]
    ConnectionDropped {
        /// The model.
        id: String,
        /// The file.
        file: String,
        /// The last failure.
        why: String,
        /// The bytes kept.
        have: u64,
        /// The file's size.
        size: u64,
        /// The `.incomplete` file.
        partial: PathBuf,
    },
    /// A transfer longer than the hub announced; the partial file is removed.
    #[error("{id}/{file}: the hub sent more than the {size} bytes it announced; the partial file was removed")]
    TooManyBytes {
        /// The model.
        id: String,
        /// The file.
        file: String,
        /// The announced size.
        size: u64,
    },
    /// Downloaded bytes whose hash is not the hub's; the file is removed.
    #[error("{file}: the downloaded bytes have {kind} {got}, the hub says {want}; the file was removed, run again")]
    HashMismatch {
        /// The file.
        file: String,
        /// The hash ("sha256", "git blob id").
        kind: &'static str,
        /// The hash of the bytes.
        got: String,
        /// The hub's.
        want: String,
    },
    /// A download stopped by the user (Ctrl-C); its partial file stays for the next run.
    #[error("interrupted; the partial download {} is kept, and the next run resumes it", partial.display())]
    DownloadInterrupted {
        /// The `.incomplete` file.
        partial: PathBuf,
    },
}

/// `": message"`, or nothing for an empty message.
fn with_colon(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        chatvec_format::Error::io(path, source).into()
    }
    /// Whether the user stopped the run (Ctrl-C): the CLI exits with its own code then.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, Error::Model(chatvec_format::Error::Interrupted) | Error::DownloadInterrupted { .. })
    }
}

/// The hub's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
