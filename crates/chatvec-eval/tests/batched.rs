//! Batched evaluation gives what one sequence at a time gives: chat answers equal to
//! `generate` run on each prompt alone, end-of-turn probabilities and perplexity equal to
//! single-sequence forwards, whatever the batch size.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use chatvec_eval::chat_eval::{bundled_prompts, run_chat_eval, ChatOptions, Prompt};
use chatvec_eval::metrics::strip_markers;
use chatvec_eval::perplexity::{perplexity_in_batches, token_nll, windows, Window};
use chatvec_gen::{generate, ChatModel, GenError, GenerationConfig, LoadOptions, Message, SamplingParams, StopReason};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/llama-tiny");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// What the evaluation answered before it was batched: `generate` on the prompt alone, from an
/// empty cache; the answer's text without a final stop id, and the token count.
fn alone(m: &mut ChatModel, p: &Prompt, opts: &ChatOptions, sampling: SamplingParams) -> (String, usize, bool) {
    let mut msgs = Vec::new();
    if let Some(s) = &p.system {
        msgs.push(Message::new("system", s.clone()));
    }
    msgs.push(Message::new("user", p.prompt.clone()));
    let text = m.template.as_ref().unwrap().render(&msgs, true).unwrap();
    let ids = m.tokenizer.encode(&text, false).unwrap();
    m.model.reset();
    let config = GenerationConfig { max_new_tokens: opts.max_new_tokens, sampling };
    let out =
        generate::<GenError, _>(&mut m.model, &ids, &config, &m.stops, |_| Ok(ControlFlow::Continue(()))).unwrap();
    let stopped = matches!(out.stop, StopReason::StopToken { .. });
    let body = if stopped { &out.tokens[..out.tokens.len() - 1] } else { &out.tokens[..] };
    let raw = m.tokenizer.decode(body, false).unwrap();
    (strip_markers(&raw).trim().to_string(), out.tokens.len(), stopped)
}

#[test]
fn batched_chat_eval_answers_as_each_prompt_alone() {
    let prompts: Vec<Prompt> = bundled_prompts().into_iter().take(7).collect();
    let mut m = ChatModel::load(&fixture("chat"), &LoadOptions::default(), None).unwrap();
    for temperature in [0.0, 0.9] {
        let base = ChatOptions { max_new_tokens: 12, temperature, ..ChatOptions::default() };
        let sampling = SamplingParams {
            temperature,
            top_p: base.top_p,
            top_k: Some(base.top_k),
            greedy: temperature == 0.0,
            seed: base.seed,
            ..SamplingParams::default()
        };
        let want: Vec<_> = prompts.iter().map(|p| alone(&mut m, p, &base, sampling.clone())).collect();
        for batch_size in [1, 3, 16] {
            let opts = ChatOptions { batch_size, ..base.clone() };
            let mut order = Vec::new();
            let e = run_chat_eval(&mut m, &prompts, &opts, &AtomicBool::new(false), &mut |i, _| order.push(i)).unwrap();
            order.sort();
            assert_eq!(order, (0..prompts.len()).collect::<Vec<_>>(), "each result reported once");
            for (i, (r, w)) in e.results.iter().zip(&want).enumerate() {
                let got = (r.answer.clone(), r.tokens, r.stopped);
                assert_eq!(&got, w, "prompt {i}, temperature {temperature}, batch {batch_size}");
            }
        }
    }
}

#[test]
fn batched_eot_probabilities_equal_a_single_forward() {
    let prompts: Vec<Prompt> = bundled_prompts().into_iter().filter(|p| p.reference.is_some()).take(5).collect();
    let mut m = ChatModel::load(&fixture("chat"), &LoadOptions::default(), None).unwrap();
    let opts = ChatOptions { max_new_tokens: 1, batch_size: 5, ..ChatOptions::default() };
    let e = run_chat_eval(&mut m, &prompts, &opts, &AtomicBool::new(false), &mut |_, _| {}).unwrap();
    for (p, r) in prompts.iter().zip(&e.results) {
        // The conversation with the reference answer, cut where the end-of-turn token starts.
        let mut msgs: Vec<Message> = p.system.iter().map(|s| Message::new("system", s.clone())).collect();
        msgs.push(Message::new("user", p.prompt.clone()));
        msgs.push(Message::new("assistant", p.reference.clone().unwrap().trim().to_string()));
        let text = m.template.as_ref().unwrap().render(&msgs, false).unwrap();
        let cut = text.rfind("<|eot_id|>").unwrap();
        let prefix = m.tokenizer.encode(&text[..cut], false).unwrap();
        m.model.reset();
        let logits: Vec<f32> = m.model.forward_last(&prefix).unwrap().to_vec1().unwrap();
        let eot = m.tokenizer.token_to_id("<|eot_id|>").unwrap();
        let want = (-token_nll(&logits, eot)).exp();
        let got = r.eot_probability.unwrap();
        assert!((got - want).abs() < 1e-5 * want.max(1e-3), "{}: {got} vs {want}", p.id);
    }
}

#[test]
fn perplexity_in_batches_equals_one_window_at_a_time() {
    let m = ChatModel::load(&fixture("target"), &LoadOptions::default(), None).unwrap();
    let text = chatvec_eval::perplexity::BUNDLED_TEXT;
    let ids: Vec<u32> = m.encode_text(text).unwrap().into_iter().take(240).collect();
    let w = Window::new(64, 24).unwrap();
    // One window per forward, from an empty cache each: the reference.
    let (mut total, mut scored) = (0.0, 0);
    let mut model = ChatModel::load(&fixture("target"), &LoadOptions::default(), None).unwrap().model;
    for (begin, end, first) in windows(ids.len(), w) {
        model.reset();
        let rows = model.forward_all(&ids[begin..end]).unwrap().to_vec2::<f32>().unwrap();
        for (row, &t) in rows[first - 1 - begin..].iter().zip(&ids[first..end]) {
            total += token_nll(row, t);
            scored += 1;
        }
    }
    let want = total / scored as f64;
    for per_pass in [1, 2, 5, 100] {
        let r = perplexity_in_batches(&m.model, &ids, w, per_pass, &AtomicBool::new(false)).unwrap();
        assert_eq!(r.scored, scored);
        assert!((r.mean_nll - want).abs() < 1e-6, "{per_pass} windows a pass: {} vs {want}", r.mean_nll);
    }
}
