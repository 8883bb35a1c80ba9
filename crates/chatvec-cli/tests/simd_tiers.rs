//! `CHATVEC_SIMD` as users set it: every tier this CPU has generates the same tokens with bf16
//! and with q8_0 weights (the f32 path generates transformers' tokens), and a tier that is not
//! one is refused.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use chatvec_format::SimdTier;

mod common;

use common::{fails_with_one_line, fixture, oracle_model};

fn generate(tier: &str, model: &Path, messages: &Path, quantize: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatvec"))
        .env("CHATVEC_SIMD", tier)
        .args(["generate", "--model", model.to_str().unwrap(), "--messages", messages.to_str().unwrap()])
        .args(["--greedy", "--quantize", quantize, "--max-new-tokens", "24", "--json"])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn token_ids(o: &Output) -> Vec<u64> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    rec["runs"][0]["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

#[test]
fn every_tier_generates_the_oracles_tokens_and_q8_0_agrees_across_tiers() {
    let oracle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected/generation_oracle.json")).unwrap()).unwrap();
    let want: Vec<u64> = oracle["greedy_new_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let model = oracle_model(tmp.path());
    let messages = tmp.path().join("messages.json");
    std::fs::write(&messages, oracle["messages"].to_string()).unwrap();
    // The dense f32 path is the oracle's; the compact kernels of every tier must agree with
    // each other (they differ only in the order of float sums).
    assert_eq!(token_ids(&generate("baseline", &model, &messages, "none")), want, "f32");
    for format in ["bf16", "q8_0"] {
        let runs: Vec<_> = SimdTier::available()
            .into_iter()
            .map(|tier| (tier, token_ids(&generate(tier.name(), &model, &messages, format))))
            .collect();
        for (tier, ids) in &runs {
            assert_eq!(ids, &runs[0].1, "{format} at {tier} against {}", runs[0].0);
        }
    }
    for missing in [SimdTier::Avx2, SimdTier::Avx512].into_iter().filter(|t| !t.supported()) {
        eprintln!("SKIPPED: tier {missing} (this CPU lacks it)");
        let out = generate(missing.name(), &model, &messages, "q8_0");
        fails_with_one_line(&out, &["CHATVEC_SIMD=", "this CPU lacks it"]);
    }
}

#[test]
fn a_name_that_is_not_a_tier_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    // A messages file that exists: the flags are checked (and pass) before the tier.
    std::fs::write(tmp.path().join("m.json"), "[]").unwrap();
    let out = generate("sse9\u{1b}[31m", Path::new("/nonexistent/model"), &tmp.path().join("m.json"), "q8_0");
    let line = assert_error_snapshot!(&out);
    assert!(!line.contains('\u{1b}'), "the value is escaped: {line}");
}
