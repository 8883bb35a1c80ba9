//! `chatvec export gguf` on models transformers loads that an earlier exporter refused (issue 24,
//! item 5):
//! - a config.json with `model_type` and no `architectures` exports to the same bytes as the same
//!   model with `architectures`;
//! - a Gemma (or Mistral) directory with `tokenizer.json` and no `tokenizer.model` exports as the
//!   converter's fallback (`_set_vocab_llama_hf`) writes it, key for key and tensor for tensor
//!   (gguf-py reads both), except the token scores, which follow tokenizer.json's merges so that
//!   llama.cpp gives tokenizer.json's ids (checked with node-llama-cpp), as the converter's equal
//!   scores do not. The merged pieces score as tokenizer.model has them, and llama.cpp tokenizes
//!   the export as it does the export made with tokenizer.model.
//!
//! The fallback check needs Python with gguf-py, torch and transformers, and node-llama-cpp
//! (whose llama.cpp source holds the converter); without them `cargo test` lists it as ignored
//! (chatvec-testkit); under `CI` it runs and fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use chatvec_gguf::read::{GgufIndex, MetaValue};
use common::{chatvec, copy_dir_files, root, stderr};

#[test]
fn a_config_without_architectures_exports_by_its_model_type() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ["qwen2", "mistral"] {
        // The same directory name for both: general.name comes from it.
        let fixture = root().join("fixtures/arch").join(arch);
        let (named, unnamed) = (tmp.path().join("named").join(arch), tmp.path().join("unnamed").join(arch));
        copy_dir_files(&fixture, &named);
        copy_dir_files(&fixture, &unnamed);
        let cfg_path = unnamed.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        assert!(cfg.as_object_mut().unwrap().remove("architectures").is_some());
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let mut outputs = vec![];
        for (name, dir) in [("named", &named), ("unnamed", &unnamed)] {
            let out = tmp.path().join(format!("{arch}-{name}.gguf"));
            let o = chatvec(&["export", "gguf", "--model", dir.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"]);
            assert!(o.status.success(), "{arch} {name}: {}", stderr(&o));
            outputs.push(std::fs::read(&out).unwrap());
        }
        assert!(outputs[0] == outputs[1], "{arch}: the export without `architectures` differs");
    }
}

const TEXTS: [&str; 6] = [
    "헌법 제1조는 대한민국은 민주공화국이다.",
    "Hello world, it's a test: don't stop!  Twice  spaced\n\nnew lines 12345",
    "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}",
    "emoji 🤖🎉 and mixed 한국어 text 😀",
    " leading space and trailing ",
    "The theory of the other these three; price: $1,234.56",
];

fn run(cmd: &mut Command, what: &str) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(o.status.success(), "{what}: {}\n{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// llama.cpp's ids for `texts` on `gguf` (special tokens parsed, no BOS).
fn llama_cpp_ids(gguf: &Path, texts: &[String], tmp: &Path) -> Vec<Vec<u32>> {
    let file = tmp.join("texts.json");
    std::fs::write(&file, serde_json::to_string(texts).unwrap()).unwrap();
    let out = run(
        Command::new("node")
            .arg(root().join("scripts/gguf/llama_cpp_tokenize.mjs"))
            .arg(gguf)
            .arg(&file)
            .env("CHATVEC_NODE_LLAMA_DIR", chatvec_testkit::node_llama_dir()),
        "node llama_cpp_tokenize.mjs",
    );
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    serde_json::from_value(v["ids"].clone()).unwrap()
}

fn scores(gguf: &Path) -> Vec<f64> {
    match GgufIndex::open(gguf).unwrap().get("tokenizer.ggml.scores") {
        Some(MetaValue::Numbers(n)) => n.clone(),
        other => panic!("{}: scores are {other:?}", gguf.display()),
    }
}

fn export_f16(model: &Path, out: &Path) {
    common::export_gguf(model, out, "f16");
}

#[test]
#[cfg_attr(
    not(all(have_node_llama, have_py_gguf, have_py_numpy, have_py_torch, have_py_transformers)),
    ignore = "needs node-llama-cpp (CHATVEC_NODE_LLAMA_DIR) and Python with gguf-py, numpy, torch, transformers"
)]
fn a_vocabulary_from_tokenizer_json_is_the_converters_fallback_and_tokenizes_as_tokenizer_json() {
    let tmp = tempfile::tempdir().unwrap();
    let llama = tmp.path().join("llama.cpp");
    run(Command::new("git").args(["clone", "-q"]).arg(chatvec_testkit::llama_cpp_bundle()).arg(&llama), "git clone");
    let python = chatvec_testkit::python();
    let mut report = vec![];
    for (arch, special) in
        [("gemma", "<start_of_turn>user\n안녕하세요!<end_of_turn>\n"), ("mistral", "[INST] 안녕? [/INST]</s>")]
    {
        let fixture = root().join("fixtures/arch").join(arch);
        // The same directory name as the fixture's: general.name comes from it.
        let model: PathBuf = tmp.path().join("no-spm").join(arch);
        copy_dir_files(&fixture, &model);
        std::fs::remove_file(model.join("tokenizer.model")).unwrap();
        let (ours, theirs, with_spm) = (
            tmp.path().join(format!("{arch}.gguf")),
            tmp.path().join(format!("{arch}-converter.gguf")),
            tmp.path().join(format!("{arch}-spm.gguf")),
        );
        export_f16(&model, &ours);
        export_f16(&fixture, &with_spm);
        run(
            Command::new(&python)
                .arg(root().join("scripts/gguf/convert_oracle.py"))
                .arg(&llama)
                .arg(&model)
                .arg("--outfile")
                .arg(&theirs)
                .args(["--outtype", "f16"]),
            "convert_oracle.py",
        );
        let cmp = run(
            Command::new(&python).arg(root().join("scripts/gguf/compare_gguf.py")).arg(&ours).arg(&theirs),
            "compare_gguf.py",
        );
        let cmp: serde_json::Value = serde_json::from_str(cmp.lines().last().unwrap()).unwrap();
        assert_eq!(cmp["keys_a"], cmp["keys_b"], "{arch}: keys differ from the converter's");
        assert_eq!(cmp["differ"], serde_json::json!(["tokenizer.ggml.scores"]), "{arch}: values differ");
        assert_eq!(cmp["tensors_a"], cmp["tensors_b"], "{arch}: tensors differ");
        assert_eq!(cmp["tensors_differ"], serde_json::json!([]), "{arch}: tensor contents differ");
        // Where tokenizer.json came from tokenizer.model, the merged pieces score as tokenizer.model has them.
        let (s_json, s_spm) = (scores(&ours), scores(&with_spm));
        let merged: Vec<usize> = (0..s_json.len()).filter(|&i| s_json[i] > -1000.0).collect();
        assert!(merged.len() > 50, "{arch}: only {} merged pieces", merged.len());
        for &i in &merged {
            assert_eq!(s_json[i], s_spm[i], "{arch}: score of token {i}");
        }
        let reference = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
        let mut texts: Vec<String> = TEXTS.iter().map(|t| t.to_string()).collect();
        texts.push(special.to_string());
        let got = llama_cpp_ids(&ours, &texts, tmp.path());
        // Plain text as from the tokenizer.model export (whose token types differ: there the Gemma
        // turn markers are NORMAL pieces, which llama.cpp does not parse as special tokens).
        let plain = &texts[..TEXTS.len()];
        assert_eq!(
            got[..TEXTS.len()],
            llama_cpp_ids(&with_spm, plain, tmp.path()),
            "{arch}: llama.cpp's ids differ from the tokenizer.model export's"
        );
        let want: Vec<Vec<u32>> =
            texts.iter().map(|t| reference.encode(t.as_str(), false).unwrap().get_ids().to_vec()).collect();
        for ((text, got), want) in texts.iter().zip(&got).zip(&want) {
            // (llama.cpp keeps a leading space that SentencePiece and transformers drop when they
            // prefix one of their own, for Mistral's tokenizer.model as well: a difference of
            // llama.cpp's, not the file's.)
            if !(text.starts_with(' ') && arch == "mistral") {
                assert_eq!(got, want, "{arch}: llama.cpp's ids differ from tokenizer.json's on {text:?}");
            }
        }
        let same = |ids: &[Vec<u32>]| ids.iter().zip(&want).filter(|(a, b)| a == b).count();
        let converter_ids = llama_cpp_ids(&theirs, &texts, tmp.path());
        report.push(format!(
            "{arch}: llama.cpp gives tokenizer.json's ids on {} of {n} texts from chatvec's export, {} from the converter's",
            same(&got),
            same(&converter_ids),
            n = texts.len()
        ));
    }
    eprintln!("{}", report.join("\n"));
}
