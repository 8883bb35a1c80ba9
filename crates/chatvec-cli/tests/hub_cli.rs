//! Hub ids as users give them, against a local hub (`mockhub`) that behaves like the Hugging Face
//! Hub: downloads into Python's cache layout, gated repos, missing repos/revisions/files, offline
//! use, dropped connections, Ctrl-C, one weight format, pinned revisions, and the cache shared with
//! Python `huggingface_hub` both ways.

mod common;
mod mockhub;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mockhub::{files_of, sha256_hex, MockHub};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llama-tiny").join(name)
}

/// A test's own cache and HF home, and the hub it talks to.
struct Env {
    dir: tempfile::TempDir,
    hub: MockHub,
}

impl Env {
    /// A hub serving the fixture models as org/base, org/chat and org/target.
    fn new() -> Env {
        let hub = MockHub::start();
        for m in ["base", "chat", "target"] {
            hub.add_model(&format!("org/{m}"), &fixture(m));
        }
        Env { dir: tempfile::tempdir().unwrap(), hub }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("home/hub")
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `chatvec` with HF_HOME in the test's folder, HF_ENDPOINT at the mock hub, and `env` added.
    fn command(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(program);
        c.args(args);
        for k in ["HF_TOKEN", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN"] {
            c.env_remove(k);
        }
        c.env("HF_HOME", self.home()).env("HF_ENDPOINT", &self.hub.url).env("HF_HUB_DISABLE_XET", "1");
        c.envs(env.iter().copied());
        c
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(env!("CARGO_BIN_EXE_chatvec"), args, env).output().unwrap()
    }

    /// `chatvec download`, expected to succeed; returns the snapshot folder it printed.
    fn download(&self, id: &str, env: &[(&str, &str)]) -> PathBuf {
        let o = self.run(&["download", id, "--quiet"], env);
        assert!(o.status.success(), "download {id}: {}", stderr(&o));
        PathBuf::from(String::from_utf8(o.stdout).unwrap().trim())
    }

    fn merge(&self, base: &str, chat: &str, target: &str, out: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["merge", "--base", base, "--chat", chat, "--target", target, "-o", out.to_str().unwrap()];
        args.extend(["--quiet", "--json"]);
        args.extend(extra);
        self.run(&args, &[])
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails with one line (`error: ...`) and a non-zero exit; returns the line, for a snapshot.
fn fails_with(o: &Output) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "expected a failure, got success: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err.trim_end().to_string()
}

fn local_merge(out: &Path) {
    let (b, c, t) = (fixture("base"), fixture("chat"), fixture("target"));
    let o = Command::new(env!("CARGO_BIN_EXE_chatvec"))
        .args(["merge", "--base", b.to_str().unwrap(), "--chat", c.to_str().unwrap()])
        .args(["--target", t.to_str().unwrap(), "-o", out.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

fn weights_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_of(dir).into_iter().filter(|(k, _)| k.ends_with(".safetensors")).collect()
}

fn recipe(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("chatvec.json")).unwrap()).unwrap()
}

fn requested(hub: &MockHub, needle: &str) -> bool {
    hub.requests().iter().any(|r| r.path.contains(needle))
}

#[test]
fn hub_ids_download_and_merge_bit_identical_to_the_local_merge() {
    let env = Env::new();
    let out = env.dir.path().join("out");
    let o = env.merge("org/base", "org/chat", "org/target", &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let local = env.dir.path().join("local");
    local_merge(&local);
    assert_eq!(weights_of(&out), weights_of(&local));
    assert!(!weights_of(&out).is_empty());
    // Python's layout: refs/main holds the commit, snapshot files are relative links into blobs/.
    let repo = env.cache().join("models--org--chat");
    let commit = std::fs::read_to_string(repo.join("refs/main")).unwrap();
    let shard = repo.join("snapshots").join(&commit).join("model-00001-of-00003.safetensors");
    let link = std::fs::read_link(&shard).unwrap();
    let bytes = std::fs::read(fixture("chat/model-00001-of-00003.safetensors")).unwrap();
    assert_eq!(link, Path::new("../../blobs").join(sha256_hex(&bytes)));
    assert_eq!(std::fs::read(&shard).unwrap(), bytes);
    // Every input's resolved commit is in the recipe.
    let r = recipe(&out);
    for role in ["base", "chat", "target"] {
        let c = std::fs::read_to_string(env.cache().join(format!("models--org--{role}/refs/main"))).unwrap();
        assert_eq!(r["inputs"][role]["revision"], c.as_str(), "{role}");
        assert_eq!(r["inputs"][role]["hub_id"], format!("org/{role}"));
    }
    // A second run finds everything in the cache and asks nothing.
    env.hub.clear_log();
    let o = env.merge("org/base", "org/chat", "org/target", &env.dir.path().join("again"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(env.hub.requests().is_empty(), "{:?}", env.hub.requests());
}

#[test]
fn every_model_command_takes_hub_ids() {
    let env = Env::new();
    let o = env.run(&["inspect", "--base", "org/base", "--chat", "org/chat", "--json", "--quiet"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env.run(&["generate", "--model", "org/chat", "--prompt", "hi", "--max-new-tokens", "2", "--greedy"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let vec = env.dir.path().join("vec");
    let o = env.run(&["extract", "--base", "org/base", "--chat", "org/chat", "-o", vec.to_str().unwrap(), "-q"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(recipe(&vec)["inputs"]["base"]["hub_id"], "org/base");
}

#[test]
fn gated_repo_needs_a_token_with_access() {
    let env = Env::new();
    env.hub.gate("org/chat", "hf_granted");
    let o = env.run(&["download", "org/chat"], &[]);
    assert_line_snapshot!(fails_with(&o));
    let o = env.run(&["download", "org/chat"], &[("HF_TOKEN", "hf_other")]);
    assert_line_snapshot!(fails_with(&o));
    // The token `huggingface-cli login` writes is used.
    std::fs::create_dir_all(env.home()).unwrap();
    std::fs::write(env.home().join("token"), "hf_granted\n").unwrap();
    env.hub.clear_log();
    let snap = env.download("org/chat", &[]);
    assert_eq!(std::fs::read(snap.join("config.json")).unwrap(), std::fs::read(fixture("chat/config.json")).unwrap());
    // The token goes to the hub, never to the CDN.
    for r in env.hub.requests() {
        let to_cdn = r.path.starts_with("/cdn/");
        assert_eq!(r.auth.is_some(), !to_cdn, "{r:?}");
    }
}

#[test]
fn missing_repo_revision_and_file_each_get_their_own_line() {
    let env = Env::new();
    assert_line_snapshot!(fails_with(&env.run(&["download", "org/nothing"], &[])));
    let o = env.run(&["download", "org/nothing"], &[("HF_TOKEN", "hf_x")]);
    assert_line_snapshot!(fails_with(&o));
    assert_line_snapshot!(fails_with(&env.run(&["download", "org/base@v9"], &[])));
    env.hub.withhold("org/target", "tokenizer.json");
    assert_line_snapshot!(fails_with(&env.run(&["download", "org/target"], &[])));
    let o = env.run(&["download", "org/base"], &[("HF_ENDPOINT", "http://127.0.0.1:9")]);
    assert_line_snapshot!(fails_with(&o));
}

#[test]
fn offline_never_touches_the_network_and_names_the_cache() {
    let env = Env::new();
    let out = env.dir.path().join("out");
    let o = env.merge("org/base", "org/chat", "org/target", &out, &["--offline"]);
    assert_line_snapshot!(fails_with(&o));
    let o = env.run(&["download", "org/base"], &[("HF_HUB_OFFLINE", "1")]);
    assert_line_snapshot!(fails_with(&o));
    assert!(env.hub.requests().is_empty(), "{:?}", env.hub.requests());
    for m in ["org/base", "org/chat", "org/target"] {
        env.download(m, &[]);
    }
    env.hub.clear_log();
    let o = env.merge("org/base", "org/chat", "org/target", &out, &["--offline"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(env.hub.requests().is_empty(), "{:?}", env.hub.requests());
}

#[test]
fn dropped_connection_resumes_to_the_same_bytes() {
    let env = Env::new();
    let weights = std::fs::read(fixture("target/model.safetensors")).unwrap();
    let blob = env.cache().join("models--org--target/blobs").join(sha256_hex(&weights));
    let part = PathBuf::from(format!("{}.incomplete", blob.display()));
    // Dropped more often than one run resumes: the run fails and keeps what it got.
    env.hub.drop_after(&weights, 10_000, 4);
    let o = env.run(&["download", "org/target"], &[]);
    assert_line_snapshot!(fails_with(&o));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 40_000);
    assert!(!blob.exists());
    let commit = std::fs::read_to_string(env.cache().join("models--org--target/refs/main")).unwrap_or_default();
    assert!(commit.is_empty(), "no ref before the snapshot is complete");
    // The next run asks only for the rest, and a drop within a run is resumed in that run.
    env.hub.drop_after(&weights, 5_000, 1);
    env.hub.clear_log();
    let snap = env.download("org/target", &[]);
    let ranges: Vec<_> = env.hub.requests().into_iter().filter_map(|r| r.range).collect();
    assert_eq!(ranges, ["bytes=40000-", "bytes=45000-"]);
    assert_eq!(std::fs::read(snap.join("model.safetensors")).unwrap(), weights);
    assert!(!part.exists());
}

#[test]
fn ctrl_c_keeps_a_resumable_partial_and_no_half_written_snapshot() {
    let env = Env::new();
    let weights = std::fs::read(fixture("target/model.safetensors")).unwrap();
    let blob = env.cache().join("models--org--target/blobs").join(sha256_hex(&weights));
    let part = PathBuf::from(format!("{}.incomplete", blob.display()));
    env.hub.slow(Some(std::time::Duration::from_millis(20)));
    let mut command = env.command(env!("CARGO_BIN_EXE_chatvec"), &["download", "org/target", "-q"], &[]);
    let child = command.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::metadata(&part).map_or(0, |m| m.len()) == 0 {
        assert!(t0.elapsed().as_secs() < 30, "the download never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130));
    assert_line_snapshot!(fails_with(&o));
    let have = std::fs::metadata(&part).unwrap().len();
    assert!(have > 0 && (have as usize) < weights.len(), "{have}");
    let snaps = env.cache().join("models--org--target/snapshots");
    let linked = std::fs::read_dir(&snaps).unwrap().flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap());
    assert!(linked.map(|e| e.unwrap().file_name()).all(|n| n != "model.safetensors"));
    env.hub.slow(None);
    env.hub.clear_log();
    let snap = env.download("org/target", &[]);
    assert!(env.hub.requests().iter().any(|r| r.range.as_deref() == Some(&format!("bytes={have}-"))));
    assert_eq!(std::fs::read(snap.join("model.safetensors")).unwrap(), weights);
}

#[test]
fn bytes_that_miss_the_sha256_are_removed_not_kept() {
    let env = Env::new();
    let weights = std::fs::read(fixture("target/model.safetensors")).unwrap();
    env.hub.corrupt(&weights);
    let o = env.run(&["download", "org/target"], &[]);
    assert_line_snapshot!(fails_with(&o));
    let blobs = env.cache().join("models--org--target/blobs");
    let names: Vec<String> =
        std::fs::read_dir(&blobs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.starts_with(&sha256_hex(&weights))), "{names:?}");
}

#[test]
fn cache_dir_flag_and_hf_hub_cache_choose_the_cache() {
    let env = Env::new();
    let flag = env.dir.path().join("flag-cache");
    let o = env.run(&["download", "org/target", "-q", "--cache-dir", flag.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout)
        .starts_with(&flag.join("models--org--target/snapshots").display().to_string()));
    let var = env.dir.path().join("var-cache");
    let snap = env.download("org/target", &[("HF_HUB_CACHE", var.to_str().unwrap())]);
    assert!(snap.starts_with(var.join("models--org--target/snapshots")), "{}", snap.display());
    assert!(!env.cache().exists(), "HF_HOME/hub was not used");
}

#[test]
fn one_weight_format_when_the_repo_has_both() {
    let env = Env::new();
    let mut files = files_of(&fixture("target"));
    for extra in ["pytorch_model.bin", "consolidated.00.pth", "model.gguf", "flax_model.msgpack"] {
        files.insert(extra.into(), b"not fetched".to_vec());
    }
    env.hub.add_commit("org/both", files, Some("main"));
    let snap = env.download("org/both", &[]);
    let got: Vec<String> = files_of(&snap).into_keys().collect();
    let want: Vec<String> = files_of(&fixture("target")).into_keys().collect();
    assert_eq!(got, want);
    for skipped in ["pytorch_model.bin", "consolidated", "gguf", "msgpack"] {
        assert!(!requested(&env.hub, skipped), "{skipped} was requested");
    }
    // Without safetensors, the .bin is the one format taken.
    let mut files = files_of(&fixture("target"));
    files.remove("model.safetensors");
    files.insert("pytorch_model.bin".into(), b"torch".to_vec());
    files.insert("tf_model.h5".into(), b"tf".to_vec());
    env.hub.add_commit("org/bin", files, Some("main"));
    let snap = env.download("org/bin", &[]);
    assert_eq!(std::fs::read(snap.join("pytorch_model.bin")).unwrap(), b"torch");
    assert!(!snap.join("tf_model.h5").exists());
}

#[test]
fn pinned_revisions_get_that_commit() {
    let env = Env::new();
    let old = env.hub.add_commit("org/m", files_of(&fixture("target")), Some("v1"));
    let new = env.hub.add_commit("org/m", files_of(&fixture("chat")), Some("main"));
    let config = |snap: &Path| std::fs::read(snap.join("config.json")).unwrap();
    let snap = env.download(&format!("org/m@{old}"), &[]);
    assert!(snap.ends_with(&old));
    assert_eq!(config(&snap), std::fs::read(fixture("target/config.json")).unwrap());
    assert!(!env.cache().join("models--org--m/refs/main").exists(), "a commit writes no ref");
    assert_eq!(env.download("org/m@v1", &[]), snap);
    assert_eq!(std::fs::read_to_string(env.cache().join("models--org--m/refs/v1")).unwrap(), old);
    assert!(env.download("org/m", &[]).ends_with(&new));
    // The pinned commit is what the recipe records.
    let out = env.dir.path().join("out");
    let o = env.merge("org/base", "org/chat", &format!("org/m@{old}"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(recipe(&out)["inputs"]["target"]["revision"], old.as_str());
    assert_eq!(recipe(&out)["inputs"]["target"]["spec"], format!("org/m@{old}"));
}

#[test]
fn partly_cached_snapshot_is_completed_not_used() {
    let env = Env::new();
    let snap = env.download("org/base", &[]);
    std::fs::remove_file(snap.join("model-00003-of-00004.safetensors")).unwrap();
    env.hub.clear_log();
    let out = env.dir.path().join("out");
    let o = env.merge("org/base", "org/chat", "org/target", &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let base_files: Vec<_> =
        env.hub.requests().into_iter().filter(|r| r.path.starts_with("/org/base/resolve/")).map(|r| r.path).collect();
    assert_eq!(base_files.len(), 1, "only the missing shard: {base_files:?}");
    assert!(base_files[0].ends_with("/model-00003-of-00004.safetensors"));
    assert!(snap.join("model-00003-of-00004.safetensors").is_file());
}

/// Issue 12, item 10: a revision is a branch, tag or commit hash, and a snapshot stays inside
/// `snapshots/`, whatever the revision or the `refs/` file says.
#[test]
fn revisions_cannot_load_a_folder_outside_the_cache() {
    let env = Env::new();
    // A complete model outside the cache, where each trick would lead.
    let outside = env.dir.path().join("x");
    std::fs::create_dir_all(&outside).unwrap();
    for (k, v) in files_of(&fixture("target")) {
        std::fs::write(outside.join(k), v).unwrap();
    }
    let out = env.dir.path().join("out");
    let escape = format!("org/target@../../../{}", "x");
    let absolute = format!("org/target@{}", outside.display());
    for spec in [escape.as_str(), absolute.as_str()] {
        let o = env.merge("org/base", "org/chat", spec, &out, &[]);
        assert_line_snapshot!(fails_with(&o));
    }
    let repo = env.cache().join("models--org--target");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    for text in ["../../../x", outside.to_str().unwrap()] {
        std::fs::write(repo.join("refs/main"), text).unwrap();
        let o = env.run(&["inspect", "--vector", "org/target", "--json", "--offline"], &[]);
        assert_line_snapshot!(fails_with(&o));
    }
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    std::fs::create_dir_all(repo.join("snapshots")).unwrap();
    std::os::unix::fs::symlink(&outside, repo.join("snapshots").join(commit)).unwrap();
    let o = env.run(&["inspect", "--vector", "org/target", "--json", "--offline"], &[]);
    assert_line_snapshot!(fails_with(&o));
    assert!(!out.exists());
}

fn python(env: &Env, py: &str, script: &str, extra: &[(&str, &str)]) -> String {
    let o = env.command(py, &["-c", script], extra).output().unwrap();
    assert!(o.status.success(), "python: {}", stderr(&o));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
#[cfg_attr(not(have_py_huggingface_hub), ignore = "needs Python with huggingface_hub (CHATVEC_PYTHON)")]
fn python_finds_what_chatvec_downloaded_offline() {
    let py = chatvec_testkit::python();
    let env = Env::new();
    let snap = env.download("org/chat", &[]);
    let script = r#"
import hashlib, os
from huggingface_hub import snapshot_download, hf_hub_download
path = snapshot_download("org/chat", local_files_only=True)
print(path)
for f in sorted(os.listdir(path)):
    p = hf_hub_download("org/chat", f, local_files_only=True)
    print(f, hashlib.sha256(open(p, "rb").read()).hexdigest())
"#;
    env.hub.clear_log();
    let out = python(&env, &py, script, &[("HF_HUB_OFFLINE", "1")]);
    let mut lines = out.lines();
    assert_eq!(Path::new(lines.next().unwrap()), snap);
    let got: Vec<String> = lines.map(str::to_string).collect();
    let want: Vec<String> = files_of(&fixture("chat")).iter().map(|(f, b)| format!("{f} {}", sha256_hex(b))).collect();
    assert_eq!(got, want);
    assert!(env.hub.requests().is_empty());
}

#[test]
#[cfg_attr(not(have_py_huggingface_hub), ignore = "needs Python with huggingface_hub (CHATVEC_PYTHON)")]
fn chatvec_uses_what_python_downloaded_without_a_request() {
    let py = chatvec_testkit::python();
    let env = Env::new();
    let script = r#"
from huggingface_hub import snapshot_download
for m in ["org/base", "org/chat", "org/target"]:
    print(snapshot_download(m))
"#;
    let paths = python(&env, &py, script, &[]);
    assert_eq!(paths.lines().count(), 3, "{paths}");
    assert!(requested(&env.hub, "/cdn/"), "Python fetched LFS files through the CDN redirect");
    env.hub.clear_log();
    let out = env.dir.path().join("out");
    let o = env.merge("org/base", "org/chat", "org/target", &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(env.hub.requests().is_empty(), "{:?}", env.hub.requests());
    let local = env.dir.path().join("local");
    local_merge(&local);
    assert_eq!(weights_of(&out), weights_of(&local));
}

/// The mock hub's refusals are the ones `huggingface_hub` knows, so chatvec is tested against
/// what the real Hub sends.
#[test]
#[cfg_attr(not(have_py_huggingface_hub), ignore = "needs Python with huggingface_hub (CHATVEC_PYTHON)")]
fn python_reads_the_mock_hubs_refusals_as_the_hubs() {
    let py = chatvec_testkit::python();
    let env = Env::new();
    env.hub.gate("org/chat", "hf_granted");
    env.hub.withhold("org/target", "tokenizer.json");
    let script = r#"
from huggingface_hub import hf_hub_download, errors
for repo, rev, f in [("org/chat", "main", "config.json"), ("org/nothing", "main", "config.json"),
                     ("org/base", "v9", "config.json"), ("org/target", "main", "tokenizer.json")]:
    try:
        hf_hub_download(repo, f, revision=rev)
        print("downloaded")
    except Exception as e:
        print(type(e).__name__)
"#;
    let out = python(&env, &py, script, &[]);
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got, ["GatedRepoError", "RepositoryNotFoundError", "RevisionNotFoundError", "RemoteEntryNotFoundError"]);
}

/// Files under `dir`, recursively, by path relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// Nothing of `file` (nor any partial download) is in the cache.
fn not_cached(env: &Env, file: &str) {
    let files = files_under(&env.cache());
    assert!(!files.iter().any(|f| f.ends_with(file) || f.ends_with(".incomplete")), "{files:?}");
}

#[test]
fn bad_compute_flags_fail_before_any_request_for_every_command() {
    let env = Env::new();
    let out = env.dir.path().join("out");
    let (o, text) = (out.to_str().unwrap(), fixture("base/config.json"));
    let t = text.to_str().unwrap();
    let pair = ["--base", "org/base", "--chat", "org/chat", "--target", "org/target", "-o", o];
    let cases: Vec<Vec<&str>> = vec![
        vec!["generate", "--model", "org/chat", "--prompt", "hi", "--quantize", "q9"],
        vec!["generate", "--model", "org/chat", "--prompt", "hi", "--device", "tpu"],
        vec!["generate", "--model", "org/chat", "--prompt", "hi", "--dtype", "f8"],
        vec!["generate", "--model", "org/chat", "--messages", "/no/such.json"],
        vec!["chat", "--model", "org/chat", "--quantize", "q9"],
        vec!["chat", "--model", "org/chat", "--chat-template", "/no/such.jinja"],
        vec!["eval", "ppl", "--model", "org/chat", "--text", t, "--quantize", "q9"],
        vec!["eval", "ppl", "--model", "org/chat", "--text", "/no/such.txt"],
        vec!["eval", "chat", "--model", "org/chat", "--device", "cuda:x"],
        vec!["report", "--target", "org/target", "--merged", "org/chat", "-o", o, "--dtype", "f8"],
        [&["sweep"], &pair[..], &["--compute-dtype", "f8"]].concat(),
        [&["sweep"], &pair[..], &["--quantize", "q9"]].concat(),
        [&["sweep"], &pair[..], &["--ratio", "nan"]].concat(),
        [&["merge"], &pair[..], &["--ratios", "inf"]].concat(),
        [&["merge"], &pair[..], &["--gguf", "q9"]].concat(),
        vec!["export", "gguf", "--model", "org/chat", "-o", "x.gguf", "--type", "q9"],
        vec!["apply", "--target", "org/target", "--vector", "org/chat", "-o", o, "--ratio", "nan"],
    ];
    let mut lines = Vec::new();
    for args in cases {
        let r = env.run(&args, &[]);
        let err = stderr(&r);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(env.hub.requests().is_empty(), "{args:?} asked the hub {:?}", env.hub.requests());
        lines.push(format!("{}\n  {}", args.join(" "), err.trim_end()));
    }
    assert_line_snapshot!(lines.join("\n"));
    assert!(!out.exists());
}

#[test]
fn a_body_longer_than_announced_is_refused_and_not_cached() {
    let env = Env::new();
    env.hub.oversize("config.json", &[b' '; 65536]);
    let o = env.run(&["download", "org/chat", "--quiet"], &[]);
    assert_line_snapshot!(fails_with(&o));
    not_cached(&env, "config.json");
}

#[test]
#[cfg_attr(not(have_py_huggingface_hub), ignore = "needs Python with huggingface_hub (CHATVEC_PYTHON)")]
fn huggingface_hub_too_refuses_a_body_longer_than_announced() {
    let py = chatvec_testkit::python();
    let env = Env::new();
    env.hub.oversize("config.json", &[b' '; 65536]);
    let script =
        "import huggingface_hub as h\ntry:\n    h.hf_hub_download('org/chat', 'config.json')\n    print('ok')\n\
                  except Exception as e:\n    print(type(e).__name__, e)";
    let out = python(&env, &py, script, &[]);
    assert!(out.contains("Consistency check failed"), "huggingface_hub: {out}");
}

#[test]
fn an_endless_body_stops_at_the_announced_size() {
    let env = Env::new();
    env.hub.endless("config.json");
    let started = std::time::Instant::now();
    let o = env.run(&["download", "org/chat", "--quiet"], &[]);
    assert_line_snapshot!(fails_with(&o));
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());
    not_cached(&env, "config.json");
}

#[test]
fn an_etag_that_is_not_the_files_git_blob_id_is_refused() {
    let env = Env::new();
    env.hub.wrong_etag("tokenizer_config.json");
    let o = env.run(&["download", "org/chat", "--quiet"], &[]);
    assert_line_snapshot!(fails_with(&o));
    not_cached(&env, "tokenizer_config.json");
    // The ids the mock gives are git's own.
    let bytes = std::fs::read(fixture("chat/config.json")).unwrap();
    let git = Command::new("git").args(["hash-object", fixture("chat/config.json").to_str().unwrap()]).output();
    if let Some(g) = git.ok().filter(|g| g.status.success()) {
        assert_eq!(String::from_utf8_lossy(&g.stdout).trim(), mockhub::git_etag(&bytes));
    }
}

#[test]
fn a_stalled_body_is_resumed_after_the_read_timeout_then_refused_in_one_line() {
    let shard = std::fs::read(fixture("chat/model-00001-of-00003.safetensors")).unwrap();
    let timeout = [("HF_HUB_DOWNLOAD_TIMEOUT", "1")];
    let env = Env::new();
    env.hub.stall_after(&shard, 1000, 1);
    let snap = env.download("org/chat", &timeout);
    assert_eq!(std::fs::read(snap.join("model-00001-of-00003.safetensors")).unwrap(), shard);
    assert!(env.hub.requests().iter().any(|r| r.range.as_deref() == Some("bytes=1000-")), "no resume");

    let env = Env::new();
    env.hub.stall_after(&shard, 1000, 100);
    let started = std::time::Instant::now();
    let o = env.run(&["download", "org/chat", "--quiet"], &timeout);
    assert_line_snapshot!(fails_with(&o));
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());

    let o = env.run(&["download", "org/chat", "--quiet"], &[("HF_HUB_DOWNLOAD_TIMEOUT", "soon")]);
    assert_line_snapshot!(fails_with(&o));
}

#[test]
fn a_metadata_file_announced_over_the_cap_is_never_downloaded() {
    let env = Env::new();
    env.hub.announce("model.safetensors.index.json", 1 << 30);
    let o = env.run(&["download", "org/chat", "--quiet"], &[]);
    assert_line_snapshot!(fails_with(&o));
    assert!(!env.hub.requests().iter().any(|r| r.method == "GET" && r.path.ends_with("index.json")));
    not_cached(&env, "index.json");
}

#[test]
fn control_characters_from_the_hub_are_escaped() {
    let env = Env::new();
    env.hub.commit_value("\u{1b}]0;owned\u{7}\u{1b}[2J\r");
    let o = env.run(&["download", "org/chat", "--quiet"], &[]);
    let err = fails_with(&o);
    assert_line_snapshot!(err.as_str());
    assert!(!err.contains(['\u{1b}', '\u{7}', '\r']), "{err:?}");
}
