//! Merging the family with `chatvec_merge::ops::merge` and measuring every model: task accuracy,
//! stop rate and Korean ratio of greedy answers (chatvec-gen's `generate`), and Korean
//! perplexity on held-out prose.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::{Error, Result};
use candle_core::{DType, Device};
use chatvec_eval::metrics;
use chatvec_eval::perplexity::{perplexity, Window};
use chatvec_gen::{generate, GenError, GenerationConfig, Model, SamplingParams, StopReason, StopSet};
use chatvec_merge::ops::{self, MergeJob, OutputOptions};
use chatvec_merge::PlanOptions;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::data::{self, Dialog, Task};
use crate::model::{BOS, EOS, EOT};
use crate::train::{encode, token_stream};

/// A model of the evaluation: its label and how it is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Row label (`target`, `merge 0.5`, ...).
    pub label: String,
    /// Folder name inside a run directory.
    pub folder: String,
    /// Ratio of the chat vector added to the target (`None` for base and chat).
    pub ratio: Option<f64>,
    /// Whether it is a merge, and with feature-porter.
    pub merge: Option<bool>,
    /// Tensors left out of the vector (a regex), if any.
    #[serde(default)]
    pub exclude: Option<String>,
}

/// The models compared: base, chat, target, target + r·(chat − base) for r in 0.5 and 1.0, and
/// feature-porter at ratio 1.0, and ratio 1.0 without the vocabulary tensors (embed_tokens and
/// lm_head keep the target's rows, except the chat-only special rows taken from chat).
pub fn entries() -> Vec<Entry> {
    let e = |label: &str, folder: &str, ratio: Option<f64>, merge: Option<bool>| Entry {
        label: label.into(),
        folder: folder.into(),
        ratio,
        merge,
        exclude: None,
    };
    vec![
        e("base", "base", None, None),
        e("chat", "chat", None, None),
        e("target", "target", Some(0.0), None),
        e("merge 0.5", "merged-0.5", Some(0.5), Some(false)),
        e("merge 1.0", "merged-1.0", Some(1.0), Some(false)),
        e("feature-porter 1.0", "merged-fp-1.0", Some(1.0), Some(true)),
        Entry {
            exclude: Some("embed_tokens|lm_head".into()),
            ..e("merge 1.0, no vocab", "merged-1.0-novocab", Some(1.0), Some(false))
        },
    ]
}

/// `chatvec merge` of a run's base, chat and target into `run/<entry.folder>`.
pub fn merge_entry(run: &Path, entry: &Entry) -> Result<()> {
    let (Some(ratio), Some(porter)) = (entry.ratio, entry.merge) else { return Ok(()) };
    let resolve = |name: &str| {
        let p = run.join(name);
        chatvec_hub::resolve_model(&p.to_string_lossy(), None)
            .map_err(|source| Error::Resolve { path: p, source: Box::new(source) })
    };
    let mut plan = PlanOptions::default();
    if let Some(x) = &entry.exclude {
        plan.selection = chatvec_merge::Selection::new(None, Some(x))?;
    }
    if porter {
        plan.porter = Some(chatvec_merge::kernel::PorterParams::default());
    }
    let job = MergeJob {
        base: resolve("base")?,
        chat: resolve("chat")?,
        target: resolve("target")?,
        ratio,
        plan,
        output: OutputOptions { path: run.join(&entry.folder), force: true, shard_size: 5_000_000_000, dry_run: false },
    };
    ops::merge(&job, &chatvec_format::NoProgress, &AtomicBool::new(false))
        .map_err(|source| Error::Merge { output: run.join(&entry.folder), source: Box::new(source) })?;
    Ok(())
}

/// One greedy answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The task.
    pub task: Task,
    /// Expected answer.
    pub expected: String,
    /// What the model wrote before a stop token (special tokens written out).
    pub text: String,
    /// Ended with `<|eot_id|>`.
    pub eot: bool,
}

impl Answer {
    /// The answer begins with the exact expected text, followed by nothing or a non-word
    /// character.
    pub fn correct(&self) -> bool {
        let t = self.text.trim_start();
        t.strip_prefix(&self.expected).is_some_and(|rest| rest.chars().next().is_none_or(|c| !c.is_alphanumeric()))
    }

    /// Exactly the expected text, then `<|eot_id|>`.
    pub fn exact_and_stopped(&self) -> bool {
        self.eot && self.text.trim() == self.expected
    }
}

/// Metrics of one model on one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Korean-content dialogs: answer correct.
    pub ko_accuracy: f64,
    /// Korean-content dialogs: generation ended with `<|eot_id|>`.
    pub ko_stop: f64,
    /// Korean-content dialogs: exactly the answer, then `<|eot_id|>`.
    pub ko_exact: f64,
    /// Hangul share of the letters in the answers to Korean-content dialogs.
    pub ko_korean_ratio: f64,
    /// English-content held-out dialogs: answer correct.
    pub en_accuracy: f64,
    /// English-content held-out dialogs: stopped with `<|eot_id|>`.
    pub en_stop: f64,
    /// Perplexity on held-out Korean prose.
    pub ko_perplexity: f64,
    /// Korean-content accuracy per task, in `Task::ALL` order.
    pub ko_accuracy_by_task: Vec<f64>,
    /// Prose copy probe ([`copy_rate`]) on the Korean-content dialogs' texts (the first 50).
    #[serde(default)]
    pub ko_copy: f64,
    /// Prose copy probe on the English held-out dialogs' texts.
    #[serde(default)]
    pub en_copy: f64,
}

/// Greedy continuation of `prompt` (at most `max_new` tokens), stopping at `<|end_of_text|>` or
/// `<|eot_id|>` (the same stop set for every model, so the metric compares the weights, not the
/// configs): the text before the stop token, and whether it was `<|eot_id|>`.
fn greedy(model: &mut Model, tok: &Tokenizer, prompt: &[u32], max_new: usize) -> Result<(String, bool)> {
    let mut stops = StopSet::new();
    stops.insert(EOS, "<|end_of_text|>");
    stops.insert(EOT, "<|eot_id|>");
    let cfg = GenerationConfig {
        max_new_tokens: max_new,
        sampling: SamplingParams { greedy: true, temperature: 0.0, ..SamplingParams::default() },
    };
    model.reset();
    let g = generate::<GenError, _>(model, prompt, &cfg, &stops, |_| Ok(ControlFlow::Continue(())))?;
    let mut ids = g.tokens.clone();
    if matches!(g.stop, StopReason::StopToken { .. }) {
        ids.pop();
    }
    let text = tok.decode(&ids, false).map_err(|source| Error::Tokenize { step: "decoding", source })?;
    Ok((text, g.stop == StopReason::StopToken { id: EOT }))
}

/// Greedy answers of `model` to `dialogs` in the chat format.
pub fn answers(model: &mut Model, tok: &Tokenizer, dialogs: &[Dialog], max_new: usize) -> Result<Vec<Answer>> {
    let mut out = Vec::with_capacity(dialogs.len());
    for d in dialogs {
        let (text, eot) = greedy(model, tok, &encode(tok, &data::chat_prompt(&d.user))?, max_new)?;
        out.push(Answer { task: d.task, expected: d.answer.clone(), text, eot });
    }
    Ok(out)
}

/// The prose copy probe, with no chat format: does the model continue
/// `Anna said: "LIST." Tom repeated: "` with LIST (the form of the base's echoed lists)? One
/// probe per dialog, LIST being the dialog's text. Share of probes continued correctly.
pub fn copy_rate(model: &mut Model, tok: &Tokenizer, dialogs: &[Dialog]) -> Result<f64> {
    let mut right = 0;
    for d in dialogs {
        let list = d.user.lines().nth(1).unwrap_or_default();
        let mut prompt = vec![BOS];
        prompt.extend(encode(tok, &format!("Anna said: \"{list}.\" Tom repeated: \""))?);
        let (text, _) = greedy(model, tok, &prompt, encode(tok, list)?.len() + 4)?;
        right += Answer { task: Task::Repeat, expected: list.to_string(), text, eot: false }.correct() as usize;
    }
    Ok(right as f64 / dialogs.len().max(1) as f64)
}

/// Held-out evaluation data, loaded once.
pub struct EvalSet {
    /// Korean-content dialogs.
    pub ko: Vec<Dialog>,
    /// English-content held-out dialogs.
    pub en: Vec<Dialog>,
    /// Held-out Korean prose as tokens.
    pub ko_stream: Vec<u32>,
}

impl EvalSet {
    /// Reads `data_dir/chat_eval_{ko,en}.jsonl` and the held-out Korean files.
    pub fn load(data_dir: &Path, korean_dir: &Path, tok: &Tokenizer) -> Result<Self> {
        let (_, held) = data::korean_split(korean_dir)?;
        Ok(EvalSet {
            ko: data::read_jsonl(&data_dir.join("chat_eval_ko.jsonl"))?,
            en: data::read_jsonl(&data_dir.join("chat_eval_en.jsonl"))?,
            ko_stream: token_stream(tok, &held)?,
        })
    }
}

fn share(answers: &[Answer], f: impl Fn(&Answer) -> bool) -> f64 {
    answers.iter().filter(|a| f(a)).count() as f64 / answers.len().max(1) as f64
}

/// All metrics of the model in `dir`, plus its Korean answers.
pub fn score(dir: &Path, tok: &Tokenizer, set: &EvalSet) -> Result<(Scores, Vec<Answer>)> {
    let mut model = Model::load(dir, &Device::Cpu, DType::F32)
        .map_err(|source| Error::LoadModel { dir: dir.into(), source: Box::new(source) })?;
    let ko = answers(&mut model, tok, &set.ko, 40)?;
    let en = answers(&mut model, tok, &set.en, 40)?;
    let texts: Vec<String> = ko.iter().map(|a| a.text.clone()).collect();
    let by_task = Task::ALL
        .iter()
        .map(|&t| {
            let of: Vec<Answer> = ko.iter().filter(|a| a.task == t).cloned().collect();
            share(&of, Answer::correct)
        })
        .collect();
    let scores = Scores {
        ko_accuracy: share(&ko, Answer::correct),
        ko_stop: share(&ko, |a| a.eot),
        ko_exact: share(&ko, Answer::exact_and_stopped),
        ko_korean_ratio: metrics::korean_ratio(&texts.join("\n")).unwrap_or(0.0),
        en_accuracy: share(&en, Answer::correct),
        en_stop: share(&en, |a| a.eot),
        // Disjoint windows of 128 tokens, each window's first token context only.
        ko_perplexity: ko_perplexity(&mut model, &set.ko_stream)?,
        ko_accuracy_by_task: by_task,
        ko_copy: copy_rate(&mut model, tok, &set.ko[..set.ko.len().min(50)])?,
        en_copy: copy_rate(&mut model, tok, &set.en)?,
    };
    Ok((scores, ko))
}

/// Perplexity over disjoint windows of 128 tokens, each window's first token context only.
fn ko_perplexity(model: &mut Model, stream: &[u32]) -> Result<f64> {
    let measured = Window::new(128, 128)
        .and_then(|w| perplexity(model, stream, w, &AtomicBool::new(false)))
        .map_err(|e| Error::Perplexity(e.into()))?;
    Ok(measured.perplexity)
}

/// Scores of every entry of one run (merging first).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunScores {
    /// The run directory.
    pub run: PathBuf,
    /// (entry label, scores), in `entries()` order.
    pub models: Vec<(String, Scores)>,
}

/// File in a run directory holding its [`RunScores`] from the last evaluation.
pub const SCORES_FILE: &str = "lab_scores.json";

/// Merges and scores one run directory (holding base/, chat/, target/); writes each model's
/// Korean answers to `<model>/lab_answers.json` and the scores to [`SCORES_FILE`]. With
/// `reuse`, a run that has that file is read instead of scored again (runs can then be scored
/// in parallel processes and tabulated together).
pub fn evaluate_run(
    run: &Path,
    tok: &Tokenizer,
    set: &EvalSet,
    reuse: bool,
    mut log: impl FnMut(&str),
) -> Result<RunScores> {
    let cache = run.join(SCORES_FILE);
    if reuse && cache.is_file() {
        let text = std::fs::read_to_string(&cache).map_err(|e| Error::io(&cache, e))?;
        return serde_json::from_str(&text).map_err(|source| Error::Json { path: cache, line: None, source });
    }
    let mut models = Vec::new();
    for e in entries() {
        merge_entry(run, &e)?;
        let dir = run.join(&e.folder);
        let (s, answers) = score(&dir, tok, set)?;
        let answers_file = dir.join("lab_answers.json");
        std::fs::write(&answers_file, serde_json::to_string_pretty(&answers)? + "\n")
            .map_err(|e| Error::io(&answers_file, e))?;
        log(&format!(
            "{}  {:<20} ko acc {:.2} stop {:.2} exact {:.2} hangul {:.2} ppl {:.2} | en acc {:.2} stop {:.2}",
            run.display(),
            e.label,
            s.ko_accuracy,
            s.ko_stop,
            s.ko_exact,
            s.ko_korean_ratio,
            s.ko_perplexity,
            s.en_accuracy,
            s.en_stop
        ));
        models.push((e.label.clone(), s));
    }
    let scores = RunScores { run: run.to_path_buf(), models };
    std::fs::write(&cache, serde_json::to_string_pretty(&scores)? + "\n").map_err(|e| Error::io(&cache, e))?;
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(expected: &str, text: &str, eot: bool) -> Answer {
        Answer { task: Task::Repeat, expected: expected.into(), text: text.into(), eot }
    }

    #[test]
    fn correctness_needs_the_whole_answer_at_a_word_boundary() {
        assert!(a("국회", "국회", true).correct());
        assert!(a("국회", "국회\n다른", false).correct());
        assert!(!a("국회", "국회의", false).correct());
        assert!(!a("3", "31", true).correct());
        assert!(a("3", "3", true).exact_and_stopped());
        assert!(!a("3", "3 words", true).exact_and_stopped());
        assert!(!a("3", "3", false).exact_and_stopped());
    }
}
