//! Fixture helpers shared by the CLI test binaries: the bundled models, running the built
//! `chatvec`, and the checks every bad-input test makes. Each binary uses a part of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/llama-tiny");

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file or folder of `fixtures/llama-tiny`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// Runs the built `chatvec` with `args` (stdin empty) and waits for it.
pub fn chatvec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatvec")).args(args).stdin(Stdio::null()).output().unwrap()
}

/// The run's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 1 (not a panic's 101 or an abort's 134) with one line, `error: ...`, holding every
/// needle; returns that line.
pub fn fails_with_one_line(o: &Output, needles: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{err} lacks {n}");
    }
    err
}

/// Copies the files of `from` into `to` (created).
pub fn copy_dir_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// Copies fixture model `from` into `dir/name` (writable) and returns its path.
pub fn copy_model(dir: &Path, from: &str, name: &str) -> PathBuf {
    let to = dir.join(name);
    copy_dir_files(&fixture(from), &to);
    to
}

/// The oracle's model in `dir/model`: target's config.json (eos 2001 only,
/// max_position_embeddings 256), the tokenizer files with the chat template, and the ratio-1.0
/// merge as model.safetensors. Its transformers output is `expected/generation_oracle.json`.
pub fn oracle_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(fixture("target/config.json"), model.join("config.json")).unwrap();
    copy_dir_files(&fixture("tokenizer"), &model);
    std::fs::copy(fixture("expected/merged_ratio_1.0.safetensors"), model.join("model.safetensors")).unwrap();
    model
}

/// Blocks until `child` (a weight job writing into `dir`) has created its temporary output,
/// the event after which a signal lands while shards are written; fails if the child exits
/// first or nothing appears within a minute.
pub fn wait_for_temporary_output(child: &mut Child, dir: &Path) {
    let started = std::time::Instant::now();
    let appeared =
        || std::fs::read_dir(dir).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains("chatvec-tmp"));
    while !appeared() {
        assert!(child.try_wait().unwrap().is_none(), "the job ended before writing anything");
        assert!(started.elapsed().as_secs() < 60, "no temporary output appeared in {}", dir.display());
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
