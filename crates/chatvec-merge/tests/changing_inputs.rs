//! Inputs that change under a merge (issue 20 item 12): a shard rewritten in place is refused
//! before the output is moved into place, naming it; a shard truncated while mapped ends the run
//! with one line naming it (not SIGBUS), and no temporary output stays behind.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use chatvec_merge::{ops, MergeJob, Progress};
use common::*;

/// A progress display that does something to an input file at the first progress report, once
/// the merge has started reading.
struct Meddle<F: Fn() + Sync> {
    done: AtomicBool,
    action: F,
}

impl<F: Fn() + Sync> Progress for Meddle<F> {
    fn begin(&self, _: u64) {}
    fn advance(&self, _: u64) {
        if !self.done.swap(true, Ordering::SeqCst) {
            (self.action)();
        }
    }
    fn finish(&self) {}
}

/// Copies of the three fixture models under `dir`; returns (target, job writing `dir/out`).
fn job_in(dir: &Path) -> (PathBuf, MergeJob) {
    for m in ["base", "chat", "target"] {
        copy_dir(&fixture(m), &dir.join(m));
    }
    let job = MergeJob {
        base: model(&dir.join("base")),
        chat: model(&dir.join("chat")),
        target: model(&dir.join("target")),
        ratio: 1.0,
        plan: opts(),
        output: out_opts(&dir.join("out")),
    };
    (dir.join("target/model.safetensors"), job)
}

/// The names in `dir`, which must hold no output and no temporary output.
fn leftovers(dir: &Path) -> Vec<String> {
    let inputs = ["base", "chat", "target"];
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !inputs.contains(&n.as_str()))
        .collect()
}

#[test]
fn a_shard_rewritten_in_place_mid_merge_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (shard, job) = job_in(dir.path());
    let rewrite = || {
        // Past the timestamp granularity of the file system, so the new mtime differs.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut f = std::fs::OpenOptions::new().write(true).open(&shard).unwrap();
        let len = f.metadata().unwrap().len();
        f.seek(SeekFrom::Start(len - 64)).unwrap();
        f.write_all(&[0x7f; 64]).unwrap();
    };
    let err = ops::merge(&job, &Meddle { done: AtomicBool::new(false), action: rewrite }, &no_cancel()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("target/model.safetensors") && msg.contains("changed while it was read"), "{msg}");
    assert!(leftovers(dir.path()).is_empty(), "left behind: {:?}", leftovers(dir.path()));
}

#[test]
fn a_shard_replaced_by_rename_mid_merge_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (shard, job) = job_in(dir.path());
    let replace = || {
        let other = shard.with_extension("new");
        std::fs::copy(&shard, &other).unwrap();
        std::fs::rename(&other, &shard).unwrap();
    };
    let err = ops::merge(&job, &Meddle { done: AtomicBool::new(false), action: replace }, &no_cancel()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("target/model.safetensors") && msg.contains("replaced by another file"), "{msg}");
    assert!(leftovers(dir.path()).is_empty(), "left behind: {:?}", leftovers(dir.path()));
}

/// The child half of the truncation test: runs in a process of its own (the parent below),
/// because the run ends the process.
#[test]
fn truncation_child() {
    let Some(dir) = std::env::var_os("CHATVEC_TRUNCATION_CHILD") else { return };
    chatvec_format::fault::install();
    let (shard, job) = job_in(Path::new(&dir));
    let truncate = || std::fs::OpenOptions::new().write(true).open(&shard).unwrap().set_len(0).unwrap();
    let result = ops::merge(&job, &Meddle { done: AtomicBool::new(false), action: truncate }, &no_cancel());
    panic!("the merge of a truncated input returned: {:?}", result.map(|s| s.tensors));
}

#[test]
fn a_shard_truncated_mid_merge_ends_the_run_naming_it_and_removes_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "truncation_child", "--nocapture", "--test-threads", "1"])
        .env("CHATVEC_TRUNCATION_CHILD", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!((o.status.code(), o.status.signal()), (Some(1), None), "{err}");
    assert!(err.contains("target/model.safetensors") && err.contains("truncated or changed"), "{err}");
    assert!(leftovers(dir.path()).is_empty(), "left behind: {:?}", leftovers(dir.path()));
}
