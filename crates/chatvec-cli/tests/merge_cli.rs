//! `chatvec merge/extract/apply` as users run them: summaries, and every bad input failing with one
//! line that names the file (and tensor), a non-zero exit, no output left behind, inputs untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::{chatvec, copy_dir_files, copy_model, fixture, snapshot_settings, stderr, wait_for_temporary_output};

/// `chatvec merge` of the fixture base and chat into `target`, written to `out`, with `extra` flags.
fn merge_fixture(target: &Path, out: &Path, extra: &[&str]) -> Output {
    let (base, chat) = (fixture("base"), fixture("chat"));
    let mut args = vec!["merge", "--base", base.to_str().unwrap(), "--chat", chat.to_str().unwrap()];
    args.extend(["--target", target.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    args.extend(extra);
    chatvec(&args)
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    if !dir.exists() {
        return BTreeMap::new();
    }
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).map(|p| (p.clone(), std::fs::read(p).unwrap())).collect()
}

/// Runs a merge expected to fail; checks the one-line error, exit code, and that nothing is left.
fn merge_fails(base: &Path, chat: &Path, target: &Path) -> String {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let before: Vec<_> = [base, chat, target].iter().map(|d| snapshot(d)).collect();
    let o = chatvec(&[
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--chat",
        chat.to_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let err = stderr(&o);
    assert!(!o.status.success(), "should fail: {err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0, "nothing left beside OUT: {err}");
    let after: Vec<_> = [base, chat, target].iter().map(|d| snapshot(d)).collect();
    assert!(before == after, "inputs changed");
    err.trim_end().to_string()
}

#[test]
fn merge_prints_summary_and_json() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("m");
    let o = merge_fixture(&fixture("target"), &out, &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["merged"], 30);
    assert_eq!(s["eos_token_ids"], serde_json::json!([2001, 2004]));
    assert!(out.join("model.safetensors").is_file());
    // Refused the second time, and the first output is untouched.
    let before = snapshot(&out);
    let o = merge_fixture(&fixture("target"), &out, &[]);
    assert_error_snapshot!(&o);
    assert!(before == snapshot(&out));
}

/// The fixture merge into `out` on two threads (the memory estimate counts per-thread buffers).
fn merge_on_two_threads(out: &Path, extra: &str) -> Output {
    let (base, chat, target) = (fixture("base"), fixture("chat"), fixture("target"));
    Command::new(env!("CARGO_BIN_EXE_chatvec"))
        .env("RAYON_NUM_THREADS", "2")
        .args(["merge", "--base"])
        .args([&base, Path::new("--chat"), &chat, Path::new("--target"), &target, Path::new("-o"), out])
        .arg(extra)
        .output()
        .unwrap()
}

#[test]
fn merge_summary_for_people_and_for_programs_matches_its_snapshot() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("merged");
    let o = merge_on_two_threads(&out, "--quiet");
    assert!(o.status.success(), "{}", stderr(&o));
    let _filters = snapshot_settings().bind_to_scope();
    insta::assert_snapshot!("merge_summary", stderr(&o));

    let out = work.path().join("merged-json");
    let o = merge_on_two_threads(&out, "--json");
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(summary["seconds"].as_f64().unwrap() > 0.0, "{summary}");
    insta::assert_snapshot!("merge_summary_json", serde_json::to_string_pretty(&summary).unwrap());
}

#[test]
fn swapped_base_and_chat_are_warned_and_a_merge_names_the_next_step() {
    let work = tempfile::tempdir().unwrap();
    let (base, chat, target) = (fixture("base"), fixture("chat"), fixture("target"));
    let (base, chat, target) = (base.to_str().unwrap(), chat.to_str().unwrap(), target.to_str().unwrap());
    // The chat model given as the base: it has the chat template and the extra stop id.
    let swapped = work.path().join("swapped");
    let o = chatvec(&["merge", "--base", chat, "--chat", base, "--target", target, "-o", swapped.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&format!("warning: --base {chat} has a chat template and --chat {base} has none")), "{err}");
    assert!(err.contains("are --base and --chat swapped?"), "{err}");

    let out = work.path().join("merged");
    let o = merge_fixture(&fixture("target"), &out, &[]);
    let err = stderr(&o);
    assert!(o.status.success() && !err.contains("swapped"), "{err}");
    assert!(
        err.trim_end().ends_with(&format!("next: chatvec generate --model {} --prompt \"...\"", out.display())),
        "{err}"
    );
    // Not for programs, nor when nothing was written.
    for flag in ["--json", "--dry-run"] {
        let o = merge_fixture(&fixture("target"), &work.path().join(flag), &[flag]);
        assert!(o.status.success() && !stderr(&o).contains("next:"), "{flag}: {}", stderr(&o));
    }
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("m");
    let o = merge_fixture(&fixture("target_ext"), &out, &["--dry-run", "--exclude", "norm"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("would write 30 tensors"), "{err}");
    assert!(err.contains("2 row-adjusted"), "{err}");
    assert!(err.contains("7 copied"), "{err}");
    assert!(err.contains("peak memory"), "{err}");
    assert!(!out.exists());
}

#[test]
fn missing_model_directory_is_named() {
    let missing = Path::new("/nonexistent/model");
    assert_line_snapshot!(merge_fails(&fixture("base"), &fixture("chat"), missing));
}

#[test]
fn corrupt_shard_header_names_the_file() {
    let work = tempfile::tempdir().unwrap();
    let base = copy_model(work.path(), "base", "base");
    std::fs::write(base.join("model-00002-of-00004.safetensors"), b"\x10\0\0\0\0\0\0\0{not json at all").unwrap();
    assert_line_snapshot!(merge_fails(&base, &fixture("chat"), &fixture("target")));
}

#[test]
fn truncated_shard_names_the_file() {
    let work = tempfile::tempdir().unwrap();
    let chat = copy_model(work.path(), "chat", "chat");
    let f = chat.join("model-00002-of-00003.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 1000]).unwrap();
    assert_line_snapshot!(merge_fails(&fixture("base"), &chat, &fixture("target")));
    std::fs::write(&f, &bytes[..5]).unwrap();
    assert_line_snapshot!(merge_fails(&fixture("base"), &chat, &fixture("target")));
}

#[test]
fn index_naming_a_missing_shard_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let base = copy_model(work.path(), "base", "base");
    std::fs::remove_file(base.join("model-00003-of-00004.safetensors")).unwrap();
    assert_line_snapshot!(merge_fails(&base, &fixture("chat"), &fixture("target")));
}

#[test]
fn missing_weights_and_bad_config_are_named() {
    let work = tempfile::tempdir().unwrap();
    let t = copy_model(work.path(), "target", "t");
    std::fs::remove_file(t.join("model.safetensors")).unwrap();
    assert_line_snapshot!(merge_fails(&fixture("base"), &fixture("chat"), &t));
    let t2 = copy_model(work.path(), "target", "t2");
    std::fs::write(t2.join("config.json"), "{").unwrap();
    assert_line_snapshot!(merge_fails(&fixture("base"), &fixture("chat"), &t2));
}

/// Rewrites one tensor of a single-file model with another dtype/shape.
fn rewrite_tensor(model: &Path, name: &str, dtype: safetensors::Dtype, shape: Vec<usize>) {
    let path = model.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let numel: usize = shape.iter().product();
    let new_data = vec![0u8; numel * dtype.bitsize() / 8];
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            if n == name {
                (n, safetensors::tensor::TensorView::new(dtype, shape.clone(), &new_data).unwrap())
            } else {
                (n, v)
            }
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(&path, out).unwrap();
}

#[test]
fn shape_mismatch_names_tensor_and_three_shapes_before_writing() {
    let work = tempfile::tempdir().unwrap();
    let t = copy_model(work.path(), "target", "t");
    rewrite_tensor(&t, "model.layers.1.mlp.up_proj.weight", safetensors::Dtype::BF16, vec![170, 64]);
    assert_line_snapshot!(merge_fails(&fixture("base"), &fixture("chat"), &t));
}

#[test]
fn non_float_tensor_in_chat_is_refused() {
    let work = tempfile::tempdir().unwrap();
    // A single-file chat model: merge its shards into one file by writing a fresh one from target.
    let chat = copy_model(work.path(), "target", "chat");
    std::fs::copy(fixture("chat/config.json"), chat.join("config.json")).unwrap();
    rewrite_tensor(&chat, "model.norm.weight", safetensors::Dtype::I64, vec![64]);
    assert_line_snapshot!(merge_fails(&fixture("base"), &chat, &fixture("target")));
}

#[test]
fn chat_not_tuned_from_base_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let chat = copy_model(work.path(), "chat", "chat");
    let cfg = std::fs::read_to_string(chat.join("config.json")).unwrap().replace("500000.0", "1000000.0");
    std::fs::write(chat.join("config.json"), cfg).unwrap();
    assert_line_snapshot!(merge_fails(&fixture("base"), &chat, &fixture("target")));
}

#[test]
fn target_config_drift_is_warned() {
    let work = tempfile::tempdir().unwrap();
    let t = copy_model(work.path(), "target", "t");
    let cfg = std::fs::read_to_string(t.join("config.json")).unwrap().replace("500000.0", "10000.0");
    std::fs::write(t.join("config.json"), cfg).unwrap();
    let out = work.path().join("o");
    let o = merge_fixture(&t, &out, &["--quiet"]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("warning: target rope_theta 10000 differs from base 500000"), "{}", stderr(&o));
}

#[test]
fn full_disk_fails_cleanly() {
    // RLIMIT_FSIZE makes writes past 100 KiB fail with EFBIG, as a full disk fails with ENOSPC;
    // SIGXFSZ is ignored so the write returns the error instead of killing the process.
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let script = format!(
        "trap '' XFSZ; ulimit -f 100; exec '{}' merge --base '{}' --chat '{}' --target '{}' -o '{}' --quiet",
        env!("CARGO_BIN_EXE_chatvec"),
        fixture("base").display(),
        fixture("chat").display(),
        fixture("target").display(),
        out.display()
    );
    let o = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    let err = assert_error_snapshot!(&o);
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0, "{err}");
}

#[test]
fn extract_then_apply_on_the_command_line() {
    let work = tempfile::tempdir().unwrap();
    let v = work.path().join("vec");
    let o = chatvec(&[
        "extract",
        "--base",
        fixture("base").to_str().unwrap(),
        "--chat",
        fixture("chat").to_str().unwrap(),
        "-o",
        v.to_str().unwrap(),
        "--dtype",
        "bf16",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = work.path().join("applied");
    let o = chatvec(&[
        "apply",
        "--target",
        fixture("target").to_str().unwrap(),
        "--vector",
        v.to_str().unwrap(),
        "--vector",
        v.to_str().unwrap(),
        "--ratio",
        "0.5",
        "--ratio",
        "0.5",
        "-o",
        a.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(a.join("model.safetensors").is_file());
    let o = chatvec(&[
        "apply",
        "--target",
        fixture("target").to_str().unwrap(),
        "--vector",
        v.to_str().unwrap(),
        "--vector",
        v.to_str().unwrap(),
        "--ratio",
        "0.5",
        "--ratio",
        "0.5",
        "--ratio",
        "1",
        "-o",
        work.path().join("x").to_str().unwrap(),
    ]);
    assert_error_snapshot!(&o);
    // A model that is not a vector is refused by apply.
    let o = chatvec(&[
        "apply",
        "--target",
        fixture("target").to_str().unwrap(),
        "--vector",
        fixture("chat").to_str().unwrap(),
        "-o",
        work.path().join("y").to_str().unwrap(),
    ]);
    assert_error_snapshot!(&o);
}

#[test]
#[cfg_attr(
    not(all(have_py_transformers, have_py_torch)),
    ignore = "needs Python with transformers and torch (CHATVEC_PYTHON)"
)]
fn output_loads_in_transformers() {
    // Cross-check with the reference implementation: $CHATVEC_PYTHON (default python3) with
    // transformers and torch. CI installs them (.ci/run).
    let python = chatvec_testkit::python();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("m");
    let o = merge_fixture(&fixture("target"), &out, &["--quiet", "--shard-size", "300KB"]);
    assert!(o.status.success());
    let py = format!(
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\
         m = AutoModelForCausalLM.from_pretrained('{0}')\n\
         t = AutoTokenizer.from_pretrained('{0}')\n\
         s = t.apply_chat_template([{{'role': 'user', 'content': '안녕'}}], tokenize=False, add_generation_prompt=True)\n\
         assert s.endswith('<|start_header_id|>assistant<|end_header_id|>\\n\\n'), s\n\
         assert m.generation_config.eos_token_id == [2001, 2004], m.generation_config.eos_token_id\n\
         print('ok')",
        out.display()
    );
    let o = Command::new(&python).args(["-c", &py]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok"), "{}", stderr(&o));
}

#[test]
fn ctrl_c_stops_the_merge_and_leaves_nothing() {
    use chatvec_bench::synth::{write_random_model, LlamaShape};
    let work = tempfile::tempdir().unwrap();
    let shape =
        LlamaShape { hidden: 512, intermediate: 2048, layers: 8, heads: 8, kv_heads: 2, vocab: 8000, tie: false };
    // One random model copied three times: the merge does the same work on equal inputs.
    let base = work.path().join("base");
    std::fs::create_dir(&base).unwrap();
    write_random_model(&base, &shape, chatvec_format::DType::BF16, 1, 40_000_000).unwrap();
    for m in ["chat", "target"] {
        copy_dir_files(&base, &work.path().join(m));
    }
    let out = work.path().join("out");
    let t0 = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatvec"))
        .args(["merge", "--quiet", "--base"])
        .arg(work.path().join("base"))
        .arg("--chat")
        .arg(work.path().join("chat"))
        .arg("--target")
        .arg(work.path().join("target"))
        .arg("-o")
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_temporary_output(&mut child, work.path());
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let o = child.wait_with_output().unwrap();
    eprintln!("merge ended after {:?}", t0.elapsed());
    let err = stderr(&o);
    assert!(!o.status.success(), "the merge was interrupted while writing: {err}");
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 3, "only the three inputs remain: {left:?}");
}

#[test]
fn output_that_is_an_input_is_refused_even_with_force() {
    let work = tempfile::tempdir().unwrap();
    let t = copy_model(work.path(), "target", "t");
    let before = snapshot(&t);
    let o = merge_fixture(&t, &t, &["--force", "--quiet"]);
    assert_error_snapshot!(&o);
    assert!(before == snapshot(&t), "the target must be untouched");
}

/// Sets the first element of bf16 tensor `name` of a (copied, sharded) model to NaN, in place.
fn poison_with_nan(model: &Path, name: &str) {
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.safetensors.index.json")).unwrap()).unwrap();
    let file = model.join(index["weight_map"][name].as_str().unwrap());
    let mut bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = 8 + n + header[name]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[start..start + 2].copy_from_slice(&0x7fc0u16.to_le_bytes());
    std::fs::write(&file, bytes).unwrap();
}

#[test]
fn nan_in_the_chat_model_is_refused_in_one_line_and_written_with_allow_nonfinite() {
    let dir = tempfile::tempdir().unwrap();
    let chat = copy_model(dir.path(), "chat", "chat");
    let tensor = "model.layers.1.self_attn.v_proj.weight";
    poison_with_nan(&chat, tensor);
    assert_line_snapshot!(merge_fails(&fixture("base"), &chat, &fixture("target")));
    let out = dir.path().join("out");
    let o = chatvec(&[
        "merge",
        "--base",
        fixture("base").to_str().unwrap(),
        "--chat",
        chat.to_str().unwrap(),
        "--target",
        fixture("target").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--allow-nonfinite",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("warning: tensor {tensor}: written with 1 NaN/Inf values from the chat model")),
        "{err}"
    );
}

/// The safetensors files of a model directory, by name.
fn weight_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    snapshot(dir)
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "safetensors"))
        .map(|(p, b)| (PathBuf::from(p.file_name().unwrap()), b))
        .collect()
}

#[test]
fn several_ratios_write_one_model_per_ratio_equal_to_separate_merges() {
    let dir = tempfile::tempdir().unwrap();
    let o = merge_fixture(&fixture("target"), &dir.path().join("m"), &["--ratio", "1.0,0.5,-0.25", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = merge_fixture(&fixture("target"), &dir.path().join("t-{ratio}-x"), &["--ratio", "0.5,0.7", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (ratio, dirs) in
        [("1", vec!["m-r1"]), ("0.5", vec!["m-r0.5", "t-0.5-x"]), ("-0.25", vec!["m-r-0.25"]), ("0.7", vec!["t-0.7-x"])]
    {
        let single = dir.path().join(format!("single{ratio}"));
        let o = merge_fixture(&fixture("target"), &single, &["--ratio", ratio, "--quiet"]);
        assert!(o.status.success(), "{}", stderr(&o));
        for d in dirs {
            assert_eq!(weight_files(&dir.path().join(d)), weight_files(&single), "{d} vs ratio {ratio} alone");
        }
    }
    let twice = merge_fixture(&fixture("target"), &dir.path().join("dup"), &["--ratio", "0.5,0.5"]);
    assert_error_snapshot!(&twice);
}
