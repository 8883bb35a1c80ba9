//! The blocking hub client: asks the hub which commit a revision is and which files it has,
//! then fetches the files a model needs into the cache, resumably.
//!
//! Hand-written on `ureq` rather than on hf-hub 0.5's sync API, because that API neither writes
//! Python's `blobs/{etag}.incomplete` files, checks sha256, reports bytes for a whole model, nor
//! tells a gated repo from a missing one. The protocol is the one `huggingface_hub`
//! (`file_download.py`) speaks: `GET /api/models/{repo}/revision/{rev}` for the commit and file
//! list, `HEAD /{repo}/resolve/{commit}/{file}` for `X-Repo-Commit`, the etag (`X-Linked-Etag` for
//! LFS files, whose sha256 it is) and the size, then `GET` of the location it redirects to.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::cache::RepoCache;
use super::files::{self, Weights};
use super::{is_commit_hash, Hub, HubId};
use crate::{Error, Result};
use chatvec_format::{NoProgress, Progress};

/// Times a dropped transfer is resumed within one run before giving up (the partial file stays).
const RESUMES: usize = 3;
/// Bytes read per step; cancellation is checked between steps.
const CHUNK: usize = 1 << 20;

/// What the hub says a revision is.
#[derive(Debug, serde::Deserialize)]
struct RepoInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Debug, serde::Deserialize)]
struct Sibling {
    rfilename: String,
}

/// One file's metadata from the `HEAD` of its resolve URL.
#[derive(Debug)]
struct FileMeta {
    file: String,
    location: String,
    etag: String,
    size: u64,
    /// The sha256 the bytes must have (LFS files, whose etag is their sha256).
    sha256: Option<String>,
    /// The git blob id the bytes must have (regular files, whose ETag is it):
    /// sha1 of `blob {len}\0` followed by the bytes.
    git_blob: Option<String>,
}

/// Fetches what the cache lacks of `id` and returns its snapshot folder and commit hash.
pub(super) fn fetch_snapshot(
    hub: &Hub,
    id: &HubId,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<(PathBuf, String)> {
    let client = Client::new(hub, id);
    let info = client.repo_info()?;
    let siblings: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let repo = RepoCache::new(&hub.cache, &id.repo);
    let snap = repo.snapshot_dir(&info.sha);
    let wanted = files::wanted(&siblings, &id.to_string())?;
    let mut list = wanted.support;
    match wanted.weights {
        Weights::Single(f) => list.push(f),
        Weights::Sharded(index) => {
            client.fetch_files(&repo, &info.sha, std::slice::from_ref(&index), &NoProgress, cancel)?;
            let shards = chatvec_format::checkpoint::index_files(&snap.join(&index))?;
            files::check_shards(&shards, &siblings, &index, &id.to_string())?;
            list.push(index);
            list.extend(shards);
        }
    }
    client.fetch_files(&repo, &info.sha, &list, progress, cancel)?;
    repo.write_ref(&id.revision, &info.sha)?;
    repo.check_inside(&snap)?;
    Ok((snap, info.sha))
}

struct Client<'a> {
    hub: &'a Hub,
    id: &'a HubId,
    agent: ureq::Agent,
}

impl<'a> Client<'a> {
    fn new(hub: &'a Hub, id: &'a HubId) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A stalled body counts as a dropped connection (and is resumed) after this long
            // without bytes, as `huggingface_hub`'s read timeout.
            .timeout_per_read(hub.download_timeout.clone().ok())
            .user_agent(concat!("chatvec/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client { hub, id, agent }
    }

    /// `GET /api/models/{repo}/revision/{rev}`: the commit hash and the file list.
    fn repo_info(&self) -> Result<RepoInfo> {
        let url =
            format!("{}/api/models/{}/revision/{}", self.hub.endpoint, self.id.repo, encode(&self.id.revision, ""));
        let mut resp = self.send(self.agent.get(&url), &url, true).map_err(|e| self.unreachable(e))?;
        self.check_status(&resp, None)?;
        let text = resp.body_mut().read_to_string().map_err(|e| self.unreachable(e))?;
        let info: RepoInfo =
            serde_json::from_str(&text).map_err(|source| Error::NotModelInfo { url: url.clone(), source })?;
        if !is_commit_hash(&info.sha) {
            return Err(Error::NotACommit { url, sha: info.sha });
        }
        Ok(info)
    }

    /// Fetches the `files` the snapshot lacks, reporting their bytes as one total.
    fn fetch_files(
        &self,
        repo: &RepoCache,
        commit: &str,
        files: &[String],
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Result<()> {
        let snap = repo.snapshot_dir(commit);
        let todo: Vec<&String> = files.iter().filter(|f| !snap.join(f).is_file()).collect();
        let metas = todo.iter().map(|f| self.file_meta(commit, f)).collect::<Result<Vec<_>>>()?;
        progress.begin(metas.iter().map(|m| m.size - partial_len(repo, m).min(m.size)).sum());
        for m in &metas {
            if cancel.load(Ordering::SeqCst) {
                return Err(chatvec_format::Error::Interrupted.into());
            }
            self.fetch_blob(repo, m, progress, cancel)?;
            repo.link(commit, &m.file, &m.etag)?;
        }
        progress.finish();
        Ok(())
    }

    /// `HEAD /{repo}/resolve/{commit}/{file}`, following redirects that stay on the hub's host
    /// (a redirect elsewhere is the CDN holding an LFS file; its headers describe the file).
    fn file_meta(&self, commit: &str, file: &str) -> Result<FileMeta> {
        let mut url = format!("{}/{}/resolve/{commit}/{}", self.hub.endpoint, self.id.repo, encode(file, "/"));
        for _ in 0..5 {
            let req = self.agent.head(&url).header("Accept-Encoding", "identity");
            let resp = self.send(req, &url, true).map_err(|e| self.unreachable(e))?;
            self.check_status(&resp, Some(file))?;
            let header = |k: &str| resp.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
            if let Some(to) = header("location").filter(|_| resp.status().is_redirection()) {
                let to = absolute(&url, &to);
                if same_origin(&url, &to) && header("x-linked-etag").is_none() {
                    url = to;
                    continue;
                }
                return self.meta_from_headers(file, to, &header);
            }
            return self.meta_from_headers(file, url.clone(), &header);
        }
        Err(Error::TooManyRedirects { url })
    }

    fn meta_from_headers(
        &self,
        file: &str,
        location: String,
        header: &dyn Fn(&str) -> Option<String>,
    ) -> Result<FileMeta> {
        let bad = |header| Error::MissingHeader { id: self.id.to_string(), file: file.to_string(), header };
        header("x-repo-commit").ok_or_else(|| bad("X-Repo-Commit (is HF_ENDPOINT a Hugging Face hub?)"))?;
        let linked = header("x-linked-etag").map(|e| normalize_etag(&e));
        let etag = linked.clone().or_else(|| header("etag").map(|e| normalize_etag(&e))).ok_or_else(|| bad("ETag"))?;
        if etag.is_empty()
            || etag.len() > 128
            || !etag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("ETag"));
        }
        // A file without an announced size is refused rather than read up to a cap: the size
        // is what bounds the transfer and proves it complete.
        let size: u64 = header("x-linked-size")
            .or_else(|| header("content-length"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("size"))?;
        if chatvec_format::metadata::is_capped_metadata(file) && size > chatvec_format::metadata::MAX_METADATA_BYTES {
            return Err(Error::MetadataTooLarge {
                id: self.id.to_string(),
                file: file.to_string(),
                size,
                cap: chatvec_format::metadata::MAX_METADATA_BYTES,
            });
        }
        let is_hex = |e: &String, len: usize| e.len() == len && e.bytes().all(|b| b.is_ascii_hexdigit());
        let git_blob = match &linked {
            None => Some(etag.to_ascii_lowercase()).filter(|e| is_hex(e, 40)),
            Some(_) => None,
        };
        let sha256 = linked.map(|e| e.to_ascii_lowercase()).filter(|e| is_hex(e, 64));
        Ok(FileMeta { file: file.to_string(), location, etag, size, sha256, git_blob })
    }

    /// Fetches one file into `blobs/{etag}`: under Python's lock, through `{etag}.incomplete`,
    /// resuming with `Range` after a dropped connection, and checked before it is renamed.
    fn fetch_blob(&self, repo: &RepoCache, m: &FileMeta, progress: &dyn Progress, cancel: &AtomicBool) -> Result<()> {
        let blob = repo.blob_path(&m.etag);
        let _lock = lock(&repo.lock_path(&m.etag))?;
        if blob.is_file() {
            progress.advance(m.size);
            return Ok(());
        }
        let part = incomplete_path(&blob);
        let parent = blob.parent().unwrap_or(&repo.dir);
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let mut dropped = String::new();
        for attempt in 0..=RESUMES {
            match self.resume(&part, m, progress, cancel) {
                Ok(()) => return finish_blob(&part, &blob, m),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Dropped(why)) if attempt < RESUMES => {
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                    dropped = why;
                }
                Err(Attempt::Dropped(why)) => dropped = why,
            }
        }
        let have = partial_len(repo, m);
        Err(Error::ConnectionDropped {
            id: self.id.to_string(),
            file: m.file.clone(),
            why: dropped,
            have,
            size: m.size,
            partial: part.to_path_buf(),
        })
    }

    /// One try: asks for the bytes `part` lacks and appends them.
    fn resume(&self, part: &Path, m: &FileMeta, progress: &dyn Progress, cancel: &AtomicBool) -> Result<(), Attempt> {
        let mut out = OpenOptions::new().create(true).append(true).open(part).map_err(|e| Error::io(part, e))?;
        let mut have = out.metadata().map_err(|e| Error::io(part, e))?.len();
        if have >= m.size {
            if have == m.size {
                return Ok(());
            }
            out.set_len(0).map_err(|e| Error::io(part, e))?;
            have = 0;
        }
        let mut req = self.agent.get(&m.location).header("Accept-Encoding", "identity");
        if have > 0 {
            req = req.header("Range", &format!("bytes={have}-"));
        }
        let with_token = same_origin(&self.hub.endpoint, &m.location);
        let resp = self.send(req, &m.location, with_token).map_err(|e| Attempt::Dropped(e.to_string()))?;
        match resp.status().as_u16() {
            206 => {}
            200 => {
                out.set_len(0).map_err(|e| Error::io(part, e))?;
                have = 0;
            }
            416 => {
                out.set_len(0).map_err(|e| Error::io(part, e))?;
                return Err(Attempt::Dropped("the partial file did not match the hub's".into()));
            }
            _ => return Err(Attempt::Fatal(self.status_error(&resp, Some(&m.file)))),
        }
        out.seek(SeekFrom::End(0)).map_err(|e| Error::io(part, e))?;
        // One byte past the announced size is enough to know the hub sent too much.
        let body = resp.into_body().into_reader().take(m.size - have + 1);
        copy_body(body, &mut out, part, progress, cancel)?;
        let len = out.metadata().map_err(|e| Error::io(part, e))?.len();
        if len > m.size {
            drop(out);
            let _ = std::fs::remove_file(part);
            return Err(Attempt::Fatal(Error::TooManyBytes {
                id: self.id.to_string(),
                file: m.file.clone(),
                size: m.size,
            }));
        }
        if len < m.size {
            return Err(Attempt::Dropped(format!("the transfer ended after {len} of {} bytes", m.size)));
        }
        Ok(())
    }

    fn send(
        &self,
        req: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
        url: &str,
        with_token: bool,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let req = match (&self.hub.token, with_token && same_origin(&self.hub.endpoint, url)) {
            (Some(t), true) => req.header("Authorization", &format!("Bearer {t}")),
            _ => req,
        };
        req.call()
    }

    fn unreachable(&self, e: ureq::Error) -> Error {
        Error::Unreachable { id: self.id.to_string(), endpoint: self.hub.endpoint.clone(), source: e }
    }

    fn check_status(&self, resp: &ureq::http::Response<ureq::Body>, file: Option<&str>) -> Result<()> {
        let s = resp.status();
        if s.is_success() || s.is_redirection() {
            return Ok(());
        }
        Err(self.status_error(resp, file))
    }

    /// A refusal, from the hub's `X-Error-Code` as `huggingface_hub` reads it.
    fn status_error(&self, resp: &ureq::http::Response<ureq::Body>, file: Option<&str>) -> Error {
        let header = |k: &str| resp.headers().get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let (repo, revision) = (self.id.repo.clone(), self.id.revision.clone());
        let page = format!("{}/{}", self.hub.endpoint, self.id.repo);
        let has_token = self.hub.token.is_some();
        let status = resp.status().as_u16();
        match header("x-error-code").as_str() {
            "GatedRepo" if has_token => Error::GatedNoAccess { repo, page },
            "GatedRepo" => Error::Gated { repo, page },
            "RepoNotFound" => Error::RepoNotFound { repo, endpoint: self.hub.endpoint.clone(), has_token },
            "RevisionNotFound" => Error::RevisionNotFound { repo, revision },
            "EntryNotFound" => Error::EntryNotFound { repo, revision, file: file.unwrap_or("").to_string() },
            _ if status == 401 => Error::Unauthorized { repo, message: header("x-error-message") },
            _ => Error::HttpStatus { repo, revision, page, status, message: header("x-error-message") },
        }
    }
}

enum Attempt {
    /// The connection failed or ended early: worth resuming.
    Dropped(String),
    /// Anything else.
    Fatal(Error),
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Self {
        Attempt::Fatal(e)
    }
}

/// Appends the body to `out`, reporting progress and stopping on `cancel` (the partial file stays
/// for the next run to resume).
fn copy_body(
    mut body: impl Read,
    out: &mut File,
    part: &Path,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<(), Attempt> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        if cancel.load(Ordering::SeqCst) {
            out.flush().map_err(|e| Error::io(part, e))?;
            return Err(Attempt::Fatal(Error::DownloadInterrupted { partial: part.to_path_buf() }));
        }
        let n = match body.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Attempt::Dropped(e.to_string())),
        };
        out.write_all(&buf[..n]).map_err(|e| Error::io(part, e))?;
        progress.advance(n as u64);
    }
}

/// Checks the hash the hub gave (the sha256 of an LFS file, the git blob id of a regular one)
/// and renames the partial file into place; a file with the wrong bytes is removed so that the
/// next run starts it afresh. (`resume` has already checked the size.)
fn finish_blob(part: &Path, blob: &Path, m: &FileMeta) -> Result<()> {
    let check = match (&m.sha256, &m.git_blob) {
        (Some(want), _) => Some(("sha256", want, hash_file(part, Sha256::new(), None)?)),
        (None, Some(want)) => Some(("git blob id", want, hash_file(part, sha1::Sha1::new(), Some(m.size))?)),
        (None, None) => None,
    };
    if let Some((kind, want, got)) = check {
        if &got != want {
            let _ = std::fs::remove_file(part);
            return Err(Error::HashMismatch { file: m.file.clone(), kind, got, want: want.clone() });
        }
    }
    std::fs::rename(part, blob).map_err(|e| Error::io(blob, e))
}

/// The hex digest of the file at `path`; with `git_len`, of git's blob object for it
/// (`blob {len}\0` then the bytes), which is what the hub's ETag of a regular file is.
fn hash_file(path: &Path, mut hasher: impl Digest, git_len: Option<u64>) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    if let Some(len) = git_len {
        hasher.update(format!("blob {len}\0").as_bytes());
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        match f.read(&mut buf).map_err(|e| Error::io(path, e))? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn incomplete_path(blob: &Path) -> PathBuf {
    let mut p = blob.as_os_str().to_owned();
    p.push(".incomplete");
    PathBuf::from(p)
}

fn partial_len(repo: &RepoCache, m: &FileMeta) -> u64 {
    std::fs::metadata(incomplete_path(&repo.blob_path(&m.etag))).map(|md| md.len()).unwrap_or(0)
}

/// Takes the lock Python's `filelock` takes on the same blob, so the two never write it at once.
fn lock(path: &Path) -> Result<File> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(|e| Error::io(path, e))?;
    fs4::FileExt::lock(&f).map_err(|e| Error::io(path, e))?;
    Ok(f)
}

/// `W/"abc"` or `"abc"` to `abc`, as `huggingface_hub` stores it.
fn normalize_etag(e: &str) -> String {
    e.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

/// Percent-encodes all but unreserved characters and those in `keep` (a URL path segment).
fn encode(s: &str, keep: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ if keep.as_bytes().contains(&b) => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    url[start..].find('/').map_or(url, |i| &url[..start + i])
}

fn same_origin(a: &str, b: &str) -> bool {
    origin(a).eq_ignore_ascii_case(origin(b))
}

/// A `Location` made absolute against the URL that sent it.
fn absolute(base: &str, location: &str) -> String {
    if location.contains("://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        format!("{}/{location}", base.rsplit_once('/').map_or(base, |(dir, _)| dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_etags_and_origins() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(encode("refs/pr/1", ""), "refs%2Fpr%2F1");
        assert_eq!(encode("a b/c.json", "/"), "a%20b/c.json");
        assert_eq!(origin("http://127.0.0.1:80/x/y"), "http://127.0.0.1:80");
        assert!(!same_origin("http://127.0.0.1:80/x", "http://localhost:80/x"));
        assert_eq!(absolute("http://h:1/a/b", "/c"), "http://h:1/c");
        assert_eq!(absolute("http://h:1/a/b", "https://cdn/x"), "https://cdn/x");
    }
}
