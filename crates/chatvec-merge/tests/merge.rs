//! The merge arithmetic against transformers' correctly rounded fixtures and float64 references.

mod common;

use std::sync::atomic::AtomicBool;

use chatvec_format::NoProgress;
use chatvec_merge::kernel::PorterParams;
use chatvec_merge::{ops, ApplyJob, ExtractJob, MergeJob, Selection};
use common::*;

fn merge_to(
    out: &std::path::Path,
    target: &str,
    ratio: f64,
    plan: chatvec_merge::PlanOptions,
) -> chatvec_merge::Summary {
    let job = MergeJob {
        base: model(&fixture("base")),
        chat: model(&fixture("chat")),
        target: model(&fixture(target)),
        ratio,
        plan,
        output: out_opts(out),
    };
    ops::merge(&job, &NoProgress, &no_cancel()).unwrap()
}

fn assert_same_tensors(out: &std::path::Path, expected: &str) {
    let got = read_tensors(out);
    let want = read_tensors(&fixture("expected").join(expected));
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!((&g.dtype, &g.shape), (&w.dtype, &w.shape), "{name}");
        let wrong = g.bytes.chunks(2).zip(w.bytes.chunks(2)).filter(|(a, b)| a != b).count();
        assert_eq!(wrong, 0, "{name}: {wrong} elements differ from the correctly rounded result");
    }
}

#[test]
fn merge_ratio_1_is_bit_identical_to_correctly_rounded_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let s = merge_to(&out, "target", 1.0, opts());
    assert_same_tensors(&out, "merged_ratio_1.0.safetensors");
    assert_eq!(s.merged, 30);
    assert_eq!(s.copied, 0);
}

#[test]
fn merge_ratio_half_is_bit_identical_to_correctly_rounded_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    merge_to(&out, "target", 0.5, opts());
    assert_same_tensors(&out, "merged_ratio_0.5.safetensors");
}

#[test]
fn several_ratios_in_one_pass_equal_the_correctly_rounded_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let outputs: Vec<(f64, chatvec_merge::OutputOptions)> =
        [1.0, 0.5].iter().map(|&r| (r, out_opts(&dir.path().join(format!("r{r}"))))).collect();
    let job = MergeJob {
        base: model(&fixture("base")),
        chat: model(&fixture("chat")),
        target: model(&fixture("target")),
        ratio: 0.0,
        plan: opts(),
        output: out_opts(&dir.path().join("unused")),
    };
    let s = ops::merge_ratios(&job, &outputs, &NoProgress, &no_cancel()).unwrap();
    assert_same_tensors(&outputs[0].1.path, "merged_ratio_1.0.safetensors");
    assert_same_tensors(&outputs[1].1.path, "merged_ratio_0.5.safetensors");
    assert_eq!(s.len(), 2);
    assert!(!dir.path().join("unused").exists());
    let recipe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(outputs[1].1.path.join("chatvec.json")).unwrap()).unwrap();
    assert_eq!(recipe["ratio"], 0.5);
    // The inputs were read once for both outputs.
    assert_eq!(s[0].bytes_read, s[1].bytes_read);
    let single = merge_to(&dir.path().join("single"), "target", 1.0, opts());
    assert_eq!(s[0].bytes_read, single.bytes_read);
}

#[test]
fn grown_vocab_rows_keep_target_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let s = merge_to(&out, "target_ext", 1.0, opts());
    assert_same_tensors(&out, "merged_ext_ratio_1.0.safetensors");
    assert_eq!(s.row_adjusted, 2, "embed_tokens and lm_head");
}

#[test]
fn extract_gives_the_exact_f32_vector_and_apply_reproduces_merge_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let vec_dir = dir.path().join("vec");
    let job = ExtractJob {
        base: model(&fixture("base")),
        chat: model(&fixture("chat")),
        plan: opts(),
        output: out_opts(&vec_dir),
    };
    let s = ops::extract(&job, &NoProgress, &no_cancel()).unwrap();
    assert_eq!(s.inexact_elements, 0);
    let got = read_tensors(&vec_dir);
    let want = read_tensors(&fixture("expected/chat_vector_f32.safetensors"));
    assert_eq!(got, want);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vec_dir.join("chatvec.json")).unwrap()).unwrap();
    assert_eq!(manifest["kind"], "chat_vector");
    assert_eq!(manifest["chat_eos_token_ids"], serde_json::json!([2001, 2004]));
    assert_eq!(manifest["tensors"].as_array().unwrap().len(), 30);

    let applied = dir.path().join("applied");
    let job = ApplyJob {
        target: model(&fixture("target")),
        vectors: vec![(model(&vec_dir), 1.0)],
        plan: opts(),
        output: out_opts(&applied),
    };
    ops::apply(&job, &NoProgress, &no_cancel()).unwrap();
    let merged = dir.path().join("merged");
    merge_to(&merged, "target", 1.0, opts());
    for f in ["model.safetensors", "tokenizer_config.json", "generation_config.json", "config.json"] {
        assert_eq!(std::fs::read(applied.join(f)).unwrap(), std::fs::read(merged.join(f)).unwrap(), "{f}");
    }
}

#[test]
fn apply_adds_several_vectors_with_their_own_ratios() {
    let dir = tempfile::tempdir().unwrap();
    // Two different vectors: chat − base, and target − base (as if from another fine-tune).
    let v1 = dir.path().join("v1");
    let v2 = dir.path().join("v2");
    for (out, chat) in [(&v1, "chat"), (&v2, "target")] {
        let job = ExtractJob {
            base: model(&fixture("base")),
            chat: model(&fixture(chat)),
            plan: opts(),
            output: out_opts(out),
        };
        ops::extract(&job, &NoProgress, &no_cancel()).unwrap();
    }
    let out = dir.path().join("out");
    let job = ApplyJob {
        target: model(&fixture("target")),
        vectors: vec![(model(&v1), 0.7), (model(&v2), -0.3)],
        plan: opts(),
        output: out_opts(&out),
    };
    ops::apply(&job, &NoProgress, &no_cancel()).unwrap();
    let (t, b, c) = (read_tensors(&fixture("target")), read_tensors(&fixture("base")), read_tensors(&fixture("chat")));
    let got = read_tensors(&out);
    for (name, tv) in &t {
        let (tv, bv, cv) = (tv.values(), b[name].values(), c[name].values());
        let want: Vec<f64> = (0..tv.len()).map(|i| tv[i] + 0.7 * (cv[i] - bv[i]) + -0.3 * (tv[i] - bv[i])).collect();
        assert_eq!(got[name].bytes, bf16_bytes(&want), "{name}");
    }
}

#[test]
fn feature_porter_matches_an_independent_float64_computation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fp");
    let mut o = opts();
    o.porter = Some(PorterParams { steepness: 12.0, shift: 6.0 });
    let s = merge_to(&out, "target", 0.8, o);
    assert_eq!(s.method, "feature-porter");
    let (t, b, c) = (read_tensors(&fixture("target")), read_tensors(&fixture("base")), read_tensors(&fixture("chat")));
    let got = read_tensors(&out);
    let plain = read_tensors(&fixture("expected/merged_ratio_1.0.safetensors"));
    let mut differs_from_plain = false;
    for (name, tv) in &t {
        let (tv, bv, cv) = (tv.values(), b[name].values(), c[name].values());
        let a: Vec<f64> = tv.iter().zip(&bv).map(|(x, y)| (x - y).abs()).collect();
        let (lo, hi) = a.iter().fold((f64::MAX, f64::MIN), |m, &x| (m.0.min(x), m.1.max(x)));
        let want: Vec<f64> = (0..tv.len())
            .map(|i| {
                let w =
                    if hi - lo < 1e-6 { 0.0 } else { 1.0 / (1.0 + (-(12.0 * (a[i] - lo) / (hi - lo) - 6.0)).exp()) };
                tv[i] + 0.8 * (cv[i] - bv[i]) * (1.0 - w)
            })
            .collect();
        assert_eq!(got[name].bytes, bf16_bytes(&want), "{name}");
        differs_from_plain |= got[name].bytes != plain[name].bytes;
    }
    assert!(differs_from_plain);
}

#[test]
fn exclude_and_include_select_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sel");
    let mut o = opts();
    o.selection = Selection::new(Some(r"layers\.[01]\."), Some(r"norm")).unwrap();
    let s = merge_to(&out, "target", 1.0, o);
    let (t, m, got) = (
        read_tensors(&fixture("target")),
        read_tensors(&fixture("expected/merged_ratio_1.0.safetensors")),
        read_tensors(&out),
    );
    for name in t.keys() {
        let selected = (name.contains("layers.0.") || name.contains("layers.1.")) && !name.contains("norm");
        let want = if selected { &m[name] } else { &t[name] };
        if name.contains("embed_tokens") || name.contains("lm_head") {
            continue; // special-token rows are checked in their own test
        }
        assert_eq!(&got[name], want, "{name} (selected: {selected})");
    }
    assert_eq!(s.merged, 14);
    assert!(s.not_selected.contains(&"model.norm.weight".to_string()));
}

#[test]
fn skipped_embeddings_take_untrained_special_rows_from_chat() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("noemb");
    let mut o = opts();
    o.selection = Selection::new(None, Some("embed_tokens|lm_head")).unwrap();
    let s = merge_to(&out, "target", 1.0, o);
    let special: Vec<usize> = (2002..2008).collect();
    assert_eq!(
        s.special_rows,
        vec![
            ("lm_head.weight".to_string(), special.clone()),
            ("model.embed_tokens.weight".to_string(), special.clone())
        ]
    );
    let (t, c, got) = (read_tensors(&fixture("target")), read_tensors(&fixture("chat")), read_tensors(&out));
    for name in ["model.embed_tokens.weight", "lm_head.weight"] {
        let row = 64 * 2;
        for r in 0..2008 {
            let src = if special.contains(&r) { &c[name] } else { &t[name] };
            assert_eq!(got[name].bytes[r * row..(r + 1) * row], src.bytes[r * row..(r + 1) * row], "{name} row {r}");
        }
    }
    // And it can be switched off.
    let out2 = dir.path().join("noemb2");
    let mut o = opts();
    o.selection = Selection::new(None, Some("embed_tokens|lm_head")).unwrap();
    o.special_rows = false;
    let s = merge_to(&out2, "target", 1.0, o);
    assert!(s.special_rows.is_empty());
    assert_eq!(read_tensors(&out2)["lm_head.weight"], t["lm_head.weight"]);
}

#[test]
fn merged_model_is_complete_with_template_and_stop_ids() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let s = merge_to(&out, "target", 1.0, opts());
    assert_eq!(s.chat_template_from.as_deref(), Some("chat model"));
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap()).unwrap();
    let chat_tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("chat/tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tc["chat_template"], chat_tc["chat_template"]);
    let gen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("generation_config.json")).unwrap()).unwrap();
    assert_eq!(gen["eos_token_id"], serde_json::json!([2001, 2004]));
    for f in ["config.json", "tokenizer.json", "special_tokens_map.json", "chatvec.json", "model.safetensors"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let recipe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("chatvec.json")).unwrap()).unwrap();
    assert_eq!(recipe["ratio"], 1.0);
    assert_eq!(recipe["inputs"]["chat"]["config_sha256"].as_str().unwrap().len(), 64);
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
}

#[test]
fn small_shard_size_writes_an_index_that_covers_every_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sharded");
    let job = MergeJob {
        base: model(&fixture("base")),
        chat: model(&fixture("chat")),
        target: model(&fixture("target")),
        ratio: 1.0,
        plan: opts(),
        output: chatvec_merge::OutputOptions { shard_size: 200_000, ..out_opts(&out) },
    };
    let s = ops::merge(&job, &NoProgress, &AtomicBool::new(false)).unwrap();
    assert!(s.shards >= 4, "{}", s.shards);
    let idx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(idx["weight_map"].as_object().unwrap().len(), 30);
    assert_same_tensors(&out, "merged_ratio_1.0.safetensors");
}

#[test]
fn dtype_flag_rounds_once_to_the_requested_type() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f32");
    let mut o = opts();
    o.dtype = Some(chatvec_format::DType::F32);
    merge_to(&out, "target", 0.5, o);
    let (t, b, c, got) = (
        read_tensors(&fixture("target")),
        read_tensors(&fixture("base")),
        read_tensors(&fixture("chat")),
        read_tensors(&out),
    );
    for (name, tv) in &t {
        let (tv, bv, cv) = (tv.values(), b[name].values(), c[name].values());
        let want: Vec<u8> =
            (0..tv.len()).flat_map(|i| ((tv[i] + 0.5 * (cv[i] - bv[i])) as f32).to_le_bytes()).collect();
        assert_eq!(got[name].bytes, want, "{name}");
    }
    assert_eq!(config_of(&out)["torch_dtype"], "float32");
}

#[test]
fn extract_without_embeddings_keeps_special_rows_so_apply_still_equals_merge() {
    let dir = tempfile::tempdir().unwrap();
    let sel = || {
        let mut o = opts();
        o.selection = Selection::new(None, Some("embed_tokens|lm_head")).unwrap();
        o
    };
    let vec_dir = dir.path().join("vec");
    let job = ExtractJob {
        base: model(&fixture("base")),
        chat: model(&fixture("chat")),
        plan: sel(),
        output: out_opts(&vec_dir),
    };
    let s = ops::extract(&job, &NoProgress, &no_cancel()).unwrap();
    assert_eq!(s.special_rows.len(), 2);
    let stored = read_tensors(&vec_dir);
    assert_eq!(stored["chatvec.special_rows.model.embed_tokens.weight"].shape, vec![6, 64]);
    let applied = dir.path().join("applied");
    let job = ApplyJob {
        target: model(&fixture("target")),
        vectors: vec![(model(&vec_dir), 1.0)],
        plan: sel(),
        output: out_opts(&applied),
    };
    let a = ops::apply(&job, &NoProgress, &no_cancel()).unwrap();
    assert_eq!(a.special_rows, s.special_rows);
    let merged = dir.path().join("merged");
    merge_to(&merged, "target", 1.0, sel());
    assert_eq!(read_tensors(&applied), read_tensors(&merged));
}
