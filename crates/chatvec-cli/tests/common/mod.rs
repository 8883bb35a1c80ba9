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

/// `chatvec export gguf --model MODEL -o OUT --type KIND -q`, which must succeed.
pub fn export_gguf(model: &Path, out: &Path, kind: &str) {
    let (model_arg, out_arg) = (model.to_str().unwrap(), out.to_str().unwrap());
    let o = chatvec(&["export", "gguf", "--model", model_arg, "-o", out_arg, "--type", kind, "-q"]);
    assert!(o.status.success(), "export of {}: {}", model.display(), stderr(&o));
}

/// The run's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 1 (not a panic's 101 or an abort's 134) with one line, `error: ...`, holding every
/// needle; returns that line.
pub fn fails_with_one_line(o: &Output, needles: &[&str]) -> String {
    let err = error_line(o);
    for n in needles {
        assert!(err.contains(n), "{err} lacks {n}");
    }
    err
}

/// The one line of a refused run: exit 1 (not a panic's 101 or an abort's 134), one line,
/// `error: ...`. The line itself is for a snapshot ([`assert_error_snapshot!`]).
pub fn error_line(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err.trim_end().to_string()
}

/// insta settings for command output: what changes from run to run is replaced by a name, so
/// a snapshot holds the wording and the numbers that matter. Temporary folders become `[TMP]`,
/// the repository `[REPO]`, a local server's port `[PORT]`, a temporary output's process id, and a merge's timing line
/// `[seconds] s, [rate] GB/s`.
pub fn snapshot_settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    let temp = std::env::temp_dir();
    let temp = regex::escape(temp.to_str().unwrap().trim_end_matches('/'));
    let repo = root().canonicalize().unwrap();
    let manifest = regex::escape(env!("CARGO_MANIFEST_DIR"));
    settings.add_filter(&format!(r"{temp}/\.tmp[A-Za-z0-9]+"), "[TMP]");
    settings.add_filter(&format!(r"{manifest}/\.\./\.\."), "[REPO]");
    settings.add_filter(&regex::escape(repo.to_str().unwrap()), "[REPO]");
    settings.add_filter(r"[0-9.]+ s, [0-9.]+ [kMGT]?B/s read\+written", "[seconds] s, [rate] GB/s read+written");
    settings.add_filter(r#""seconds": [0-9.e-]+"#, r#""seconds": "[seconds]""#);
    settings.add_filter(r"127\.0\.0\.1:[0-9]+", "127.0.0.1:[PORT]");
    settings.add_filter(r"chatvec-tmp-[0-9]+", "chatvec-tmp-[PID]");
    settings
}

/// Asserts that the run `$output` failed with one error line (see [`error_line`]) and that the
/// line, paths filtered by [`snapshot_settings`], is the snapshot's; returns the line.
#[macro_export]
macro_rules! assert_error_snapshot {
    ($output:expr) => {{
        let line = $crate::common::error_line($output);
        $crate::assert_line_snapshot!(line.as_str());
        line
    }};
}

/// Asserts that `$text`, paths and timings filtered by [`snapshot_settings`], is the snapshot's.
#[macro_export]
macro_rules! assert_line_snapshot {
    ($text:expr) => {{
        let _filters = $crate::common::snapshot_settings().bind_to_scope();
        insta::assert_snapshot!($text);
    }};
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
