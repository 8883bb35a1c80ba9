//! `chatvec merge` on hostile and broken inputs (issue 12): outputs inside inputs, signals,
//! stale temporary directories, degenerate merges, and the wording of errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;

use common::{chatvec, copy_model, fixture, stderr, wait_for_temporary_output};

fn merge(base: &Path, chat: &Path, target: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["merge", "--quiet", "--base", base.to_str().unwrap(), "--chat", chat.to_str().unwrap()];
    args.extend(["--target", target.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    args.extend(extra);
    chatvec(&args)
}

fn merge_into(target: &Path, out: &Path, extra: &[&str]) -> Output {
    merge(&fixture("base"), &fixture("chat"), target, out, extra)
}

fn listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = walk(dir).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap_or_default())).collect();
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn an_output_inside_an_input_is_refused_even_before_it_exists() {
    let work = tempfile::tempdir().unwrap();
    let t = copy_model(work.path(), "target", "t");
    std::os::unix::fs::symlink(&t, work.path().join("link")).unwrap();
    let before = listing(&t);
    for out in [t.join("merged"), work.path().join("link/merged"), work.path().join("link/new/deeper")] {
        let o = merge_into(&t, &out, &["--force"]);
        assert_error_snapshot!(&o);
        assert!(before == listing(&t), "{} changed the target", out.display());
    }
}

/// A merge big enough to outlast 300 ms in a debug build (tens of MB), as in the Ctrl-C test.
fn big_inputs(dir: &Path) {
    use chatvec_bench::synth::{write_random_model, LlamaShape};
    let shape =
        LlamaShape { hidden: 512, intermediate: 2048, layers: 8, heads: 8, kv_heads: 2, vocab: 8000, tie: false };
    let base = dir.join("base");
    std::fs::create_dir(&base).unwrap();
    write_random_model(&base, &shape, chatvec_format::DType::BF16, 1, 40_000_000).unwrap();
    for m in ["chat", "target"] {
        let to = dir.join(m);
        std::fs::create_dir(&to).unwrap();
        for e in std::fs::read_dir(&base).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn sigterm_and_sighup_clean_up_and_exit_143_and_129() {
    let work = tempfile::tempdir().unwrap();
    big_inputs(work.path());
    for (signal, code) in [("-TERM", 143), ("-HUP", 129)] {
        let w = work.path();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatvec"))
            .args(["merge", "--quiet", "--base"])
            .args([w.join("base"), "--chat".into(), w.join("chat"), "--target".into(), w.join("target")])
            .args(["-o".into(), w.join("out")])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_temporary_output(&mut child, w);
        Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{signal}: {err}");
        assert!(err.contains("interrupted"), "{err}");
        let left: Vec<_> = std::fs::read_dir(w).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 3, "{signal}: only the three inputs remain: {left:?}");
    }
}

#[test]
fn temp_dirs_left_by_killed_runs_are_removed_by_the_next_run() {
    let work = tempfile::tempdir().unwrap();
    // What `kill -9` leaves: a hidden temporary output with a partial shard, whose PID is gone
    // (PIDs above the kernel's pid_max, at most 2^22, belong to no process).
    let stale = work.path().join(".out.chatvec-tmp-4999999");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("model-00001-of-00002.safetensors"), vec![0u8; 1000]).unwrap();
    let o = merge_into(&fixture("target"), &work.path().join("out"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("out")]);
}

#[test]
fn degenerate_merges_are_refused_with_a_reason() {
    let work = tempfile::tempdir().unwrap();
    // A target whose weight file holds no tensors.
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::copy(fixture("target/config.json"), empty.join("config.json")).unwrap();
    let header = b"{}      ";
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    std::fs::write(empty.join("model.safetensors"), st).unwrap();
    let o = merge_into(&empty, &work.path().join("o1"), &[]);
    assert_error_snapshot!(&o);
    // A base whose index has an empty weight_map.
    let base = copy_model(work.path(), "base", "base");
    std::fs::write(base.join("model.safetensors.index.json"), r#"{"metadata": {}, "weight_map": {}}"#).unwrap();
    let o = merge(&base, &fixture("chat"), &fixture("target"), &work.path().join("o2"), &[]);
    assert_error_snapshot!(&o);
    // A selection that leaves nothing to add the vector to.
    let o =
        merge_into(&fixture("target"), &work.path().join("o3"), &["--include", "no_such_tensor", "--no-special-rows"]);
    assert_error_snapshot!(&o);
    let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "no output was written: {left:?}");
}

#[test]
fn a_negative_ratio_is_accepted() {
    let work = tempfile::tempdir().unwrap();
    let o = merge_into(&fixture("target"), &work.path().join("o"), &["--ratio", "-0.5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recipe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("o/chatvec.json")).unwrap()).unwrap();
    assert_eq!(recipe["ratio"], -0.5);
}

#[test]
fn errors_name_the_right_file_once_without_debug_text() {
    let work = tempfile::tempdir().unwrap();
    // An OS error is printed once, not "X (os error 21): X (os error 21)".
    let t = copy_model(work.path(), "target", "t");
    std::fs::remove_file(t.join("config.json")).unwrap();
    std::fs::create_dir(t.join("config.json")).unwrap();
    let o = merge_into(&t, &work.path().join("o"), &[]);
    let err = assert_error_snapshot!(&o);
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    // An output whose parent is a file says so.
    std::fs::write(work.path().join("file"), "x").unwrap();
    let o = merge_into(&fixture("target"), &work.path().join("file/x"), &[]);
    assert_error_snapshot!(&o);
    // An index naming a file outside the directory is not called missing.
    let b = copy_model(work.path(), "base", "b");
    let index = b.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap().replace("model-00001-of-00004", "../b/model-00001-of-00004");
    std::fs::write(&index, text).unwrap();
    let o = merge(&b, &fixture("chat"), &fixture("target"), &work.path().join("o"), &[]);
    let err = assert_error_snapshot!(&o);
    assert!(!err.contains("missing"), "{err}");
}

#[test]
fn a_metadata_file_over_the_size_cap_is_refused_naming_it() {
    let work = tempfile::tempdir().unwrap();
    let b = copy_model(work.path(), "base", "b");
    let index = std::fs::OpenOptions::new().write(true).open(b.join("model.safetensors.index.json")).unwrap();
    index.set_len(33 << 20).unwrap();
    let o = merge(&b, &fixture("chat"), &fixture("target"), &work.path().join("o"), &[]);
    assert_error_snapshot!(&o);
    let t = copy_model(work.path(), "target", "t");
    std::fs::OpenOptions::new().write(true).open(t.join("config.json")).unwrap().set_len(40 << 20).unwrap();
    let o = merge_into(&t, &work.path().join("o"), &[]);
    assert_error_snapshot!(&o);
    assert!(!work.path().join("o").exists());
}

#[test]
fn control_characters_in_shard_names_are_escaped() {
    let work = tempfile::tempdir().unwrap();
    let b = copy_model(work.path(), "base", "b");
    let index = b.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap().replace("model-00001-of-00004", "\\u001b[2J\\u0007evil\\r");
    std::fs::write(&index, text).unwrap();
    let o = merge(&b, &fixture("chat"), &fixture("target"), &work.path().join("o"), &[]);
    let err = assert_error_snapshot!(&o);
    assert!(!err.contains(['\u{1b}', '\u{7}', '\r']), "{err:?}");
}

#[test]
fn a_gguf_output_inside_an_input_model_is_refused_through_symlinks_too() {
    let work = tempfile::tempdir().unwrap();
    let t = copy_model(work.path(), "target", "t");
    let c = copy_model(work.path(), "chat", "c");
    std::os::unix::fs::symlink(&t, work.path().join("link")).unwrap();
    let (before_t, before_c) = (listing(&t), listing(&c));
    let ts = t.to_str().unwrap();
    for out in [t.join("model.safetensors"), t.join("new.gguf"), work.path().join("link/x.gguf")] {
        let o = chatvec(&["export", "gguf", "--model", ts, "-o", out.to_str().unwrap(), "--force", "--quiet"]);
        assert_error_snapshot!(&o);
    }
    for out in [c.join("model-00001-of-00003.safetensors"), c.join("merged.gguf")] {
        let o = merge(&fixture("base"), &c, &fixture("target"), &out, &["--gguf", "f16", "--force"]);
        assert_error_snapshot!(&o);
    }
    assert!(before_t == listing(&t) && before_c == listing(&c), "an input changed");
    // Beside the inputs it is written.
    let o = chatvec(&["export", "gguf", "--model", ts, "-o", work.path().join("t.gguf").to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `file` of `model` with `key` set to `value`.
fn set_json(model: &Path, file: &str, key: &str, value: serde_json::Value) {
    let path = model.join(file);
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn stop_ids_beyond_32_bits_or_the_vocabulary_are_refused_naming_file_and_key() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("o");
    for (file, id) in
        [("generation_config.json", 4294967296u64), ("config.json", 4294967296), ("generation_config.json", 999_999)]
    {
        let t = copy_model(work.path(), "target", "t");
        set_json(&t, file, "eos_token_id", serde_json::json!([2001, id]));
        let o = merge_into(&t, &out, &[]);
        assert_error_snapshot!(&o);
        std::fs::remove_dir_all(&t).unwrap();
    }
    // A vector's manifest, read by `apply`.
    let v = work.path().join("v");
    let (b, c) = (fixture("base"), fixture("chat"));
    let o =
        chatvec(&["extract", "--base", b.to_str().unwrap(), "--chat", c.to_str().unwrap(), "-o", v.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    set_json(&v, "chatvec.json", "chat_eos_token_ids", serde_json::json!([4294967296u64]));
    let t = fixture("target");
    let o = chatvec(&[
        "apply",
        "--target",
        t.to_str().unwrap(),
        "--vector",
        v.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_error_snapshot!(&o);
    assert!(!out.exists());
}
