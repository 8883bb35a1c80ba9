//! A model argument after resolution: the directory that holds it, and where it came from
//! (a hub id and commit when it came from the Hugging Face cache).

use std::path::PathBuf;

/// A model argument resolved to a directory on disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResolvedModel {
    /// What the user typed.
    pub spec: String,
    /// The directory holding `config.json` and the weights.
    pub path: PathBuf,
    /// The hub id (`org/name`) when the model came from the cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_id: Option<String>,
    /// The commit hash of the snapshot when the model came from the cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}
