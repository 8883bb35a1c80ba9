//! A local stand-in for the Hugging Face Hub, for tests: a `std::net` listener on 127.0.0.1 that
//! serves models from memory with the HTTP behaviour `huggingface_hub` (`file_download.py`,
//! `_snapshot_download.py`, `utils/_http.py`) expects of the real Hub:
//!
//! - `GET /api/models/{repo}[/revision/{rev}]`: `sha` and `siblings`;
//! - `HEAD`/`GET /{repo}/resolve/{rev}/{file}`: `X-Repo-Commit` and `ETag`; for LFS files
//!   (`.safetensors`, `.bin`) a 302 to a CDN on another origin (`localhost` instead of
//!   `127.0.0.1`) with `X-Linked-Etag` (the sha256) and `X-Linked-Size`;
//! - `Range` requests (206), on the CDN and on regular files;
//! - `X-Error-Code`: `RepoNotFound` (401 anonymous, 404 with a token), `GatedRepo` (401 without
//!   a token, 403 with the wrong one), `RevisionNotFound`, `EntryNotFound`.
//!
//! It logs every request, and can drop a file's connection after some bytes or send it slowly.
//! It can also misbehave as a hostile or broken hub would: send more bytes than it announced, a
//! body that never ends, a body that stalls, an ETag that is not the file's git blob id, a size
//! it will never send, or a commit value that is not a commit hash.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// One request as the hub saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub auth: Option<String>,
}

#[derive(Default)]
struct Repo {
    commits: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    refs: BTreeMap<String, String>,
    gated_token: Option<String>,
    withheld: BTreeSet<String>,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, Repo>,
    log: Vec<Request>,
    /// (sha256 of a blob, bytes to send before dropping the connection, times left).
    drop: Option<(String, usize, usize)>,
    /// Pause after each 4 KiB of a CDN body.
    slow: Option<Duration>,
    /// sha256 of a blob whose CDN bytes get one byte flipped.
    corrupt: Option<String>,
    /// A file whose GET body has these bytes added past what HEAD announced.
    oversize: Option<(String, Vec<u8>)>,
    /// A file whose GET body never ends (no Content-Length, sent until the client leaves).
    endless: Option<String>,
    /// (sha256 of a blob, bytes to send before the body stalls for a minute, times left).
    stall: Option<(String, usize, usize)>,
    /// A file whose ETag is not its git blob id.
    wrong_etag: Option<String>,
    /// A file whose HEAD announces this size (its GET is never expected).
    announce: Option<(String, u64)>,
    /// What the model info gives as the commit instead of the commit hash.
    commit_value: Option<String>,
}

/// The running hub; it serves until the test process ends.
pub struct MockHub {
    /// `http://127.0.0.1:{port}`, for `HF_ENDPOINT`.
    pub url: String,
    state: Arc<Mutex<State>>,
}

pub fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors") || file.ends_with(".bin") || file.ends_with(".pth") || file.ends_with(".gguf")
}

/// The files of a folder (top level), by name.
pub fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

impl MockHub {
    pub fn start() -> MockHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        // `localhost` may resolve to ::1 first; serve there too when the system has it.
        let listeners = [Some(listener), TcpListener::bind(("::1", port)).ok()];
        for l in listeners.into_iter().flatten() {
            let state = state.clone();
            std::thread::spawn(move || {
                for stream in l.incoming().flatten() {
                    let state = state.clone();
                    std::thread::spawn(move || {
                        let _ = serve(stream, &state, port);
                    });
                }
            });
        }
        MockHub { url: format!("http://127.0.0.1:{port}"), state }
    }

    /// Adds a commit of `repo` holding `files`; `branch` (if any) then points at it. Returns its hash.
    pub fn add_commit(&self, repo: &str, files: BTreeMap<String, Vec<u8>>, branch: Option<&str>) -> String {
        let mut st = self.state.lock().unwrap();
        let r = st.repos.entry(repo.to_string()).or_default();
        let mut h = Sha256::new();
        h.update(repo.as_bytes());
        h.update(r.commits.len().to_le_bytes());
        files.iter().for_each(|(k, v)| {
            h.update(k.as_bytes());
            h.update(v);
        });
        let commit: String = h.finalize().iter().take(20).map(|x| format!("{x:02x}")).collect();
        r.commits.insert(commit.clone(), files);
        if let Some(b) = branch {
            r.refs.insert(b.to_string(), commit.clone());
        }
        commit
    }

    /// Adds `repo` with the files of `dir` on `main`.
    pub fn add_model(&self, repo: &str, dir: &Path) -> String {
        self.add_commit(repo, files_of(dir), Some("main"))
    }

    pub fn gate(&self, repo: &str, token: &str) {
        self.state.lock().unwrap().repos.get_mut(repo).unwrap().gated_token = Some(token.to_string());
    }

    /// Lists `file` but answers 404 EntryNotFound for it.
    pub fn withhold(&self, repo: &str, file: &str) {
        self.state.lock().unwrap().repos.get_mut(repo).unwrap().withheld.insert(file.to_string());
    }

    /// Drops the connection after `after` body bytes of the blob `content`, `times` times.
    pub fn drop_after(&self, content: &[u8], after: usize, times: usize) {
        self.state.lock().unwrap().drop = Some((sha256_hex(content), after, times));
    }

    /// Serves the blob `content` from the CDN with one byte changed.
    pub fn corrupt(&self, content: &[u8]) {
        self.state.lock().unwrap().corrupt = Some(sha256_hex(content));
    }

    /// Sends `extra` bytes past the announced size in `file`'s GET body.
    pub fn oversize(&self, file: &str, extra: &[u8]) {
        self.state.lock().unwrap().oversize = Some((file.to_string(), extra.to_vec()));
    }

    /// Sends `file`'s GET body without end.
    pub fn endless(&self, file: &str) {
        self.state.lock().unwrap().endless = Some(file.to_string());
    }

    /// Stalls the CDN body of the blob `content` after `after` bytes, `times` times.
    pub fn stall_after(&self, content: &[u8], after: usize, times: usize) {
        self.state.lock().unwrap().stall = Some((sha256_hex(content), after, times));
    }

    /// Gives `file` an ETag that is not its git blob id.
    pub fn wrong_etag(&self, file: &str) {
        self.state.lock().unwrap().wrong_etag = Some(file.to_string());
    }

    /// Announces `size` bytes for `file` in its HEAD.
    pub fn announce(&self, file: &str, size: u64) {
        self.state.lock().unwrap().announce = Some((file.to_string(), size));
    }

    /// Gives `value` as the commit in the model info.
    pub fn commit_value(&self, value: &str) {
        self.state.lock().unwrap().commit_value = Some(value.to_string());
    }

    pub fn slow(&self, pause: Option<Duration>) {
        self.state.lock().unwrap().slow = pause;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Bytes to send before dropping the connection.
    cut: Option<usize>,
    slow: Option<Duration>,
    /// Bytes to send before the body stalls.
    stall: Option<usize>,
    /// Send the body again and again, without a Content-Length, until the client leaves.
    endless: bool,
    /// The Content-Length to announce instead of the body's.
    announce: Option<u64>,
}

fn reply(status: u16) -> Reply {
    Reply { status, headers: vec![], body: vec![], cut: None, slow: None, stall: None, endless: false, announce: None }
}

impl Reply {
    fn header(mut self, k: &str, v: impl ToString) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
    fn error(status: u16, code: &str, msg: &str) -> Self {
        reply(status).header("X-Error-Code", code).header("X-Error-Message", msg)
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>, port: u16) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let req =
        Request { method, path, range: headers.get("range").cloned(), auth: headers.get("authorization").cloned() };
    let r = {
        let mut st = state.lock().unwrap();
        st.log.push(req.clone());
        route(&mut st, &req, port)
    };
    write_reply(stream, &req, r)
}

fn write_reply(mut stream: TcpStream, req: &Request, r: Reply) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} X\r\n", r.status);
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !r.endless {
        head.push_str(&format!("Content-Length: {}\r\n", r.announce.unwrap_or(r.body.len() as u64)));
    }
    head.push_str("Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    if r.endless && req.method != "HEAD" {
        loop {
            stream.write_all(&r.body)?;
        }
    }
    if let (Some(after), true) = (r.stall, req.method != "HEAD") {
        stream.write_all(&r.body[..after.min(r.body.len())])?;
        stream.flush()?;
        std::thread::sleep(Duration::from_secs(60));
        return Ok(());
    }
    if req.method != "HEAD" {
        let body = &r.body[..r.cut.unwrap_or(r.body.len()).min(r.body.len())];
        for chunk in body.chunks(4096) {
            stream.write_all(chunk)?;
            if let Some(p) = r.slow {
                std::thread::sleep(p);
            }
        }
    }
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Both)
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(x) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn route(st: &mut State, req: &Request, port: u16) -> Reply {
    let p = req.path.trim_start_matches('/');
    if let Some(sha) = p.strip_prefix("cdn/") {
        return cdn(st, sha, req);
    }
    if let Some(rest) = p.strip_prefix("api/models/") {
        let seg: Vec<&str> = rest.splitn(4, '/').collect();
        let (rev, tree) = match seg.as_slice() {
            [_, _] => ("main".to_string(), false),
            [_, _, "revision", rev] => (decode(rev), false),
            [_, _, "tree", rev] => (decode(rev), true),
            _ => return Reply::error(404, "", "no such route"),
        };
        return api(st, &format!("{}/{}", seg[0], seg[1]), &rev, req, tree);
    }
    let seg: Vec<&str> = p.splitn(5, '/').collect();
    if let [org, name, "resolve", rev, file] = seg.as_slice() {
        return resolve(st, &format!("{org}/{name}"), &decode(rev), &decode(file), req, port);
    }
    Reply::error(404, "", "no such route")
}

/// The repo's commit for `rev`, or the refusal the Hub would send.
/// `files`: whether files are asked for (a gated repo's info is public, its files are not).
fn access<'a>(st: &'a State, repo: &str, rev: &str, req: &Request, files: bool) -> Result<(&'a Repo, String), Reply> {
    let Some(r) = st.repos.get(repo) else {
        let status = if req.auth.is_some() { 404 } else { 401 };
        return Err(Reply::error(status, "RepoNotFound", "Repository not found"));
    };
    if let Some(t) = r.gated_token.as_ref().filter(|_| files) {
        if req.auth.as_deref() != Some(&format!("Bearer {t}")) {
            let status = if req.auth.is_some() { 403 } else { 401 };
            return Err(Reply::error(status, "GatedRepo", "Access to this model is restricted"));
        }
    }
    match r.refs.get(rev).cloned().or_else(|| r.commits.contains_key(rev).then(|| rev.to_string())) {
        Some(c) => Ok((r, c)),
        None => Err(Reply::error(404, "RevisionNotFound", "Invalid rev id")),
    }
}

/// `api/models/{repo}/revision/{rev}` (the model's info) or `.../tree/{rev}` (its files, which
/// `snapshot_download` lists).
fn api(st: &State, repo: &str, rev: &str, req: &Request, tree: bool) -> Reply {
    let (r, commit) = match access(st, repo, rev, req, false) {
        Ok(x) => x,
        Err(e) => return e,
    };
    if tree {
        let entries: Vec<_> = r.commits[&commit].iter().map(|(f, b)| tree_entry(f, b)).collect();
        let mut out = reply(200).header("Content-Type", "application/json");
        out.body = serde_json::Value::Array(entries).to_string().into_bytes();
        return out;
    }
    let siblings: Vec<_> = r.commits[&commit].keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
    let sha = st.commit_value.clone().unwrap_or_else(|| commit.clone());
    let body = serde_json::json!({
        "_id": commit, "id": repo, "modelId": repo, "sha": sha, "private": false,
        "gated": r.gated_token.as_ref().map_or(serde_json::json!(false), |_| serde_json::json!("manual")),
        "disabled": false, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
    });
    let mut out = reply(200).header("Content-Type", "application/json");
    out.body = body.to_string().into_bytes();
    out
}

/// The git blob id of `bytes`, which the hub gives as the ETag of a regular file.
pub fn git_etag(bytes: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    h.finalize().iter().map(|x| format!("{x:02x}")).collect()
}

fn tree_entry(file: &str, bytes: &[u8]) -> serde_json::Value {
    let mut e = serde_json::json!({ "type": "file", "path": file, "size": bytes.len(), "oid": git_etag(bytes) });
    if is_lfs(file) {
        e["lfs"] = serde_json::json!({ "oid": sha256_hex(bytes), "size": bytes.len(), "pointerSize": 134 });
    }
    e
}

fn resolve(st: &State, repo: &str, rev: &str, file: &str, req: &Request, port: u16) -> Reply {
    let (r, commit) = match access(st, repo, rev, req, true) {
        Ok(x) => x,
        Err(e) => return e,
    };
    let Some(bytes) = r.commits[&commit].get(file).filter(|_| !r.withheld.contains(file)) else {
        return Reply::error(404, "EntryNotFound", "Entry not found").header("X-Repo-Commit", &commit);
    };
    let sha = sha256_hex(bytes);
    if is_lfs(file) {
        return reply(302)
            .header("Location", format!("http://localhost:{port}/cdn/{sha}"))
            .header("X-Repo-Commit", &commit)
            .header("ETag", format!("\"{}\"", &sha256_hex(sha.as_bytes())[..40]))
            .header("X-Linked-Etag", format!("\"{sha}\""))
            .header("X-Linked-Size", bytes.len());
    }
    let mut etag = git_etag(bytes);
    if st.wrong_etag.as_deref() == Some(file) {
        etag = git_etag(b"other bytes");
    }
    let mut out = ranged(bytes, req);
    if req.method == "GET" {
        if let Some((_, extra)) = st.oversize.as_ref().filter(|(f, _)| f == file) {
            out.body.extend_from_slice(extra);
        }
        out.endless = st.endless.as_deref() == Some(file);
    }
    out.announce = st.announce.as_ref().filter(|(f, _)| f == file).map(|(_, n)| *n);
    out.header("X-Repo-Commit", &commit).header("ETag", format!("\"{etag}\""))
}

fn cdn(st: &mut State, sha: &str, req: &Request) -> Reply {
    let found =
        st.repos.values().flat_map(|r| r.commits.values()).flat_map(|f| f.values()).find(|b| sha256_hex(b) == sha);
    let Some(mut bytes) = found.cloned() else { return Reply::error(404, "", "no such blob") };
    if st.corrupt.as_deref() == Some(sha) {
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
    }
    let mut out = ranged(&bytes, req).header("ETag", format!("\"{sha}\""));
    out.slow = st.slow;
    if let Some((s, after, times)) = &mut st.drop {
        if s == sha && *times > 0 && req.method == "GET" {
            *times -= 1;
            out.cut = Some(*after);
        }
    }
    if let Some((s, after, times)) = &mut st.stall {
        if s == sha && *times > 0 && req.method == "GET" {
            *times -= 1;
            out.stall = Some(*after);
        }
    }
    out
}

/// The bytes, or the part a `Range: bytes=N-[M]` asks for (206).
fn ranged(bytes: &[u8], req: &Request) -> Reply {
    let Some(range) = req.range.as_deref().and_then(|r| r.strip_prefix("bytes=")) else {
        let mut out = reply(200);
        out.body = bytes.to_vec();
        return out;
    };
    let (a, b) = range.split_once('-').unwrap_or((range, ""));
    let start: usize = a.parse().unwrap_or(0);
    let end: usize = b.parse().map(|e: usize| e + 1).unwrap_or(bytes.len()).min(bytes.len());
    if start >= bytes.len() || start >= end {
        return reply(416).header("Content-Range", format!("bytes */{}", bytes.len()));
    }
    let mut out = reply(206).header("Content-Range", format!("bytes {start}-{}/{}", end - 1, bytes.len()));
    out.body = bytes[start..end].to_vec();
    out
}
