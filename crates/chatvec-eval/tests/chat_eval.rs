//! The bundled prompt set, and a chat evaluation end to end on a tiny model.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use chatvec_eval::chat_eval::{bundled_prompts, parse_prompts, run_chat_eval, ChatOptions};
use chatvec_eval::metrics::korean_ratio;
use chatvec_gen::{ChatModel, LoadOptions};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/llama-tiny");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

#[test]
fn the_bundled_set_has_30_korean_prompts_of_four_kinds() {
    let p = bundled_prompts();
    assert!(p.len() >= 30);
    for cat in ["question", "instruction", "coding", "multi"] {
        assert!(p.iter().filter(|x| x.category == cat).count() >= 5, "{cat}");
    }
    assert!(p.iter().filter(|x| x.reference.is_some()).count() >= 10);
    // Korean throughout; a translation ask quotes English.
    let ratios: Vec<f64> = p.iter().map(|x| korean_ratio(&x.prompt).unwrap()).collect();
    assert!(ratios.iter().all(|&r| r > 0.25), "{ratios:?}");
    assert!(ratios.iter().sum::<f64>() / ratios.len() as f64 > 0.85);
    let mut ids: Vec<_> = p.iter().map(|x| &x.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), p.len());
}

#[test]
fn bad_prompt_lines_name_the_file_and_line() {
    let err = parse_prompts("{\"id\":\"a\",\"prompt\":\"x\"}\n{oops}\n", "p.jsonl").unwrap_err();
    assert!(format!("{err:#}").starts_with("p.jsonl:2:"), "{err:#}");
    assert!(parse_prompts("\n# only a comment\n", "e.jsonl").is_err());
}

#[test]
fn chat_eval_runs_and_is_reproducible() {
    let prompts: Vec<_> = bundled_prompts().into_iter().take(3).collect();
    assert!(prompts[0].reference.is_some());
    let opts = ChatOptions { max_new_tokens: 6, ..ChatOptions::default() };
    let mut m = ChatModel::load(&fixture("chat"), &LoadOptions::default(), None).unwrap();
    let a = run_chat_eval(&mut m, &prompts, &opts, &AtomicBool::new(false), &mut |_, _| {}).unwrap();
    let b = run_chat_eval(&mut m, &prompts, &opts, &AtomicBool::new(false), &mut |_, _| {}).unwrap();
    assert_eq!(a.results.len(), 3);
    for (x, y) in a.results.iter().zip(&b.results) {
        assert_eq!(x.answer, y.answer, "same seed, same answer");
        assert!(x.tokens <= 6);
        assert_eq!(x.stopped, x.tokens < 6 || x.stop_token.is_some());
    }
    let p = a.results[0].eot_probability.unwrap();
    assert!(p > 0.0 && p < 1.0);
    assert_eq!(a.summary.eot_token.as_deref(), Some("<|eot_id|>"));
    // The target has no template of its own: it needs one lent (as `report` does).
    let mut t = ChatModel::load(&fixture("target"), &LoadOptions::default(), None).unwrap();
    assert!(t.template.is_none());
    let err = run_chat_eval(&mut t, &prompts, &opts, &AtomicBool::new(false), &mut |_, _| {}).unwrap_err();
    // Errors are data: the prompt it failed on, and why.
    let chatvec_eval::EvalError::Prompt { id, source } = err else { panic!("{err}") };
    assert_eq!(id, prompts[0].id);
    assert!(matches!(*source, chatvec_eval::EvalError::Input(ref m) if m.contains("no chat template")), "{source}");
    let t = ChatModel::load(&fixture("target"), &LoadOptions::default(), Some(&fixture("chat"))).unwrap();
    assert!(t.template_from.unwrap().contains("chat"));
}
