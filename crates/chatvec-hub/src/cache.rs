//! The Hugging Face cache layout, as Python's `huggingface_hub` writes it:
//!
//! ```text
//! {cache}/models--org--name/refs/{branch or tag}        the commit hash it points at
//! {cache}/models--org--name/blobs/{etag}[.incomplete]   file contents, by etag (sha256 for LFS)
//! {cache}/models--org--name/snapshots/{commit}/{file}   relative symlinks into blobs/
//! {cache}/.locks/models--org--name/{etag}.lock          held while a blob is being written
//! ```
//!
//! Every path built here stays inside the repo's folder: revisions are checked by
//! [`super::is_revision`], a ref must hold a commit hash, and a snapshot must resolve (after
//! symlinks) to a direct child of `snapshots/`.

use std::path::{Path, PathBuf};

use super::{is_commit_hash, is_revision};
use crate::{Error, Result};

/// One repo's folder in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    /// The cache root.
    pub root: PathBuf,
    /// `{root}/models--org--name`.
    pub dir: PathBuf,
    folder: String,
}

impl RepoCache {
    /// The folder of `repo` (`org/name`, already checked) under the cache `root`.
    pub fn new(root: &Path, repo: &str) -> RepoCache {
        let folder = format!("models--{}", repo.replace('/', "--"));
        RepoCache { root: root.to_path_buf(), dir: root.join(&folder), folder }
    }

    /// The commit `revision` names: itself when it is a commit hash, else what `refs/{revision}`
    /// holds; `None` when the cache has no such ref.
    pub fn commit_of(&self, revision: &str) -> Result<Option<String>> {
        if !is_revision(revision) {
            return Err(Error::NotARevision { revision: revision.to_string() });
        }
        let ref_file = self.dir.join("refs").join(revision);
        if ref_file.is_file() {
            let text = read_small(&ref_file)?;
            let commit = text.trim();
            if !is_commit_hash(commit) {
                return Err(Error::BadRef { path: ref_file });
            }
            return Ok(Some(commit.to_string()));
        }
        Ok(is_commit_hash(revision).then(|| revision.to_string()))
    }

    /// The snapshot folder of `commit` (a checked commit hash); it need not exist.
    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    /// The snapshot of `revision` when it exists and holds a config and every weight file its
    /// index names; `None` when it is missing or incomplete (a download then completes it).
    pub fn complete_snapshot(&self, revision: &str) -> Result<Option<(PathBuf, String)>> {
        let Some(commit) = self.commit_of(revision)? else { return Ok(None) };
        let snap = self.snapshot_dir(&commit);
        if !snap.exists() {
            return Ok(None);
        }
        self.check_inside(&snap)?;
        Ok(missing_files(&snap).is_empty().then_some((snap, commit)))
    }

    /// Refuses a snapshot that is not, after symlinks, a folder directly inside `snapshots/`.
    pub fn check_inside(&self, snap: &Path) -> Result<()> {
        let snapshots = self.dir.join("snapshots");
        let real = snap.canonicalize().map_err(|e| Error::io(snap, e))?;
        let inside = snapshots.canonicalize().is_ok_and(|s| real.parent() == Some(s.as_path()));
        if !inside || !real.is_dir() {
            return Err(Error::SnapshotOutside { snap: snap.to_path_buf(), real, snapshots });
        }
        Ok(())
    }

    /// Why `revision` cannot be used from the cache, naming the folder that was searched.
    pub fn why_missing(&self, revision: &str) -> String {
        match self.commit_of(revision) {
            Err(e) => e.to_string(),
            Ok(None) if !self.dir.is_dir() => format!("not in the cache {}", self.root.display()),
            Ok(None) => format!("no revision `{revision}` in the cache {}", self.dir.display()),
            Ok(Some(commit)) => {
                let snap = self.snapshot_dir(&commit);
                if !snap.is_dir() {
                    return format!("no snapshot {commit} in the cache {}", self.root.display());
                }
                if let Err(e) = self.check_inside(&snap) {
                    return e.to_string();
                }
                format!(
                    "the cached snapshot {} is incomplete: {} missing",
                    snap.display(),
                    missing_files(&snap).join(", ")
                )
            }
        }
    }

    /// `blobs/{etag}`.
    pub fn blob_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    /// `.locks/models--org--name/{etag}.lock`, the lock file Python's `filelock` also takes.
    pub fn lock_path(&self, etag: &str) -> PathBuf {
        self.root.join(".locks").join(&self.folder).join(format!("{etag}.lock"))
    }

    /// Points `snapshots/{commit}/{file}` at `blobs/{etag}` with a relative symlink, as Python does.
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let dst = self.snapshot_dir(commit).join(file);
        let parent = dst.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let depth = file.split('/').count() + 1; // snapshots/{commit}/{dirs...}/file -> repo dir
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(etag);
        let _ = std::fs::remove_file(&dst);
        make_link(&target, &dst, &self.blob_path(etag))?;
        Ok(dst)
    }

    /// Records that `revision` (a branch or tag) points at `commit`.
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.dir.join("refs").join(revision);
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        std::fs::write(&path, commit).map_err(|e| Error::io(&path, e))
    }
}

/// A ref file's text; a ref holds 40 hex digits, so anything past 256 bytes is not read.
fn read_small(path: &Path) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut text = String::new();
    file.take(256).read_to_string(&mut text).map_err(|_| Error::BadRef { path: path.to_path_buf() })?;
    Ok(text)
}

#[cfg(unix)]
fn make_link(target: &Path, dst: &Path, _blob: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, dst).map_err(|e| Error::io(dst, e))
}

/// Without symlinks the file is copied, as Python does on such systems.
#[cfg(not(unix))]
fn make_link(_target: &Path, dst: &Path, blob: &Path) -> Result<()> {
    std::fs::copy(blob, dst).map(|_| ()).map_err(|e| Error::io(dst, e))
}

/// The files a snapshot lacks before it can be used: `config.json`, and weights (a single file,
/// or an index with every shard it names).
pub fn missing_files(snap: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    if !snap.join("config.json").is_file() {
        missing.push("config.json".to_string());
    }
    for (single, index) in super::files::WEIGHT_FORMATS {
        if snap.join(index).is_file() {
            match chatvec_format::checkpoint::index_files(&snap.join(index)) {
                Ok(shards) => missing.extend(shards.into_iter().filter(|f| !snap.join(f).is_file())),
                Err(_) => missing.push(index.to_string()),
            }
            return missing;
        }
        if snap.join(single).is_file() {
            return missing;
        }
    }
    missing.push("the weights (model.safetensors or pytorch_model.bin)".to_string());
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve_model;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn fake_cache(root: &Path, id: &str, branch: &str) -> PathBuf {
        let repo = RepoCache::new(root, id);
        let snap = repo.snapshot_dir(COMMIT);
        std::fs::create_dir_all(&snap).unwrap();
        repo.write_ref(branch, COMMIT).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::write(snap.join("model.safetensors"), "").unwrap();
        snap
    }

    fn offline_resolve(spec: &str, root: &Path) -> Result<chatvec_format::ResolvedModel> {
        let hub = crate::Hub {
            cache: root.to_path_buf(),
            endpoint: "http://127.0.0.1:9".into(),
            token: None,
            offline: true,
            download_timeout: Ok(crate::DEFAULT_DOWNLOAD_TIMEOUT),
        };
        hub.resolve(spec, &chatvec_format::NoProgress, &std::sync::atomic::AtomicBool::new(false))
    }

    #[test]
    fn hub_id_resolves_to_the_snapshot_of_its_branch_or_commit() {
        let dir = tempfile::tempdir().unwrap();
        let snap = fake_cache(dir.path(), "org/m", "v2");
        let m = resolve_model("org/m@v2", Some(dir.path())).unwrap();
        assert_eq!((m.path.as_path(), m.revision.as_deref()), (snap.as_path(), Some(COMMIT)));
        assert_eq!(m.hub_id.as_deref(), Some("org/m"));
        assert_eq!(resolve_model(&format!("org/m@{COMMIT}"), Some(dir.path())).unwrap().path, snap);
        let err = offline_resolve("org/m", dir.path()).unwrap_err().to_string();
        assert!(err.contains("no revision `main`"), "{err}");
    }

    #[test]
    fn offline_missing_model_names_the_cache_searched() {
        let dir = tempfile::tempdir().unwrap();
        let err = offline_resolve("org/absent", dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("not in the cache {}", dir.path().display())), "{err}");
        assert!(err.contains("offline"), "{err}");
    }

    #[test]
    fn partly_cached_snapshot_is_incomplete_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let snap = fake_cache(dir.path(), "org/m", "main");
        std::fs::remove_file(snap.join("model.safetensors")).unwrap();
        let index = r#"{"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}"#;
        std::fs::write(snap.join("model.safetensors.index.json"), index).unwrap();
        std::fs::write(snap.join("model-1.safetensors"), "").unwrap();
        assert!(RepoCache::new(dir.path(), "org/m").complete_snapshot("main").unwrap().is_none());
        let err = offline_resolve("org/m", dir.path()).unwrap_err().to_string();
        assert!(err.contains("incomplete: model-2.safetensors missing"), "{err}");
    }

    #[test]
    fn ref_holding_a_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("config.json"), "{}").unwrap();
        let repo = RepoCache::new(&dir.path().join("cache"), "org/m");
        std::fs::create_dir_all(repo.dir.join("refs")).unwrap();
        for text in ["../../../outside", outside.to_str().unwrap()] {
            std::fs::write(repo.dir.join("refs/main"), text).unwrap();
            let err = offline_resolve("org/m", &repo.root).unwrap_err().to_string();
            assert!(err.contains("refs/main: does not hold a commit hash"), "{err}");
        }
    }

    #[test]
    fn snapshot_linked_outside_the_cache_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("config.json"), "{}").unwrap();
        std::fs::write(outside.join("model.safetensors"), "").unwrap();
        let repo = RepoCache::new(&dir.path().join("cache"), "org/m");
        std::fs::create_dir_all(repo.dir.join("snapshots")).unwrap();
        repo.write_ref("main", COMMIT).unwrap();
        make_link(&outside, &repo.snapshot_dir(COMMIT), &outside).unwrap();
        let err = offline_resolve("org/m", &repo.root).unwrap_err().to_string();
        assert!(err.contains("which is not a snapshot folder inside"), "{err}");
    }

    #[test]
    fn revisions_that_are_paths_never_reach_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("x");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("config.json"), "{}").unwrap();
        let root = dir.path().join("a/b");
        for spec in ["org/m@../../x", &format!("org/m@{}", outside.display())] {
            let err = offline_resolve(spec, &root).unwrap_err().to_string();
            assert!(err.contains("is not a revision"), "{spec}: {err}");
        }
    }
}
