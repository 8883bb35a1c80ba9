//! Where a model argument lives: a local directory, or a hub id resolved in the Hugging Face cache.
//!
//! The cache layout (`models--org--name/{refs,snapshots,blobs}`) is a few lines of path logic, so it
//! lives here rather than behind the optional `hf-hub` dependency.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

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

/// The hub cache directory: `--cache-dir`, else `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (the order `huggingface_hub` uses).
pub fn cache_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = env("HF_HUB_CACHE") {
        return dir;
    }
    if let Some(home) = env("HF_HOME") {
        return home.join("hub");
    }
    let home = env("HOME").unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// Splits `org/name[@revision]` into id and revision; `None` when the text is not a hub id.
pub fn parse_hub_id(spec: &str) -> Option<(String, String)> {
    let (id, rev) = match spec.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, rev),
        Some(_) => return None,
        None => (spec, "main"),
    };
    let mut parts = id.split('/');
    let (org, name) = (parts.next()?, parts.next()?);
    let ok = |s: &str| {
        !s.is_empty() && !s.starts_with('.') && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if parts.next().is_some() || !ok(org) || !ok(name) {
        return None;
    }
    Some((id.to_string(), rev.to_string()))
}

/// Resolves a model argument: an existing directory is used as it is; otherwise `org/name[@rev]`
/// is looked up in the hub cache (and downloaded with the `download` feature).
pub fn resolve_model(spec: &str, cache: Option<&Path>) -> Result<ResolvedModel> {
    let local = Path::new(spec);
    if local.is_dir() {
        return Ok(ResolvedModel { spec: spec.to_string(), path: local.to_path_buf(), hub_id: None, revision: None });
    }
    if local.exists() {
        return Err(Error::msg(format!("{spec}: not a directory (give the model's folder, not a file in it)")));
    }
    let Some((id, rev)) = parse_hub_id(spec) else {
        return Err(Error::msg(format!("{spec}: no such directory, and not a hub id of the form org/name[@revision]")));
    };
    let root = cache_dir(cache);
    match resolve_in_cache(&root, &id, &rev) {
        Ok((path, commit)) => {
            Ok(ResolvedModel { spec: spec.to_string(), path, hub_id: Some(id), revision: Some(commit) })
        }
        Err(why) => download(spec, &id, &rev, &root, why),
    }
}

/// Finds the snapshot folder of `id` at `rev` (a branch/tag name in `refs/`, or a commit hash).
fn resolve_in_cache(root: &Path, id: &str, rev: &str) -> std::result::Result<(PathBuf, String), String> {
    let repo = root.join(format!("models--{}", id.replace('/', "--")));
    if !repo.is_dir() {
        return Err(format!("{} is not in the cache {}", id, root.display()));
    }
    let ref_file = repo.join("refs").join(rev);
    let commit = if ref_file.is_file() {
        std::fs::read_to_string(&ref_file).map_err(|e| format!("{}: {e}", ref_file.display()))?.trim().to_string()
    } else {
        rev.to_string()
    };
    let snap = repo.join("snapshots").join(&commit);
    if !snap.join("config.json").is_file() {
        return Err(format!("{id}@{rev}: no snapshot with a config.json at {}", snap.display()));
    }
    Ok((snap, commit))
}

#[cfg(not(feature = "download"))]
fn download(spec: &str, id: &str, _rev: &str, _root: &Path, why: String) -> Result<ResolvedModel> {
    Err(Error::msg(format!(
        "{spec}: {why}; this build is offline-only: download it first \
         (`huggingface-cli download {id}`) or rebuild with `--features download`"
    )))
}

#[cfg(feature = "download")]
fn download(spec: &str, id: &str, rev: &str, root: &Path, why: String) -> Result<ResolvedModel> {
    use hf_hub::{api::sync::ApiBuilder, Repo, RepoType};
    let api = ApiBuilder::new()
        .with_cache_dir(root.to_path_buf())
        .with_progress(true)
        .build()
        .map_err(|e| Error::msg(format!("{spec}: {why}; hub client: {e}")))?;
    let repo = api.repo(Repo::with_revision(id.to_string(), RepoType::Model, rev.to_string()));
    let info = repo.info().map_err(|e| Error::msg(format!("{spec}: {why}; the hub is not reachable ({e})")))?;
    let wanted = |f: &str| {
        !f.contains('/')
            && (f.ends_with(".json")
                || f.ends_with(".safetensors")
                || f.ends_with(".bin")
                || f.ends_with(".jinja")
                || f.ends_with(".model")
                || f.ends_with(".txt"))
    };
    for s in info.siblings.iter().filter(|s| wanted(&s.rfilename)) {
        repo.get(&s.rfilename).map_err(|e| Error::msg(format!("{spec}: downloading {}: {e}", s.rfilename)))?;
    }
    let (path, commit) = resolve_in_cache(root, id, rev).map_err(Error::msg)?;
    Ok(ResolvedModel { spec: spec.to_string(), path, hub_id: Some(id.to_string()), revision: Some(commit) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_cache(root: &Path, id: &str, commit: &str, branch: &str) -> PathBuf {
        let repo = root.join(format!("models--{}", id.replace('/', "--")));
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join(branch), format!("{commit}\n")).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        snap
    }

    #[test]
    fn hub_id_resolves_to_snapshot_of_main_in_cache() {
        let dir = tempfile::tempdir().unwrap();
        let snap = fake_cache(dir.path(), "beomi/Llama-3-Open-Ko-8B", "abc123", "main");
        let m = resolve_model("beomi/Llama-3-Open-Ko-8B", Some(dir.path())).unwrap();
        assert_eq!(m.path, snap);
        assert_eq!(m.revision.as_deref(), Some("abc123"));
        assert_eq!(m.hub_id.as_deref(), Some("beomi/Llama-3-Open-Ko-8B"));
    }

    #[test]
    fn revision_can_be_a_branch_or_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let snap = fake_cache(dir.path(), "org/m", "deadbeef", "v2");
        assert_eq!(resolve_model("org/m@v2", Some(dir.path())).unwrap().path, snap);
        assert_eq!(resolve_model("org/m@deadbeef", Some(dir.path())).unwrap().path, snap);
        let err = resolve_model("org/m", Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("org/m@main"), "{err}");
    }

    #[test]
    fn missing_model_says_offline_and_names_cache() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_model("org/absent", Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("not in the cache"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
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
    fn local_directory_wins_and_bad_text_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().to_str().unwrap();
        assert_eq!(resolve_model(p, None).unwrap().path, dir.path());
        assert!(parse_hub_id("a/b/c").is_none());
        assert!(parse_hub_id("../x").is_none());
        assert_eq!(parse_hub_id("a/b@r"), Some(("a/b".into(), "r".into())));
    }
}
