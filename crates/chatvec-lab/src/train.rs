//! The three training stages of the miniature: English pre-training (base), English chat
//! fine-tuning (chat) and Korean continual pre-training (target), all AdamW on CPU.
//!
//! Deterministic: initial weights and batch order come from the workspace's seeded generator
//! (`chatvec_gen::sampling::Rng`), the lab's fused kernels are row-parallel with per-row arithmetic,
//! candle's CPU kernels are deterministic for a given thread count, so the same seed and the
//! same number of threads give the same weights bit for bit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::data::{self, Dialog, Draw, Rng};
use crate::model::{LabConfig, TrainModel, BOS, EOS, EOT};

/// Optimisation settings of one stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StageOptions {
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence (language-model stages).
    pub seq: usize,
    /// Peak learning rate (linear warm-up, then cosine to a tenth).
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
}

/// The recipe of the whole family.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Recipe {
    /// English pre-training.
    pub base: StageOptions,
    /// Chat fine-tune of base.
    pub chat: StageOptions,
    /// Korean continual pre-training of base.
    pub target: StageOptions,
}

impl Default for Recipe {
    /// The third lab's recipe: a base trained for 3500 steps (700 in the second lab, 400 in the
    /// first) on text where half the sentences are echoed word lists, long enough for copying to
    /// appear (the copy probe in its `lab.json` shows when), then chat and target fine-tunes at
    /// a third of the base's learning rate, so that their vectors stay small against the base.
    fn default() -> Self {
        Recipe {
            base: StageOptions { steps: 3500, batch: 8, seq: 96, lr: 3e-3, warmup: 30 },
            chat: StageOptions { steps: 300, batch: 16, seq: 96, lr: 1e-3, warmup: 20 },
            target: StageOptions { steps: 300, batch: 8, seq: 96, lr: 1e-3, warmup: 20 },
        }
    }
}

/// What a stage did (written as `lab.json` next to the checkpoint).
#[derive(Debug, Clone, Serialize)]
pub struct StageLog {
    /// base, chat or target.
    pub stage: String,
    /// The model seed.
    pub seed: u64,
    /// Its settings.
    pub options: StageOptions,
    /// Mean loss of each block of 25 steps.
    pub loss_curve: Vec<f32>,
    /// Loss of the last step.
    pub final_loss: f32,
    /// The copy probe during training (base only): it shows when the base learns to copy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub copy_probe: Vec<CopyMeasure>,
    /// Wall time in seconds: kept out of `lab.json` so that a rebuild gives the same bytes, it
    /// is written to `<out>/<stage>_seconds.txt`.
    #[serde(skip)]
    pub seconds: f64,
}

/// Seed of the lists of the base's copy probe during training.
pub const COPY_PROBE_SEED: u64 = 77;

/// A training batch: ids `(b, s)`, next-token targets and loss weights (`b·s` each).
pub struct Batch {
    /// Inputs.
    pub ids: Tensor,
    /// Targets.
    pub targets: Vec<u32>,
    /// 1 where the target counts.
    pub weights: Vec<f32>,
}

/// Where batches come from.
pub enum Source {
    /// Random windows of a token stream.
    Stream(Vec<u32>),
    /// Whole dialogs: (ids, per-token loss mask), batched in a shuffled order.
    Dialogs(Vec<(Vec<u32>, Vec<f32>)>),
}

impl Source {
    fn batch(&self, rng: &mut Rng, order: &mut Vec<usize>, o: &StageOptions) -> Result<Batch> {
        let (mut ids, mut tg, mut w) = (Vec::new(), Vec::new(), Vec::new());
        let s;
        match self {
            Source::Stream(stream) => {
                s = o.seq;
                if stream.len() <= s + 1 {
                    return Err(Error::CorpusTooShort { tokens: stream.len(), seq: s });
                }
                for _ in 0..o.batch {
                    let start = rng.below(stream.len() - s - 1);
                    ids.extend_from_slice(&stream[start..start + s]);
                    tg.extend_from_slice(&stream[start + 1..start + s + 1]);
                    w.extend(std::iter::repeat_n(1f32, s));
                }
            }
            Source::Dialogs(dialogs) => {
                let mut picked = Vec::with_capacity(o.batch);
                for _ in 0..o.batch {
                    if order.is_empty() {
                        *order = (0..dialogs.len()).collect();
                        rng.shuffle(order);
                    }
                    picked.push(order.pop().expect("refilled"));
                }
                s = picked.iter().map(|&i| dialogs[i].0.len() - 1).max().unwrap_or(1).min(o.seq);
                for &i in &picked {
                    let (d, mask) = &dialogs[i];
                    for p in 0..s {
                        let real = p + 1 < d.len();
                        ids.push(if p < d.len() { d[p] } else { EOS });
                        tg.push(if real { d[p + 1] } else { EOS });
                        w.push(if real { mask[p + 1] } else { 0.0 });
                    }
                }
            }
        }
        let b = o.batch;
        Ok(Batch { ids: Tensor::from_vec(ids, (b, s), &Device::Cpu)?, targets: tg, weights: w })
    }
}

/// Weighted mean next-token negative log-likelihood.
pub fn loss(model: &TrainModel, batch: &Batch) -> Result<Tensor> {
    let logits = model.forward(&batch.ids)?;
    model.loss(&logits, &batch.targets, &batch.weights)
}

fn lr_at(step: usize, o: &StageOptions) -> f64 {
    if step < o.warmup {
        return o.lr * (step + 1) as f64 / o.warmup as f64;
    }
    let t = (step - o.warmup) as f64 / (o.steps - o.warmup).max(1) as f64;
    o.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
}

/// Trains `model` in place; `log` receives a line every 25 steps.
pub fn run_stage(
    model: &TrainModel,
    source: &Source,
    o: &StageOptions,
    seed: u64,
    log: impl FnMut(&str),
) -> Result<(Vec<f32>, f32)> {
    run_stage_probed(model, source, o, seed, None, log).map(|(curve, last, _)| (curve, last))
}

/// [`run_stage`], also measuring `probe` every `every` steps (and after the last): the
/// measurements, with the step they follow.
pub fn run_stage_probed(
    model: &TrainModel,
    source: &Source,
    o: &StageOptions,
    seed: u64,
    probe: Option<(&CopyProbe, usize)>,
    mut log: impl FnMut(&str),
) -> Result<(Vec<f32>, f32, Vec<CopyMeasure>)> {
    let params = ParamsAdamW { lr: o.lr, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 };
    let mut opt = AdamW::new(model.all_vars(), params)?;
    let mut rng = Rng::new(seed);
    let mut order = Vec::new();
    let (mut curve, mut block, mut last) = (Vec::new(), Vec::new(), f32::NAN);
    let start = Instant::now();
    let mut measures = Vec::new();
    for step in 0..o.steps {
        opt.set_learning_rate(lr_at(step, o));
        let batch = source.batch(&mut rng, &mut order, o)?;
        let l = loss(model, &batch)?;
        opt.backward_step(&l)?;
        last = l.to_scalar::<f32>()?;
        if !last.is_finite() {
            return Err(Error::Diverged { loss: last, step });
        }
        block.push(last);
        if block.len() == 25 || step + 1 == o.steps {
            let mean = block.iter().sum::<f32>() / block.len() as f32;
            curve.push(mean);
            block.clear();
            log(&format!("step {:>4}/{}  loss {mean:.4}  {:.0}s", step + 1, o.steps, start.elapsed().as_secs_f64()));
        }
        if let Some((p, every)) = probe {
            if (step + 1) % every.max(1) == 0 || step + 1 == o.steps {
                let m = p.measure(model, step + 1)?;
                log(&m.to_string());
                measures.push(m);
            }
        }
    }
    Ok((curve, last, measures))
}

/// Teacher-forced copy probe of a language model, in the English corpus' echoed-list form:
/// `Anna said: "LIST." Tom repeated: "LIST."` for random lists of the grammar's words. The
/// first LIST cannot be predicted (random words); the repeat can, by copying. A model that copies
/// has a much lower loss on the repeat than on the first list.
pub struct CopyProbe {
    batch: Batch,
    /// Per token: 1 = first list, 2 = repeated list, 0 = neither.
    part: Vec<u8>,
    /// Per sequence: the positions of its repeated list.
    repeats: Vec<std::ops::Range<usize>>,
}

/// One measurement of a [`CopyProbe`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CopyMeasure {
    /// Training steps done.
    pub step: usize,
    /// Mean loss on the first list's tokens.
    pub first_loss: f32,
    /// Mean loss on the repeated list's tokens.
    pub repeat_loss: f32,
    /// Share of lists whose whole repeat is the model's top prediction at every token.
    pub repeat_exact: f32,
}

impl std::fmt::Display for CopyMeasure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "copy probe at step {}: loss first list {:.3}, repeat {:.3}; repeats exact {:.0} %",
            self.step,
            self.first_loss,
            self.repeat_loss,
            100.0 * self.repeat_exact
        )
    }
}

impl CopyProbe {
    /// `n` probes of 3..=6 words drawn from `words` with `seed`.
    pub fn new(tok: &Tokenizer, words: &[String], n: usize, seed: u64) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let mut seqs = Vec::new();
        for _ in 0..n {
            let len = 3 + rng.below(4);
            let list = (0..len).map(|_| rng.pick(words).as_str()).collect::<Vec<_>>().join(" ");
            let list = encode(tok, &list)?;
            // Pieces encoded apart give the joint text's tokens: the byte-level pre-tokenizer
            // splits at the quotes.
            let mut ids = vec![BOS];
            ids.extend(encode(tok, "Anna said: \"")?);
            let first = ids.len()..ids.len() + list.len();
            ids.extend(&list);
            ids.extend(encode(tok, ".\" Tom repeated: \"")?);
            let repeat = ids.len()..ids.len() + list.len();
            ids.extend(&list);
            ids.extend(encode(tok, ".\"")?);
            seqs.push((ids, first, repeat));
        }
        let s = seqs.iter().map(|q| q.0.len() - 1).max().unwrap_or(1);
        let (mut ids, mut targets, mut weights, mut part, mut repeats) = (vec![], vec![], vec![], vec![], vec![]);
        for (b, (seq, first, repeat)) in seqs.iter().enumerate() {
            for p in 0..s {
                ids.push(seq.get(p).copied().unwrap_or(EOS));
                targets.push(seq.get(p + 1).copied().unwrap_or(EOS));
                // Position p predicts token p + 1.
                let which = if first.contains(&(p + 1)) { 1 } else { 2 * repeat.contains(&(p + 1)) as u8 };
                part.push(which);
                weights.push((which > 0) as u8 as f32);
            }
            repeats.push(b * s + repeat.start - 1..b * s + repeat.end - 1);
        }
        let ids = Tensor::from_vec(ids, (n, s), &Device::Cpu)?;
        Ok(CopyProbe { batch: Batch { ids, targets, weights }, part, repeats })
    }

    /// Measures `model` (no gradient).
    pub fn measure(&self, model: &TrainModel, step: usize) -> Result<CopyMeasure> {
        let logits = model.forward(&self.batch.ids)?.detach();
        let logp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?.to_vec2::<f32>()?;
        let (mut sums, mut counts) = ([0f32; 3], [0usize; 3]);
        let mut top = vec![false; logp.len()];
        for (i, row) in logp.iter().enumerate() {
            let k = self.part[i] as usize;
            sums[k] -= row[self.batch.targets[i] as usize];
            counts[k] += 1;
            let best = row.iter().enumerate().fold(0, |b, (j, v)| if *v > row[b] { j } else { b });
            top[i] = best == self.batch.targets[i] as usize;
        }
        let exact = self.repeats.iter().filter(|r| top[r.start..r.end].iter().all(|t| *t)).count();
        Ok(CopyMeasure {
            step,
            first_loss: sums[1] / counts[1].max(1) as f32,
            repeat_loss: sums[2] / counts[2].max(1) as f32,
            repeat_exact: exact as f32 / self.repeats.len().max(1) as f32,
        })
    }
}

/// Loads the lab tokenizer.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    Tokenizer::from_file(&path).map_err(|source| Error::LoadTokenizer { path, source })
}

/// Token ids of `text` without the BOS the post-processor would add.
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok.encode(text, false).map_err(|source| Error::Tokenize { step: "tokenizing", source })?.get_ids().to_vec())
}

/// BOS + document + EOS for every document, concatenated.
pub fn token_stream(tok: &Tokenizer, docs: &[String]) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for d in docs {
        out.push(BOS);
        out.extend(encode(tok, d)?);
        out.push(EOS);
    }
    Ok(out)
}

/// A dialog's ids (prompt, answer, `<|eot_id|>`) and its loss mask (answer and eot only).
pub fn dialog_tokens(tok: &Tokenizer, d: &Dialog) -> Result<(Vec<u32>, Vec<f32>)> {
    let mut ids = encode(tok, &data::chat_prompt(&d.user))?;
    let mut mask = vec![0f32; ids.len()];
    let answer = encode(tok, &d.answer)?;
    mask.extend(std::iter::repeat_n(1f32, answer.len() + 1));
    ids.extend(answer);
    ids.push(EOT);
    Ok((ids, mask))
}

/// English training documents: `english.txt` cut at paragraph ends into ~2 KB pieces.
pub fn english_docs(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    for para in text.split("\n\n").filter(|p| !p.trim().is_empty()) {
        if !cur.is_empty() {
            cur.push_str("\n\n");
        }
        cur.push_str(para.trim());
        if cur.len() > 2000 {
            docs.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        docs.push(cur);
    }
    docs
}

/// What a stage's training gives: the loss curve, the last loss, the copy probe's measurements.
type Trained = (Vec<f32>, f32, Vec<CopyMeasure>);

/// Paths the family reads.
#[derive(Debug, Clone)]
pub struct LabPaths {
    /// `data/lab` (english.txt, chat_train.jsonl, ...).
    pub data: PathBuf,
    /// `data/korean`.
    pub korean: PathBuf,
    /// The tokenizer folder.
    pub tokenizer: PathBuf,
}

/// Trains base, chat and target for `seed` into `out/{base,chat,target}`; `only` restricts to
/// some stages (a later stage loads the saved base).
pub fn train_family(
    paths: &LabPaths,
    cfg: LabConfig,
    recipe: &Recipe,
    seed: u64,
    out: &Path,
    only: &[String],
    mut log: impl FnMut(&str),
) -> Result<Vec<StageLog>> {
    let tok = load_tokenizer(&paths.tokenizer)?;
    let wanted = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let mut logs = Vec::new();
    let mut finish = |stage: &str, model: &TrainModel, o: &StageOptions, run: Trained, t: Instant| {
        let (loss_curve, final_loss, copy_probe) = run;
        let seconds = t.elapsed().as_secs_f64();
        let entry =
            StageLog { stage: stage.to_string(), seed, options: *o, loss_curve, final_loss, copy_probe, seconds };
        let dir = out.join(stage);
        model.save(&dir, &paths.tokenizer, stage == "chat")?;
        let (log_file, seconds_file) = (dir.join("lab.json"), out.join(format!("{stage}_seconds.txt")));
        std::fs::write(&log_file, serde_json::to_string_pretty(&entry)? + "\n").map_err(|e| Error::io(&log_file, e))?;
        std::fs::write(&seconds_file, format!("{seconds:.1}\n")).map_err(|e| Error::io(&seconds_file, e))?;
        logs.push(entry);
        Result::<()>::Ok(())
    };
    if wanted("base") {
        let t = Instant::now();
        let english_file = paths.data.join("english.txt");
        let english = std::fs::read_to_string(&english_file).map_err(|e| Error::io(&english_file, e))?;
        let source = Source::Stream(token_stream(&tok, &english_docs(&english))?);
        let mut model = TrainModel::init(cfg, seed)?;
        model.freeze_chat_only_rows()?;
        let probe = CopyProbe::new(&tok, &data::english_words(), 64, COPY_PROBE_SEED)?;
        log(&format!("seed {seed} base: English pre-training"));
        let run = run_stage_probed(&model, &source, &recipe.base, seed * 3 + 1, Some((&probe, 250)), &mut log)?;
        finish("base", &model, &recipe.base, run, t)?;
    }
    if wanted("chat") {
        let t = Instant::now();
        let dialogs = data::read_jsonl(&paths.data.join("chat_train.jsonl"))?;
        let encoded = dialogs.iter().map(|d| dialog_tokens(&tok, d)).collect::<Result<Vec<_>>>()?;
        let model = TrainModel::load(cfg, &out.join("base"))?;
        log(&format!("seed {seed} chat: English dialog fine-tune of base"));
        let (curve, last) = run_stage(&model, &Source::Dialogs(encoded), &recipe.chat, seed * 3 + 2, &mut log)?;
        finish("chat", &model, &recipe.chat, (curve, last, Vec::new()), t)?;
    }
    if wanted("target") {
        let t = Instant::now();
        let (train, _) = data::korean_split(&paths.korean)?;
        let source = Source::Stream(token_stream(&tok, &train)?);
        let mut model = TrainModel::load(cfg, &out.join("base"))?;
        model.freeze_chat_only_rows()?;
        log(&format!("seed {seed} target: Korean continual pre-training of base"));
        let (curve, last) = run_stage(&model, &source, &recipe.target, seed * 3 + 3, &mut log)?;
        finish("target", &model, &recipe.target, (curve, last, Vec::new()), t)?;
    }
    Ok(logs)
}

/// Mean weighted NLL of `model` over `batches` (no gradient).
pub fn eval_loss(model: &TrainModel, batch: &Batch) -> Result<f32> {
    Ok(loss(model, batch)?.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

/// Makes glibc keep freed buffers up to 32 MiB in the process heap instead of unmapping them.
/// A training step allocates and frees the same tensor sizes every time; past glibc's default
/// mmap threshold each was mapped, faulted in page by page and unmapped again. Measured with
/// `/usr/bin/time` on `RAYON_NUM_THREADS=1 target/release/examples/base_sweep --echo 50 --hidden 96
/// --intermediate 256 --steps 200`: 4.1 M minor faults and 13.9 s of system time for 26.8 s of
/// user time before, 93 k faults and 1.4 s after. Process-wide, so the binary calls it (before
/// training or evaluating), not the library; a no-op off glibc.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before the training threads
    // start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LabConfig;

    fn tiny() -> LabConfig {
        LabConfig { vocab: 2008, hidden: 32, intermediate: 48, layers: 2, heads: 2, max_positions: 64 }
    }

    fn tokenizer() -> Tokenizer {
        load_tokenizer(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llama-tiny/tokenizer")).unwrap()
    }

    fn run(seed: u64) -> (Vec<f32>, f32, f32) {
        let tok = tokenizer();
        let stream =
            token_stream(&tok, &english_docs(&data::english_corpus(1, 20_000, &data::CopyMix::default()))).unwrap();
        let source = Source::Stream(stream);
        let o = StageOptions { steps: 12, batch: 4, seq: 32, lr: 1e-2, warmup: 2 };
        let model = TrainModel::init(tiny(), seed).unwrap();
        let probe = source.batch(&mut Rng::new(99), &mut Vec::new(), &o).unwrap();
        let before = eval_loss(&model, &probe).unwrap();
        let (curve, _) = run_stage(&model, &source, &o, seed, |_| {}).unwrap();
        let after = eval_loss(&model, &probe).unwrap();
        (curve, before, after)
    }

    #[test]
    fn a_few_steps_lower_the_loss_deterministically() {
        let (curve, before, after) = run(5);
        assert!(after < before - 0.5, "loss {before} -> {after}");
        let (curve2, before2, after2) = run(5);
        assert_eq!(
            curve.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            curve2.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!((before.to_bits(), after.to_bits()), (before2.to_bits(), after2.to_bits()));
    }

    #[test]
    fn dialog_loss_covers_the_answer_and_eot_only() {
        let tok = tokenizer();
        let d = Dialog::new(data::Task::FirstWord, &["the".to_string(), "dog".to_string()]);
        let (ids, mask) = dialog_tokens(&tok, &d).unwrap();
        assert_eq!(ids[0], BOS);
        assert_eq!(*ids.last().unwrap(), EOT);
        let answer: Vec<u32> = ids.iter().zip(&mask).filter(|(_, m)| **m > 0.0).map(|(i, _)| *i).collect();
        assert_eq!(tok.decode(&answer, false).unwrap(), "the<|eot_id|>");
        // The prompt encodes exactly as the chat template's rendering would.
        let whole = encode(&tok, &(data::chat_prompt(&d.user) + "the<|eot_id|>")).unwrap();
        assert_eq!(whole, ids);
    }

    #[test]
    fn copy_probe_scores_the_repeat_of_the_first_list() {
        let tok = tokenizer();
        let probe = CopyProbe::new(&tok, &data::english_words(), 6, 3).unwrap();
        let (n, s) = probe.batch.ids.dims2().unwrap();
        for b in 0..n {
            let of = |k: u8| -> Vec<u32> {
                (b * s..(b + 1) * s).filter(|&i| probe.part[i] == k).map(|i| probe.batch.targets[i]).collect()
            };
            assert!(of(1).len() >= 3, "list {b}: {:?}", of(1));
            assert_eq!(of(1), of(2), "list {b}: the repeat's targets are the first list's");
            let r = &probe.repeats[b];
            assert_eq!(probe.batch.targets[r.start..r.end].to_vec(), of(2));
        }
        // An untrained model cannot copy: the repeat costs about as much as the first list.
        let m = probe.measure(&TrainModel::init(tiny(), 1).unwrap(), 0).unwrap();
        assert!((m.first_loss - m.repeat_loss).abs() < 0.1, "{m}");
        assert_eq!(m.repeat_exact, 0.0);
    }

    #[test]
    fn frozen_rows_get_no_gradient() {
        let mut model = TrainModel::init(tiny(), 2).unwrap();
        model.freeze_chat_only_rows().unwrap();
        let tok = tokenizer();
        let source = Source::Stream(token_stream(&tok, &["The old dog sleeps.".repeat(20)]).unwrap());
        let o = StageOptions { steps: 3, batch: 2, seq: 16, lr: 1e-2, warmup: 1 };
        run_stage(&model, &source, &o, 1, |_| {}).unwrap();
        let head = model.vars.data().lock().unwrap().get("lm_head.weight").unwrap().as_tensor().clone();
        let rows = head.narrow(0, 2002, 6).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(rows, 0.0);
    }
}
