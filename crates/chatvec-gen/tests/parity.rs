//! Parity with transformers (float32) on the bundled tiny Llama-3 merge.

mod common;

use std::ops::ControlFlow;

use candle_core::{DType, Device};
use chatvec_gen::{
    generate, ChatTemplate, GenError, GenerationConfig, Message, Model, ModelTokenizer, SamplingParams, StopReason,
    StopSet,
};
use common::{ids, oracle, oracle_model_dir};

fn oracle_messages(o: &serde_json::Value) -> Vec<Message> {
    serde_json::from_value(o["messages"].clone()).expect("messages")
}

fn load(dir: &std::path::Path) -> Model {
    Model::load(dir, &Device::Cpu, DType::F32).expect("model loads")
}

#[test]
fn template_renders_oracle_prompt_byte_for_byte() {
    let o = oracle();
    let dir = oracle_model_dir();
    let tok = ModelTokenizer::load(dir.path()).unwrap();
    let tmpl = ChatTemplate::for_model(dir.path(), tok.config(), None).unwrap();
    let text = tmpl.render(&oracle_messages(&o), true).unwrap();
    assert_eq!(text, o["prompt_text"].as_str().unwrap());
}

#[test]
fn template_renders_from_json_messages_too() {
    let o = oracle();
    let dir = oracle_model_dir();
    let tok = ModelTokenizer::load(dir.path()).unwrap();
    let tmpl = ChatTemplate::for_model(dir.path(), tok.config(), None).unwrap();
    let text = tmpl.render_json(&o["messages"], true).unwrap();
    assert_eq!(text, o["prompt_text"].as_str().unwrap());
}

#[test]
fn tokenisation_matches_oracle_input_ids() {
    let o = oracle();
    let dir = oracle_model_dir();
    let tok = ModelTokenizer::load(dir.path()).unwrap();
    let got = tok.encode(o["prompt_text"].as_str().unwrap(), false).unwrap();
    assert_eq!(got, ids(&o["input_ids"]));
}

#[test]
fn last_logits_match_oracle_within_1e_3() {
    let o = oracle();
    let dir = oracle_model_dir();
    let mut model = load(dir.path());
    let input = ids(&o["input_ids"]);
    let logits = model.forward_last(&input).unwrap().to_vec1::<f32>().unwrap();
    let expected: Vec<f64> = o["last_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(logits.len(), expected.len());
    let max_diff = logits.iter().zip(&expected).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(max_diff < 1e-3, "max |diff| = {max_diff}");
}

#[test]
fn top5_ids_match_at_every_position() {
    let o = oracle();
    let dir = oracle_model_dir();
    let mut model = load(dir.path());
    let input = ids(&o["input_ids"]);
    let all = model.forward_all(&input).unwrap().to_vec2::<f32>().unwrap();
    let expected = o["top5_ids_per_position"].as_array().unwrap();
    assert_eq!(all.len(), expected.len());
    for (pos, (row, exp)) in all.iter().zip(expected).enumerate() {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let top5: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
        assert_eq!(top5, ids(exp), "position {pos}");
    }
}

#[test]
fn greedy_ids_match_oracle() {
    let o = oracle();
    let dir = oracle_model_dir();
    let mut model = load(dir.path());
    let tok = ModelTokenizer::load(dir.path()).unwrap();
    let stops = StopSet::for_model(dir.path(), &tok, &[]).unwrap();
    let config =
        GenerationConfig { max_new_tokens: 24, sampling: SamplingParams { greedy: true, ..SamplingParams::default() } };
    let mut streamed = Vec::new();
    let out = generate::<GenError, _>(&mut model, &ids(&o["input_ids"]), &config, &stops, |id| {
        streamed.push(id);
        Ok(ControlFlow::Continue(()))
    })
    .unwrap();
    let expected = ids(&o["greedy_new_ids"]);
    assert_eq!(out.tokens, expected);
    assert_eq!(streamed, expected);
    assert_eq!(out.stop, StopReason::Length);
    assert_eq!(tok.decode(&out.tokens, true).unwrap(), o["greedy_text"].as_str().unwrap());
}

#[test]
fn stop_set_of_base_derived_config_still_has_eot() {
    // target's config.json says eos 2001 only; <|eot_id|> comes from the tokenizer.
    let o = oracle();
    let dir = oracle_model_dir();
    let tok = ModelTokenizer::load(dir.path()).unwrap();
    let stops = StopSet::for_model(dir.path(), &tok, &[]).unwrap();
    assert_eq!(stops.ids(), ids(&o["stop_ids"]));
    assert_eq!(stops.describe(2004), "<|eot_id|> (2004)");
}

#[test]
fn generation_stops_on_a_stop_id_without_streaming_it() {
    let o = oracle();
    let dir = oracle_model_dir();
    let mut model = load(dir.path());
    let tok = ModelTokenizer::load(dir.path()).unwrap();
    // The third greedy token (1816) is made a stop token.
    let extra = vec![tok.id_to_token(1816).unwrap()];
    let stops = StopSet::for_model(dir.path(), &tok, &extra).unwrap();
    let config =
        GenerationConfig { max_new_tokens: 24, sampling: SamplingParams { greedy: true, ..SamplingParams::default() } };
    let mut streamed = Vec::new();
    let out = generate::<GenError, _>(&mut model, &ids(&o["input_ids"]), &config, &stops, |id| {
        streamed.push(id);
        Ok(ControlFlow::Continue(()))
    })
    .unwrap();
    assert_eq!(out.tokens, vec![1370, 479, 1816]);
    assert_eq!(streamed, vec![1370, 479]);
    assert_eq!(out.stop, StopReason::StopToken { id: 1816 });
}

fn sample_run(model: &mut Model, prompt: &[u32], seed: u64, temperature: f64) -> Vec<u32> {
    model.reset();
    let config = GenerationConfig {
        max_new_tokens: 24,
        sampling: SamplingParams { temperature, top_p: 0.95, seed, ..SamplingParams::default() },
    };
    generate::<GenError, _>(model, prompt, &config, &StopSet::new(), |_| Ok(ControlFlow::Continue(()))).unwrap().tokens
}

#[test]
fn seed_makes_sampling_reproducible() {
    let o = oracle();
    let dir = oracle_model_dir();
    let mut model = load(dir.path());
    let prompt = ids(&o["input_ids"]);
    let a = sample_run(&mut model, &prompt, 42, 1.0);
    let b = sample_run(&mut model, &prompt, 42, 1.0);
    let c = sample_run(&mut model, &prompt, 43, 1.0);
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Near-zero temperature concentrates on the argmax: the greedy answer.
    let cold = sample_run(&mut model, &prompt, 42, 1e-4);
    assert_eq!(cold, ids(&o["greedy_new_ids"]));
}

#[test]
fn cached_prefix_reuse_gives_the_same_answer_as_a_fresh_model() {
    let o = oracle();
    let dir = oracle_model_dir();
    let mut model = load(dir.path());
    let prompt = ids(&o["input_ids"]);
    let config =
        GenerationConfig { max_new_tokens: 6, sampling: SamplingParams { greedy: true, ..SamplingParams::default() } };
    let cont = |_| Ok::<_, GenError>(ControlFlow::Continue(()));
    let first = generate(&mut model, &prompt, &config, &StopSet::new(), cont).unwrap();
    // A second turn: history + answer + more tokens, as a chat re-sends it.
    let mut second_prompt = prompt.clone();
    second_prompt.extend(&first.tokens);
    second_prompt.extend([2004, 2002, 84, 1040, 2003, 198, 198, 1900, 2004]);
    let reused = generate(&mut model, &second_prompt, &config, &StopSet::new(), cont).unwrap();
    assert_eq!(reused.reused_prompt_tokens, prompt.len() + first.tokens.len() - 1);
    let mut fresh_model = load(dir.path());
    let fresh = generate(&mut fresh_model, &second_prompt, &config, &StopSet::new(), cont).unwrap();
    assert_eq!(fresh.reused_prompt_tokens, 0);
    assert_eq!(reused.tokens, fresh.tokens);
}

#[test]
fn forward_all_gives_the_oracle_perplexity() {
    let text = std::fs::read_to_string(common::fixtures().join("expected/perplexity_oracle.json")).unwrap();
    let o: serde_json::Value = serde_json::from_str(&text).unwrap();
    let input = ids(&o["input_ids"]);
    let dir = oracle_model_dir();
    let mut model = load(dir.path());
    let logits = model.forward_all(&input).unwrap().to_vec2::<f32>().unwrap();
    let mut nll = 0.0f64;
    for (row, &next) in logits.iter().zip(&input[1..]) {
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = max + row.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
        nll += lse - row[next as usize] as f64;
    }
    let mean = nll / (input.len() - 1) as f64;
    let expected = o["merged_mean_nll"].as_f64().unwrap();
    assert!((mean - expected).abs() < 1e-4, "{mean} vs {expected}");
}

/// The target fixture as transformers saved it with `safe_serialization=False` (two
/// `pytorch_model-*.bin` shards and their index, the pickle crate's test data): it loads through
/// the same reader as `merge` and gives the same logits as its safetensors copy.
#[test]
fn pytorch_bin_checkpoints_give_the_same_logits_as_safetensors() {
    let bin = common::fixtures().join("../../crates/chatvec-pickle/tests/data/llama-sharded");
    let prompt = [2000u32, 17, 301, 999, 5];
    let mut from_bin = load(&bin);
    let mut from_safetensors = load(&common::fixtures().join("target"));
    let a = from_bin.forward_all(&prompt).unwrap().to_vec2::<f32>().unwrap();
    let b = from_safetensors.forward_all(&prompt).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(a, b);
}
