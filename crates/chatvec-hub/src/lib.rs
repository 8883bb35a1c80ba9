//! Where a model argument lives: a local directory, or a hub id (`org/name[@revision]`) found in
//! the Hugging Face cache and downloaded into it when missing.
//!
//! The cache is the one Python's `huggingface_hub` uses (same layout, same environment variables),
//! so a model fetched by either is found by the other. [`cache`] holds the layout and the checks
//! that keep every path inside it; [`download`] the blocking HTTP client; [`files`] which files of
//! a repo a model needs.

pub mod cache;
pub mod download;
pub mod error;
pub mod files;

pub use error::{Error, Result};

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use cache::RepoCache;
use chatvec_format::{NoProgress, Progress, ResolvedModel};

/// The hub chatvec downloads from when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A hub model and the revision asked for: `org/name` at a branch, tag or commit hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `org/name`.
    pub repo: String,
    /// A branch or tag name, or a commit hash (`main` when none was given).
    pub revision: String,
}

impl HubId {
    /// Parses `org/name[@revision]`: `Ok(None)` when the text is not a hub id at all, an error
    /// when it is one with a revision that is not a branch, tag or commit hash.
    pub fn parse(spec: &str) -> Result<Option<HubId>> {
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) => (repo, rev),
            None => (spec, "main"),
        };
        if !is_repo_id(repo) {
            return Ok(None);
        }
        if !is_revision(revision) {
            return Err(Error::BadRevisionInId { spec: spec.to_string(), revision: revision.to_string() });
        }
        Ok(Some(HubId { repo: repo.to_string(), revision: revision.to_string() }))
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision)
    }
}

/// `org/name`, each part made of letters, digits, `-`, `_` and `.`, not starting with a dot.
fn is_repo_id(id: &str) -> bool {
    let mut parts = id.split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(org), Some(name), None) if is_name(org) && is_name(name))
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A branch or tag name (`main`, `v1.0`, `refs/pr/1`) or a commit hash: relative, made of plain
/// names, so that `refs/{revision}` stays inside the cache.
pub fn is_revision(rev: &str) -> bool {
    !rev.is_empty() && rev.len() <= 255 && rev.split('/').all(is_name)
}

/// A full commit hash, the only thing a snapshot folder may be named after.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where hub models come from and go: the cache, the endpoint, the token, and whether the network
/// may be used. [`Hub::from_env`] reads them as `huggingface_hub` does.
#[derive(Clone)]
pub struct Hub {
    /// The cache root (`.../hub`) holding `models--org--name` folders.
    pub cache: PathBuf,
    /// The hub's base URL, without a trailing slash.
    pub endpoint: String,
    /// The access token, for gated and private models.
    pub token: Option<String>,
    /// Never touch the network.
    pub offline: bool,
    /// The longest wait for the next bytes of a download before the transfer counts as dropped
    /// and is resumed (`HF_HUB_DOWNLOAD_TIMEOUT`, seconds, default 10 as in `huggingface_hub`);
    /// the variable's value when it is not a number of seconds.
    pub download_timeout: std::result::Result<std::time::Duration, String>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.token.as_ref().map(|_| "<set>");
        f.debug_struct("Hub")
            .field("cache", &self.cache)
            .field("endpoint", &self.endpoint)
            .field("token", &token)
            .field("offline", &self.offline)
            .field("download_timeout", &self.download_timeout)
            .finish()
    }
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// `HF_HOME`, else `~/.cache/huggingface`.
fn hf_home() -> PathBuf {
    if let Some(home) = env("HF_HOME") {
        return PathBuf::from(home);
    }
    let home = env("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface")
}

/// The hub cache directory: `explicit` (`--cache-dir`), else `HF_HUB_CACHE`, else
/// `HF_HOME/hub`, else `~/.cache/huggingface/hub` (the order `huggingface_hub` uses).
pub fn cache_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    env("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| hf_home().join("hub"))
}

/// `HF_TOKEN`, else the file `huggingface-cli login` writes (`HF_TOKEN_PATH`, else `HF_HOME/token`).
fn token_from_env() -> Option<String> {
    if let Some(t) = env("HF_TOKEN") {
        return Some(t);
    }
    let path = env("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home().join("token"));
    std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

/// `HF_HUB_OFFLINE` set to 1/true/yes/on.
fn offline_from_env() -> bool {
    env("HF_HUB_OFFLINE").is_some_and(|v| ["1", "true", "yes", "on"].contains(&v.to_ascii_lowercase().as_str()))
}

/// The default of `HF_HUB_DOWNLOAD_TIMEOUT`, as in `huggingface_hub`.
pub const DEFAULT_DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `HF_HUB_DOWNLOAD_TIMEOUT` in seconds (a positive number), else 10.
fn download_timeout_from_env() -> std::result::Result<std::time::Duration, String> {
    let Some(v) = env("HF_HUB_DOWNLOAD_TIMEOUT") else { return Ok(DEFAULT_DOWNLOAD_TIMEOUT) };
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(std::time::Duration::from_secs_f64(s)),
        _ => Err(v),
    }
}

impl Hub {
    /// Settings from the environment (`HF_HUB_CACHE`, `HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN`, the
    /// token file, `HF_HUB_OFFLINE`); `cache_dir` and `offline` are the command-line overrides.
    pub fn from_env(cache_dir_flag: Option<&Path>, offline: bool) -> Hub {
        Hub {
            cache: cache_dir(cache_dir_flag),
            endpoint: env("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()).trim_end_matches('/').to_string(),
            token: token_from_env(),
            offline: offline || offline_from_env(),
            download_timeout: download_timeout_from_env(),
        }
    }

    /// Resolves a model argument: an existing directory is used as it is; a hub id is used from
    /// the cache when its snapshot there is complete, and downloaded (or completed) otherwise.
    pub fn resolve(&self, spec: &str, progress: &dyn Progress, cancel: &AtomicBool) -> Result<ResolvedModel> {
        let local = Path::new(spec);
        if local.is_dir() {
            return Ok(ResolvedModel { spec: spec.into(), path: local.to_path_buf(), hub_id: None, revision: None });
        }
        if local.exists() {
            return Err(Error::NotADirectory { spec: spec.to_string() });
        }
        let Some(id) = HubId::parse(spec)? else {
            return Err(Error::NotAModel { spec: spec.to_string() });
        };
        let repo = RepoCache::new(&self.cache, &id.repo);
        match repo.complete_snapshot(&id.revision)? {
            Some((path, commit)) => Ok(resolved(spec, &id, path, commit)),
            None => self.fetch(spec, &id, progress, cancel),
        }
    }

    /// Asks the hub what `id` is now and fetches whatever of it the cache lacks (`chatvec
    /// download`); offline, it checks the cached snapshot instead.
    pub fn download(&self, id: &HubId, progress: &dyn Progress, cancel: &AtomicBool) -> Result<ResolvedModel> {
        let spec = id.to_string();
        if self.offline {
            let repo = RepoCache::new(&self.cache, &id.repo);
            if let Some((path, commit)) = repo.complete_snapshot(&id.revision)? {
                return Ok(resolved(&spec, id, path, commit));
            }
        }
        self.fetch(&spec, id, progress, cancel)
    }

    fn fetch(&self, spec: &str, id: &HubId, progress: &dyn Progress, cancel: &AtomicBool) -> Result<ResolvedModel> {
        if self.offline {
            let repo = RepoCache::new(&self.cache, &id.repo);
            return Err(Error::Offline { spec: spec.to_string(), why: repo.why_missing(&id.revision) });
        }
        if let Err(value) = &self.download_timeout {
            return Err(Error::BadDownloadTimeout { value: value.clone() });
        }
        let (path, commit) = download::fetch_snapshot(self, id, progress, cancel)?;
        Ok(resolved(spec, id, path, commit))
    }
}

fn resolved(spec: &str, id: &HubId, path: PathBuf, commit: String) -> ResolvedModel {
    ResolvedModel { spec: spec.to_string(), path, hub_id: Some(id.repo.clone()), revision: Some(commit) }
}

/// Resolves a model argument with the settings from the environment, downloading without a
/// progress display when needed (see [`Hub::resolve`]).
pub fn resolve_model(spec: &str, cache: Option<&Path>) -> Result<ResolvedModel> {
    Hub::from_env(cache, false).resolve(spec, &NoProgress, &AtomicBool::new(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_revisions_parse_or_are_refused() {
        let id = HubId::parse("a/b@r").unwrap().unwrap();
        assert_eq!((id.repo.as_str(), id.revision.as_str()), ("a/b", "r"));
        assert_eq!(HubId::parse("a/b").unwrap().unwrap().revision, "main");
        assert_eq!(HubId::parse("a/b@refs/pr/1").unwrap().unwrap().revision, "refs/pr/1");
        for not_an_id in ["a/b/c", "../x", "a", "./b", "a/.b"] {
            assert!(HubId::parse(not_an_id).unwrap().is_none(), "{not_an_id}");
        }
        for bad in ["org/m@../../x", "org/m@/abs/path", "org/m@", "org/m@a/../b", "org/m@.hidden", "org/m@a//b"] {
            let err = HubId::parse(bad).unwrap_err().to_string();
            assert!(err.contains("is not a revision"), "{bad}: {err}");
        }
    }

    #[test]
    fn cache_dir_follows_hf_env_order() {
        // One test touches the environment so parallel tests do not race on it.
        let old: Vec<_> = ["HF_HUB_CACHE", "HF_HOME", "HOME"].iter().map(std::env::var_os).collect();
        std::env::remove_var("HF_HUB_CACHE");
        std::env::set_var("HF_HOME", "/h");
        std::env::set_var("HOME", "/home/u");
        assert_eq!(cache_dir(None), PathBuf::from("/h/hub"));
        std::env::set_var("HF_HUB_CACHE", "/c");
        assert_eq!(cache_dir(None), PathBuf::from("/c"));
        assert_eq!(cache_dir(Some(Path::new("/x"))), PathBuf::from("/x"));
        std::env::remove_var("HF_HUB_CACHE");
        std::env::remove_var("HF_HOME");
        assert_eq!(cache_dir(None), PathBuf::from("/home/u/.cache/huggingface/hub"));
        for (k, v) in ["HF_HUB_CACHE", "HF_HOME", "HOME"].iter().zip(old) {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }

    #[test]
    fn local_directory_wins_and_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().to_str().unwrap();
        assert_eq!(resolve_model(p, None).unwrap().path, dir.path());
        std::fs::write(dir.path().join("f"), "").unwrap();
        let err = resolve_model(dir.path().join("f").to_str().unwrap(), None).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }
}
