//! Input shapes of the real world: tied embeddings, the hub cache, cancellation.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use chatvec_format::NoProgress;
use chatvec_hub::resolve_model;
use chatvec_merge::{ops, MergeJob};
use common::*;

/// Writes fixture `name` as a tied-embedding model: no lm_head, `tie_word_embeddings: true`.
fn tied_copy(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let mut t = read_tensors(&fixture(name));
    t.remove("lm_head.weight");
    let mut cfg = config_of(&fixture(name));
    cfg["tie_word_embeddings"] = serde_json::json!(true);
    let out = dir.join(name);
    write_model(&out, &t, &cfg);
    out
}

fn merge(
    base: &std::path::Path,
    chat: &std::path::Path,
    target: &std::path::Path,
    out: &std::path::Path,
) -> chatvec_merge::Result<chatvec_merge::Summary> {
    let job = MergeJob {
        base: model(base),
        chat: model(chat),
        target: model(target),
        ratio: 1.0,
        plan: opts(),
        output: out_opts(out),
    };
    ops::merge(&job, &NoProgress, &no_cancel())
}

#[test]
fn tied_embeddings_merge_without_lm_head() {
    let dir = tempfile::tempdir().unwrap();
    let (b, c, t) = (tied_copy(dir.path(), "base"), tied_copy(dir.path(), "chat"), tied_copy(dir.path(), "target"));
    let out = dir.path().join("out");
    let s = merge(&b, &c, &t, &out).unwrap();
    assert_eq!(s.tensors, 29);
    assert!(s.missing_from_target.is_empty(), "{:?}", s.missing_from_target);
    let got = read_tensors(&out);
    assert!(!got.contains_key("lm_head.weight"));
    let want = read_tensors(&fixture("expected/merged_ratio_1.0.safetensors"));
    assert_eq!(got["model.embed_tokens.weight"], want["model.embed_tokens.weight"]);
}

#[test]
fn untied_target_gets_the_tied_chat_vector_on_its_lm_head() {
    // Base and chat tie lm_head to the embedding; the target has its own lm_head: the vector for
    // lm_head is then chat.embed − base.embed, which is what the tied models compute with.
    let dir = tempfile::tempdir().unwrap();
    let (b, c) = (tied_copy(dir.path(), "base"), tied_copy(dir.path(), "chat"));
    let out = dir.path().join("out");
    merge(&b, &c, &fixture("target"), &out).unwrap();
    let (tt, bt, ct) = (read_tensors(&fixture("target")), read_tensors(&b), read_tensors(&c));
    let (t, bv, cv) = (
        tt["lm_head.weight"].values(),
        bt["model.embed_tokens.weight"].values(),
        ct["model.embed_tokens.weight"].values(),
    );
    let want: Vec<f64> = (0..t.len()).map(|i| t[i] + (cv[i] - bv[i])).collect();
    assert_eq!(read_tensors(&out)["lm_head.weight"].bytes, bf16_bytes(&want));
}

#[test]
fn tied_target_reports_the_lm_head_it_does_not_have() {
    let dir = tempfile::tempdir().unwrap();
    let t = tied_copy(dir.path(), "target");
    let out = dir.path().join("out");
    let s = merge(&fixture("base"), &fixture("chat"), &t, &out).unwrap();
    assert_eq!(s.missing_from_target, vec!["lm_head.weight".to_string()]);
}

#[test]
fn tensors_only_in_target_are_copied() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = read_tensors(&fixture("target"));
    let extra =
        Raw { dtype: "I64".into(), shape: vec![3], bytes: [1i64, 2, 3].iter().flat_map(|x| x.to_le_bytes()).collect() };
    t.insert("model.rotary_emb.position_ids".into(), extra.clone());
    let target = dir.path().join("t");
    write_model(&target, &t, &config_of(&fixture("target")));
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("target").join(f), target.join(f)).unwrap();
    }
    let out = dir.path().join("out");
    let s = merge(&fixture("base"), &fixture("chat"), &target, &out).unwrap();
    assert_eq!(s.only_in_target, vec!["model.rotary_emb.position_ids".to_string()]);
    assert_eq!(read_tensors(&out)["model.rotary_emb.position_ids"], extra);
}

#[test]
fn hub_ids_resolve_through_a_cache_of_symlinked_blobs() {
    // The real cache layout: snapshots/<commit>/<file> are symlinks into blobs/.
    let cache = tempfile::tempdir().unwrap();
    for (id, fx) in [("meta/base", "base"), ("meta/chat", "chat"), ("ko/target", "target")] {
        let repo = cache.path().join(format!("models--{}", id.replace('/', "--")));
        let snap = repo.join("snapshots/c0ffee0000000000000000000000000000000000");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "c0ffee0000000000000000000000000000000000").unwrap();
        for e in std::fs::read_dir(fixture(fx)).unwrap() {
            let p = e.unwrap().path();
            let blob = repo.join("blobs").join(format!("blob-{}", p.file_name().unwrap().to_string_lossy()));
            std::fs::copy(&p, &blob).unwrap();
            std::os::unix::fs::symlink(&blob, snap.join(p.file_name().unwrap())).unwrap();
        }
    }
    let r = |s: &str| resolve_model(s, Some(cache.path())).unwrap();
    let out = cache.path().join("out");
    let job = MergeJob {
        base: r("meta/base"),
        chat: r("meta/chat"),
        target: r("ko/target@main"),
        ratio: 1.0,
        plan: opts(),
        output: out_opts(&out),
    };
    ops::merge(&job, &NoProgress, &no_cancel()).unwrap();
    assert_eq!(read_tensors(&out), read_tensors(&fixture("expected/merged_ratio_1.0.safetensors")));
    assert!(std::fs::symlink_metadata(out.join("tokenizer.json")).unwrap().file_type().is_file(), "copies, not links");
    let recipe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("chatvec.json")).unwrap()).unwrap();
    assert_eq!(recipe["inputs"]["target"]["revision"], "c0ffee0000000000000000000000000000000000");
    assert_eq!(recipe["inputs"]["target"]["hub_id"], "ko/target");
}

#[test]
fn cancellation_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let job = MergeJob {
        base: model(&fixture("base")),
        chat: model(&fixture("chat")),
        target: model(&fixture("target")),
        ratio: 1.0,
        plan: opts(),
        output: out_opts(&out),
    };
    let err = ops::merge(&job, &NoProgress, &AtomicBool::new(true)).unwrap_err();
    assert!(err.is_interrupted(), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn mixed_input_dtypes_are_read_exactly() {
    // Chat stored in f32 and target in f16: values are widened exactly, computed in f64, and
    // rounded once to the target's dtype.
    let dir = tempfile::tempdir().unwrap();
    let to = |name: &str, dtype: &str| -> BTreeMap<String, Raw> {
        read_tensors(&fixture(name))
            .into_iter()
            .map(|(n, r)| {
                let vals = r.values();
                let bytes = match dtype {
                    "F32" => vals.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect(),
                    _ => vals.iter().flat_map(|v| half::f16::from_f64(*v).to_le_bytes()).collect(),
                };
                (n, Raw { dtype: dtype.into(), shape: r.shape, bytes })
            })
            .collect()
    };
    let chat = dir.path().join("chat");
    write_model(&chat, &to("chat", "F32"), &config_of(&fixture("chat")));
    let target = dir.path().join("target");
    let t16 = to("target", "F16");
    write_model(&target, &t16, &config_of(&fixture("target")));
    let out = dir.path().join("out");
    merge(&fixture("base"), &chat, &target, &out).unwrap();
    let (b, c, got) = (read_tensors(&fixture("base")), read_tensors(&fixture("chat")), read_tensors(&out));
    for (name, t) in &t16 {
        let (tv, bv, cv) = (t.values(), b[name].values(), c[name].values());
        assert_eq!(got[name].dtype, "F16");
        for i in 0..tv.len() {
            let exact = tv[i] + (cv[i] - bv[i]);
            let g = u16::from_le_bytes([got[name].bytes[2 * i], got[name].bytes[2 * i + 1]]);
            assert_eq!(g, f16_nearest(exact), "{name}[{i}]");
        }
    }
}

#[test]
fn legacy_pytorch_bin_target_merges_like_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../chatvec-pickle/tests/data/llama-sharded");
    let target = dir.path().join("t");
    copy_dir(&bin, &target);
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("target").join(f), target.join(f)).unwrap();
    }
    let before = snapshot(&target);
    let out = dir.path().join("out");
    let s = merge(&fixture("base"), &fixture("chat"), &target, &out).unwrap();
    assert_eq!(s.merged, 30);
    assert_eq!(read_tensors(&out), read_tensors(&fixture("expected/merged_ratio_1.0.safetensors")));
    assert!(!out.join("pytorch_model.bin.index.json").exists(), "weights are written as safetensors only");
    assert!(before == snapshot(&target));
}
