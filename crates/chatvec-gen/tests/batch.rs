//! Batched evaluation against the single-sequence path it must reproduce: `generate` run on
//! each sequence alone (greedy tokens identical, sampled tokens identical for the same seed),
//! `forward_all` (prompt log-probabilities, logits of a batched forward).
//!
//! Tolerance: the batched forward multiplies all sequences' rows in one matrix product, whose
//! summation order may differ from the single-row product's; logits agree to 1e-4 absolute
//! (logits of these models are O(1), so this is a few ulps of f32 accumulated over the layers).

mod common;

use std::ops::ControlFlow;
use std::path::PathBuf;

use candle_core::{DType, Device};
use chatvec_gen::batch::{log_softmax, Batch, SeqEvent, SeqId, SeqRequest};
use chatvec_gen::models::{KvCache, Logits, SeqInput};
use chatvec_gen::{
    generate, GenError, GenerationConfig, GenerationOutput, Model, ModelOptions, SamplingParams, StopReason, StopSet,
    WeightFormat,
};

/// Logits of a batched forward and of the same sequence alone differ by at most this.
const LOGIT_TOLERANCE: f32 = 1e-4;

/// A model of fixtures/arch with the config keys of `overrides` set.
fn arch_model(name: &str, overrides: serde_json::Value) -> Model {
    let dir = common::with_config(&common::arch_fixture(name), overrides.as_object().unwrap());
    Model::load(dir.path(), &Device::Cpu, DType::F32).unwrap()
}

/// The fixture models: Llama (llama3 rope, GQA), Mistral (its sliding window set to 5, shorter
/// than the sequences), Qwen2 (biases, tied embeddings), Gemma (scaled embeddings).
fn models() -> Vec<(&'static str, Model)> {
    let llama = Model::load(&common::fixtures().join("chat"), &Device::Cpu, DType::F32).unwrap();
    vec![
        ("llama", llama),
        ("mistral", arch_model("mistral", serde_json::json!({"sliding_window": 5}))),
        ("qwen2", arch_model("qwen2", serde_json::json!({}))),
        ("gemma", arch_model("gemma", serde_json::json!({}))),
    ]
}

/// Deterministic prompt ids in the model's vocabulary.
fn prompt(model: &Model, len: usize, salt: u32) -> Vec<u32> {
    let vocab = model.config().vocab_size as u32;
    (0..len as u32).map(|i| (i * 7919 + salt * 104_729 + 13) % vocab).collect()
}

fn greedy() -> SamplingParams {
    SamplingParams { temperature: 0.0, greedy: true, ..SamplingParams::default() }
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams { temperature: 1.0, top_k: Some(20), top_p: 0.95, seed, ..SamplingParams::default() }
}

fn alone(model: &mut Model, req: &SeqRequest) -> GenerationOutput {
    model.reset();
    let config = GenerationConfig {
        max_new_tokens: req.max_new_tokens,
        sampling: SamplingParams { seed: req.seed, ..req.sampling.clone() },
    };
    generate::<GenError, _>(model, &req.prompt, &config, &req.stops, |_| Ok(ControlFlow::Continue(()))).unwrap()
}

fn stops(ids: &[u32]) -> StopSet {
    let mut s = StopSet::new();
    ids.iter().for_each(|&id| s.insert(id, ""));
    s
}

/// Requests of different lengths that end at different steps: by length limits from 0 to 20,
/// and one by a stop id its own greedy answer produces on the way.
fn requests(model: &mut Model, sampling: impl Fn(u64) -> SamplingParams) -> Vec<SeqRequest> {
    let shapes = [(1, 9), (7, 20), (23, 4), (3, 0), (12, 14), (30, 11), (5, 17)];
    let mut reqs: Vec<SeqRequest> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(len, new))| SeqRequest::new(prompt(model, len, i as u32), new, sampling(i as u64), StopSet::new()))
        .collect();
    // Sequence 1 stops at the first id its unstopped answer makes after 5 tokens.
    let free = alone(model, &reqs[1]);
    reqs[1].stops = stops(&[free.tokens[5]]);
    reqs
}

#[test]
fn batched_greedy_equals_generate_alone() {
    for (name, mut model) in models() {
        let reqs = requests(&mut model, |_| greedy());
        let want: Vec<GenerationOutput> = reqs.iter().map(|r| alone(&mut model, r)).collect();
        assert!(want[1].stop != StopReason::Length, "{name}: the stop id fires");
        // Three places, so four sequences wait and join as others finish; prompts read 8
        // tokens a step, so prefill chunks share steps with decoding sequences.
        for (max_seqs, chunk) in [(3, 8), (16, 512), (1, 5)] {
            let mut batch = Batch::new(&model, max_seqs);
            batch.set_prefill_chunk(chunk);
            let got = batch.run(reqs.clone(), &|| false, &mut |_, _| {}).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.output.tokens, w.tokens, "{name} seq {i} ({max_seqs} places, chunk {chunk})");
                assert_eq!(g.output.stop, w.stop, "{name} seq {i}");
                assert_eq!(g.output.prompt_tokens, w.prompt_tokens);
            }
            assert!(batch.is_idle());
        }
    }
}

/// A sequence started from a cache that read a longer text with the same start (the prompt and
/// a reference answer, cut back to the prompt) answers as it does alone from an empty cache.
#[test]
fn a_sequence_started_from_a_shared_prefix_cache_answers_as_alone() {
    for (name, mut model) in models() {
        let reqs = requests(&mut model, |_| greedy());
        let want: Vec<GenerationOutput> = reqs.iter().map(|r| alone(&mut model, r)).collect();
        let mut caches: Vec<KvCache> = reqs.iter().map(|_| KvCache::new()).collect();
        let longer: Vec<Vec<u32>> = reqs
            .iter()
            .enumerate()
            .map(|(i, r)| [r.prompt.clone(), prompt(&model, 6, 50 + i as u32)].concat())
            .collect();
        let mut inputs: Vec<SeqInput> = longer
            .iter()
            .zip(caches.iter_mut())
            .map(|(tokens, cache)| SeqInput { tokens, cache, logits: Logits::None })
            .collect();
        model.forward_batch(&mut inputs).unwrap();
        let cached: Vec<(SeqRequest, KvCache)> = reqs
            .iter()
            .zip(caches)
            .map(|(r, mut cache)| {
                cache.truncate(r.prompt.len() - 1);
                (r.clone(), cache)
            })
            .collect();
        let got = Batch::new(&model, 3).run_cached(cached, &|| false, &mut |_, _| {}).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!((&g.output.tokens, g.output.stop), (&w.tokens, w.stop), "{name} seq {i}");
        }
        // A cache must leave the prompt's last token to read, and cannot stand in for the
        // prompt log-probabilities.
        let mut full = KvCache::new();
        let tokens = &reqs[1].prompt;
        model.forward_batch(&mut [SeqInput { tokens, cache: &mut full, logits: Logits::None }]).unwrap();
        let err = Batch::new(&model, 1).insert_cached(reqs[1].clone(), full).unwrap_err();
        assert!(err.to_string().contains(&format!("{} positions", tokens.len())), "{err}");
    }
}

#[test]
fn a_sequence_inserted_midway_and_a_cancelled_one_leave_the_others_unchanged() {
    for (name, mut model) in models() {
        let reqs = requests(&mut model, |_| greedy());
        let want: Vec<Vec<u32>> = reqs.iter().map(|r| alone(&mut model, r).tokens).collect();
        let mut batch = Batch::new(&model, 8);
        batch.set_prefill_chunk(16);
        let mut ids: Vec<SeqId> = reqs[..3].iter().map(|r| batch.insert(r.clone()).unwrap()).collect();
        let doomed = batch.insert(SeqRequest::new(prompt(&model, 9, 99), 30, greedy(), StopSet::new())).unwrap();
        let mut got: Vec<Vec<u32>> = vec![Vec::new(); reqs.len()];
        let mut step = 0;
        while !batch.is_idle() {
            step += 1;
            if step == 3 {
                batch.cancel(doomed);
            }
            if step == 4 {
                // Joins while the others are decoding.
                ids.extend(reqs[3..].iter().map(|r| batch.insert(r.clone()).unwrap()));
            }
            for event in batch.step().unwrap() {
                assert!(step < 3 || event.id() != doomed, "{name}: no event after cancel");
                let i = ids.iter().position(|&id| id == event.id());
                match (event, i) {
                    (SeqEvent::Token { token, .. }, Some(i)) => got[i].push(token),
                    (SeqEvent::Finished { reason: StopReason::StopToken { id }, .. }, Some(i)) => got[i].push(id),
                    _ => {}
                }
            }
        }
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn sampled_tokens_follow_the_seed_whatever_the_batch_holds() {
    for (name, mut model) in models() {
        let reqs = requests(&mut model, sampled);
        let want: Vec<Vec<u32>> = reqs.iter().map(|r| alone(&mut model, r).tokens).collect();
        // Alone in a batch, with the others, and with other company in another order.
        let mut solo = Vec::new();
        for r in &reqs {
            let out = Batch::new(&model, 1).run(vec![r.clone()], &|| false, &mut |_, _| {}).unwrap();
            solo.push(out[0].output.tokens.clone());
        }
        assert_eq!(solo, want, "{name}: alone");
        let together = Batch::new(&model, 4).run(reqs.clone(), &|| false, &mut |_, _| {}).unwrap();
        let together: Vec<Vec<u32>> = together.into_iter().map(|o| o.output.tokens).collect();
        assert_eq!(together, want, "{name}: together");
        let mut reversed: Vec<SeqRequest> = reqs.iter().rev().cloned().collect();
        reversed.push(SeqRequest::new(prompt(&model, 15, 7), 25, sampled(1), StopSet::new()));
        let mut batch = Batch::new(&model, 3);
        batch.set_prefill_chunk(6);
        let other = batch.run(reversed, &|| false, &mut |_, _| {}).unwrap();
        let other: Vec<Vec<u32>> = other.into_iter().rev().skip(1).map(|o| o.output.tokens).collect();
        assert_eq!(other, want, "{name}: other company");
        // Different seeds give different answers (the seed is the sequence's own).
        assert_ne!(want[2], alone(&mut model, &SeqRequest { seed: 77, ..reqs[2].clone() }).tokens);
    }
}

#[test]
fn prompt_logprobs_are_the_log_softmax_of_forward_all() {
    for (name, mut model) in models() {
        let ids = prompt(&model, 29, 3);
        model.reset();
        let all = model.forward_all(&ids).unwrap().to_vec2::<f32>().unwrap();
        let mut req = SeqRequest::new(ids.clone(), 2, greedy(), StopSet::new());
        req.prompt_logprobs = true;
        req.top_logprobs = 5;
        let other = SeqRequest::new(prompt(&model, 11, 4), 6, greedy(), StopSet::new());
        let mut batch = Batch::new(&model, 4);
        batch.set_prefill_chunk(7);
        let out = batch.run(vec![other, req], &|| false, &mut |_, _| {}).unwrap();
        let lp = &out[1].prompt_logprobs;
        assert_eq!(lp.len(), ids.len());
        assert!(lp[0].logprob.is_nan() && lp[0].token == ids[0] && lp[0].top.is_empty());
        for (pos, entry) in lp.iter().enumerate().skip(1) {
            let want = log_softmax(&all[pos - 1]);
            assert_eq!(entry.token, ids[pos]);
            let d = (entry.logprob - want[ids[pos] as usize]).abs();
            assert!(d < LOGIT_TOLERANCE, "{name} position {pos}: |diff| {d}");
            let mut order: Vec<usize> = (0..want.len()).collect();
            order.sort_by(|&a, &b| want[b].total_cmp(&want[a]).then(a.cmp(&b)));
            let top: Vec<u32> = entry.top.iter().map(|t| t.0).collect();
            let want_top: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
            assert_eq!(top, want_top, "{name} position {pos}");
            assert!(entry.top.windows(2).all(|w| w[0].1 >= w[1].1));
        }
        assert!(out[1].prompt_logprobs.iter().skip(1).all(|t| t.logprob <= 0.0));
    }
}

#[test]
fn batched_forward_logits_equal_each_sequence_alone() {
    for (name, mut model) in models() {
        // Three sequences with different cached prefixes, fed new tokens together.
        let seqs: Vec<(Vec<u32>, Vec<u32>)> = [(5, 4), (17, 1), (2, 9)]
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| {
                let ids = prompt(&model, a + b, i as u32 + 10);
                (ids[..a].to_vec(), ids[a..].to_vec())
            })
            .collect();
        let mut caches: Vec<KvCache> = Vec::new();
        for (prefix, _) in &seqs {
            let mut cache = KvCache::new();
            let mut input = [SeqInput { tokens: prefix, cache: &mut cache, logits: Logits::None }];
            assert!(model.forward_batch(&mut input).unwrap()[0].is_none());
            caches.push(cache);
        }
        let mut inputs: Vec<SeqInput> = seqs
            .iter()
            .zip(caches.iter_mut())
            .map(|((_, new), cache)| SeqInput { tokens: new, cache, logits: Logits::All })
            .collect();
        let got = model.forward_batch(&mut inputs).unwrap();
        for (i, ((prefix, new), logits)) in seqs.iter().zip(got).enumerate() {
            model.reset();
            let full: Vec<u32> = prefix.iter().chain(new).copied().collect();
            let want = model.forward_all(&full).unwrap().to_vec2::<f32>().unwrap();
            let got = logits.unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(got.len(), new.len());
            for (j, row) in got.iter().enumerate() {
                let exp = &want[prefix.len() + j];
                let d = row.iter().zip(exp).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(d < LOGIT_TOLERANCE, "{name} seq {i} row {j}: max |diff| {d}");
            }
        }
        assert_eq!(caches.iter().map(KvCache::len).collect::<Vec<_>>(), vec![9, 18, 11]);
    }
}

/// With q8_0, bf16 and f16 weights (chatvec's own GEMM kernels), one decode step of six
/// sequences in one batch (more rows than a kernel tile takes) gives every sequence the logits
/// it gets decoded alone, bit for bit, and batched greedy generation equals `generate` alone.
#[test]
fn compact_weights_decode_the_same_in_a_batch_as_alone() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/lab/chat"));
    for format in ["q8_0", "bf16", "f16"] {
        let opts = ModelOptions {
            weights: WeightFormat::parse(format).unwrap(),
            ..ModelOptions::dense(&Device::Cpu, DType::F32)
        };
        let mut model = Model::load_with(&dir, &opts).unwrap();
        let seqs: Vec<(Vec<u32>, u32)> =
            (0..6).map(|i| (prompt(&model, 3 + 2 * i, i as u32), prompt(&model, 1, 50 + i as u32)[0])).collect();
        let prefilled = |model: &Model, ids: &[u32]| {
            let mut cache = KvCache::new();
            model.forward_batch(&mut [SeqInput { tokens: ids, cache: &mut cache, logits: Logits::None }]).unwrap();
            cache
        };
        let mut caches: Vec<KvCache> = seqs.iter().map(|(p, _)| prefilled(&model, p)).collect();
        let mut inputs: Vec<SeqInput> = seqs
            .iter()
            .zip(caches.iter_mut())
            .map(|((_, next), cache)| SeqInput { tokens: std::slice::from_ref(next), cache, logits: Logits::Last })
            .collect();
        let batched = model.forward_batch(&mut inputs).unwrap();
        for (i, ((p, next), got)) in seqs.iter().zip(batched).enumerate() {
            let mut cache = prefilled(&model, p);
            let one = [SeqInput { tokens: std::slice::from_ref(next), cache: &mut cache, logits: Logits::Last }];
            let want = model.forward_batch(&mut { one }).unwrap().pop().flatten().unwrap();
            let bits = |t: candle_core::Tensor| {
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            assert!(bits(got.unwrap()) == bits(want), "{format}: sequence {i}'s logits differ in the batch");
        }

        let reqs = requests(&mut model, |_| greedy());
        let want: Vec<GenerationOutput> = reqs.iter().map(|r| alone(&mut model, r)).collect();
        let got = Batch::new(&model, 16).run(reqs, &|| false, &mut |_, _| {}).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.output.tokens, w.tokens, "{format}: seq {i}'s batched greedy tokens differ from alone");
        }
    }
}

#[test]
fn bad_requests_are_refused_with_the_numbers() {
    let model = arch_model("qwen2", serde_json::json!({}));
    let (positions, vocab) = (model.config().max_position_embeddings, model.config().vocab_size);
    let mut batch = Batch::new(&model, 2);
    let err = batch.insert(SeqRequest::new(Vec::new(), 4, greedy(), StopSet::new())).unwrap_err();
    assert!(err.to_string().contains("no tokens"), "{err}");
    let long = positions - 4;
    let err = batch.insert(SeqRequest::new(prompt(&model, long, 1), 5, greedy(), StopSet::new())).unwrap_err();
    let msg = err.to_string();
    let (tokens, limit) = (format!("{long} tokens"), format!("{positions} positions"));
    assert!(msg.contains(&tokens) && msg.contains("(5)") && msg.contains(&limit), "{msg}");
    let err = batch.insert(SeqRequest::new(vec![vocab as u32], 1, greedy(), StopSet::new())).unwrap_err();
    assert!(err.to_string().contains(&format!("token id {vocab}")), "{err}");
    let mut req = SeqRequest::new(vec![1, 2], 1, greedy(), StopSet::new());
    req.top_logprobs = 21;
    assert!(batch.insert(req).unwrap_err().to_string().contains("top_logprobs"));
    assert!(batch.is_idle());
    // A prompt that fills the context exactly with its answer is accepted.
    assert!(batch.insert(SeqRequest::new(prompt(&model, long, 1), 4, greedy(), StopSet::new())).is_ok());
}
