//! Merge at several ratios, evaluate each, and pick the best setting by a stated rule.
//!
//! The ratios' merged models are written by the streaming merge in one pass over the inputs (each
//! block of base, chat and target is read once), into a temporary directory; each is then
//! evaluated and deleted. When the disk has no room for every ratio's model at once (four 8B
//! models take 64 GB), the ratios are merged in groups that fit, one pass over the inputs each.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::error::{EvalError, Result};
use chatvec_format::{NoProgress, ResolvedModel};
use chatvec_merge::{ops, MergeJob, OutputOptions, PlanOptions, Summary};
use serde::Serialize;

use crate::chat_eval::{run_chat_eval, ChatOptions, ChatSummary, Prompt};
use crate::perplexity::{perplexity, Perplexity, Window};
use crate::plots::{write_sweep_plot, Series, Size, SweepPlot};
use chatvec_gen::{ChatModel, LoadOptions};

/// Perplexity may exceed the target's by at most this share for a setting to be eligible.
pub const PPL_TOLERANCE: f64 = 0.05;

/// The rule, as printed with the table.
pub const RULE: &str = "best = highest stop rate × Korean ratio among settings whose perplexity is within 5% of the \
target's; ties go to the lower ratio; if no setting is within 5%, the one with the lowest perplexity";

/// One evaluated setting.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    /// The ratio; `None` for the target itself (the baseline).
    pub ratio: Option<f64>,
    /// Perplexity on the text.
    pub perplexity: Option<Perplexity>,
    /// Chat totals.
    pub chat: Option<ChatSummary>,
}

impl SweepRow {
    /// stop rate × Korean ratio (0 when unknown).
    pub fn score(&self) -> f64 {
        self.chat.as_ref().map_or(0.0, |c| c.stop_rate * c.korean_ratio.unwrap_or(0.0))
    }

    fn ppl(&self) -> f64 {
        self.perplexity.as_ref().map_or(f64::INFINITY, |p| p.perplexity)
    }
}

/// The sweep's result.
#[derive(Debug, Clone, Serialize)]
pub struct SweepResult {
    /// The baseline (target) first, then each ratio in the order given.
    pub rows: Vec<SweepRow>,
    /// Index into `rows` of the best merged setting.
    pub best: Option<usize>,
    /// The rule that chose it.
    pub rule: String,
}

/// The perplexity a merged setting may have to be eligible: the target's plus [`PPL_TOLERANCE`].
fn perplexity_limit(rows: &[SweepRow]) -> f64 {
    let target = rows.iter().find(|r| r.ratio.is_none()).map(SweepRow::ppl);
    target.map_or(f64::INFINITY, |t| t * (1.0 + PPL_TOLERANCE))
}

/// Whether `best` was chosen by the rule's fallback (no setting within the perplexity tolerance),
/// so it is only the lowest perplexity, whatever its stop rate.
pub fn chosen_by_fallback(rows: &[SweepRow], best: Option<usize>) -> bool {
    best.is_some_and(|i| rows[i].ppl() > perplexity_limit(rows))
}

/// Applies [`RULE`] to the merged rows (those with a ratio).
pub fn pick_best(rows: &[SweepRow]) -> Option<usize> {
    let merged: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].ratio.is_some()).collect();
    let limit = perplexity_limit(rows);
    let eligible: Vec<usize> = merged.iter().copied().filter(|&i| rows[i].ppl() <= limit).collect();
    let ratio = |i: usize| rows[i].ratio.unwrap_or(0.0);
    if eligible.is_empty() {
        return merged
            .into_iter()
            .min_by(|&a, &b| rows[a].ppl().total_cmp(&rows[b].ppl()).then(ratio(a).total_cmp(&ratio(b))));
    }
    eligible
        .into_iter()
        .min_by(|&a, &b| rows[b].score().total_cmp(&rows[a].score()).then(ratio(a).total_cmp(&ratio(b))))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{:.1}%", 100.0 * x))
}

/// The table for people, with the rule.
pub fn to_text(r: &SweepResult) -> String {
    let mut o = format!(
        "  {:<8} {:>12} {:>10} {:>10} {:>10} {:>10} {:>8}\n",
        "ratio", "perplexity", "stop rate", "Korean", "repetition", "leaks", "score"
    );
    for (i, row) in r.rows.iter().enumerate() {
        let c = row.chat.as_ref();
        o.push_str(&format!(
            "{} {:<8} {:>12} {:>10} {:>10} {:>10} {:>10} {:>8.3}\n",
            if r.best == Some(i) { "*" } else { " " },
            row.ratio.map_or_else(|| "target".into(), |x| format!("{x}")),
            row.perplexity.as_ref().map_or_else(|| "-".into(), |p| format!("{:.3}", p.perplexity)),
            pct(c.map(|c| c.stop_rate)),
            pct(c.and_then(|c| c.korean_ratio)),
            pct(c.and_then(|c| c.repetition)),
            pct(c.map(|c| c.leak_rate)),
            row.score()
        ));
    }
    o.push_str(&format!("* {}\n", r.rule));
    if chosen_by_fallback(&r.rows, r.best) {
        let stop = r.best.and_then(|i| r.rows[i].chat.as_ref()).map(|c| c.stop_rate);
        o.push_str(&format!(
            "note: no setting's perplexity is within {:.0}% of the target's, so * only marks the lowest \
             perplexity (stop rate {}); judge the table yourself\n",
            100.0 * PPL_TOLERANCE,
            pct(stop)
        ));
    }
    o
}

/// The table as CSV.
pub fn to_csv(r: &SweepResult) -> String {
    let mut o =
        String::from("ratio,perplexity,mean_nll,stop_rate,korean_ratio,repetition,leak_rate,mean_tokens,score,best\n");
    let f = |v: Option<f64>| v.map_or_else(String::new, |x| x.to_string());
    for (i, row) in r.rows.iter().enumerate() {
        let c = row.chat.as_ref();
        o.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            row.ratio.map_or_else(|| "target".into(), |x| x.to_string()),
            f(row.perplexity.as_ref().map(|p| p.perplexity)),
            f(row.perplexity.as_ref().map(|p| p.mean_nll)),
            f(c.map(|c| c.stop_rate)),
            f(c.and_then(|c| c.korean_ratio)),
            f(c.and_then(|c| c.repetition)),
            f(c.map(|c| c.leak_rate)),
            f(c.map(|c| c.mean_tokens)),
            row.score(),
            r.best == Some(i)
        ));
    }
    o
}

/// Writes the line plot (PATH.png and PATH.svg).
pub fn plot(r: &SweepResult, path: &Path, size: Size) -> Result<()> {
    let merged: Vec<&SweepRow> = r.rows.iter().filter(|x| x.ratio.is_some()).collect();
    let line = |label: &str, f: &dyn Fn(&SweepRow) -> Option<f64>| Series {
        label: label.into(),
        points: merged.iter().filter_map(|row| Some((row.ratio?, f(row)?))).collect(),
    };
    let p = SweepPlot {
        title: "Chat-vector ratio sweep".into(),
        perplexity: line("perplexity", &|row| row.perplexity.as_ref().map(|p| p.perplexity)),
        target_perplexity: r
            .rows
            .iter()
            .find(|x| x.ratio.is_none())
            .and_then(|x| x.perplexity.as_ref())
            .map(|p| p.perplexity),
        rates: vec![
            line("stop rate", &|row| row.chat.as_ref().map(|c| c.stop_rate)),
            line("Korean ratio", &|row| row.chat.as_ref().and_then(|c| c.korean_ratio)),
            line("repetition", &|row| row.chat.as_ref().and_then(|c| c.repetition)),
        ],
        best: r.best.and_then(|i| r.rows[i].ratio),
    };
    write_sweep_plot(&p, path, size)
}

/// What each setting is evaluated on.
pub struct SweepEval<'a> {
    /// Text to score, as the target tokenizer reads it.
    pub text: &'a str,
    /// Window.
    pub window: Window,
    /// Score at most this many tokens.
    pub max_tokens: Option<usize>,
    /// Prompts (empty: no chat evaluation).
    pub prompts: &'a [Prompt],
    /// Generation settings.
    pub chat: ChatOptions,
    /// Loading.
    pub load: LoadOptions,
}

/// The merge inputs.
pub struct SweepMerge {
    /// Base.
    pub base: ResolvedModel,
    /// Chat.
    pub chat: ResolvedModel,
    /// Target.
    pub target: ResolvedModel,
    /// Ratios, in order.
    pub ratios: Vec<f64>,
    /// Selection etc.
    pub plan: PlanOptions,
    /// Where merged models are written (a temporary directory inside it).
    pub work_dir: PathBuf,
    /// Most merged models on the disk at once; `None`: as many as its free space holds.
    pub at_once: Option<usize>,
}

/// Room kept free beside the merged models (config and tokenizer files, other writers).
const DISK_MARGIN: u64 = 1 << 30;

/// How many of `ratios` merged models of `model_bytes` each to write in one pass when `free`
/// bytes are free: all when they fit, else as many as fit, at least one (the merge itself then
/// refuses in one line if even one does not fit).
pub fn ratios_per_pass(ratios: usize, model_bytes: u64, free: u64) -> usize {
    let fit = free.saturating_sub(DISK_MARGIN) / model_bytes.max(1);
    (fit as usize).clamp(1, ratios.max(1))
}

fn evaluate(
    dir: &Path,
    fallback: Option<&Path>,
    e: &SweepEval,
    cancel: &AtomicBool,
) -> Result<(Perplexity, Option<ChatSummary>)> {
    let mut m = ChatModel::load(dir, &e.load, fallback)?;
    let mut ids = m.encode_text(e.text)?;
    if let Some(n) = e.max_tokens {
        ids.truncate(n);
    }
    let ppl = perplexity(&mut m.model, &ids, e.window, cancel)?;
    let chat = if e.prompts.is_empty() {
        None
    } else {
        Some(run_chat_eval(&mut m, e.prompts, &e.chat, cancel, &mut |_, _| {})?.summary)
    };
    Ok((ppl, chat))
}

/// Merges one group of ratios in one pass over the inputs (a dry run writes nothing).
fn merge_group(job: &SweepMerge, group: &[(f64, OutputOptions)], cancel: &AtomicBool) -> Result<Vec<Summary>> {
    let merge = MergeJob {
        base: job.base.clone(),
        chat: job.chat.clone(),
        target: job.target.clone(),
        ratio: group[0].0,
        plan: job.plan.clone(),
        output: group[0].1.clone(),
    };
    Ok(ops::merge_ratios(&merge, group, &NoProgress, cancel)?)
}

/// How many merged models the free space of `dir` holds at once (a dry run gives one model's
/// size), saying so through `log` when it is fewer than all.
fn ratios_that_fit(
    job: &SweepMerge,
    outputs: &[(f64, OutputOptions)],
    dir: &Path,
    cancel: &AtomicBool,
    log: &mut dyn FnMut(&str),
) -> Result<usize> {
    let dry = (outputs[0].0, OutputOptions { dry_run: true, ..outputs[0].1.clone() });
    let model_bytes = merge_group(job, &[dry], cancel)?[0].bytes_written;
    let free = fs4::available_space(dir).map_err(|e| EvalError::io(dir, "measure the free space of", e))?;
    let n = ratios_per_pass(outputs.len(), model_bytes, free);
    if n < outputs.len() {
        log(&format!(
            "{} free in {}, {} a merged model: merging {n} ratio(s) per pass",
            ops::human_bytes(free),
            job.work_dir.display(),
            ops::human_bytes(model_bytes)
        ));
    }
    Ok(n)
}

/// Runs the sweep; `log` receives a line per step.
pub fn run_sweep(
    job: &SweepMerge,
    e: &SweepEval,
    cancel: &AtomicBool,
    log: &mut dyn FnMut(&str),
) -> Result<SweepResult> {
    if job.ratios.is_empty() {
        return Err(EvalError::InvalidSetting("no ratios to sweep".into()));
    }
    if let Some(r) = job.ratios.iter().find(|r| !r.is_finite()) {
        return Err(EvalError::InvalidSetting(format!("ratio {r} is not a finite number")));
    }
    std::fs::create_dir_all(&job.work_dir).map_err(|e| EvalError::io(&job.work_dir, "create", e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".chatvec-sweep-")
        .tempdir_in(&job.work_dir)
        .map_err(|e| EvalError::io(&job.work_dir, "create a temporary directory in", e))?;
    let mut rows = Vec::new();
    log("evaluating the target");
    // The target usually has no chat template: it borrows the chat model's, as its merges will.
    let (ppl, chat) = evaluate(&job.target.path, Some(&job.chat.path), e, cancel)?;
    rows.push(SweepRow { ratio: None, perplexity: Some(ppl), chat });
    let outputs: Vec<(f64, OutputOptions)> = job
        .ratios
        .iter()
        .enumerate()
        .map(|(i, &ratio)| {
            let path = tmp.path().join(format!("ratio-{i}-{ratio}"));
            (ratio, OutputOptions { path, force: true, shard_size: 5_000_000_000, dry_run: false })
        })
        .collect();
    let per_pass = match job.at_once {
        Some(n) => n.max(1),
        None => ratios_that_fit(job, &outputs, tmp.path(), cancel, log)?,
    };
    for group in outputs.chunks(per_pass) {
        let ratios: Vec<f64> = group.iter().map(|(r, _)| *r).collect();
        log(&format!("merging at ratios {ratios:?} in one pass"));
        merge_group(job, group, cancel)?;
        for (ratio, out) in group {
            log(&format!("evaluating ratio {ratio}"));
            let (ppl, chat) = evaluate(&out.path, Some(&job.chat.path), e, cancel)?;
            rows.push(SweepRow { ratio: Some(*ratio), perplexity: Some(ppl), chat });
            std::fs::remove_dir_all(&out.path).ok();
        }
    }
    let best = pick_best(&rows);
    Ok(SweepResult { rows, best, rule: RULE.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat_eval::summarize;

    #[test]
    fn ratios_per_pass_is_all_that_fit_beside_the_margin_and_at_least_one() {
        let gb = 1_000_000_000;
        assert_eq!(ratios_per_pass(4, 16 * gb, 200 * gb), 4);
        assert_eq!(ratios_per_pass(4, 16 * gb, 16 * 3 * gb + DISK_MARGIN), 3);
        assert_eq!(ratios_per_pass(4, 16 * gb, 16 * 3 * gb + DISK_MARGIN - 1), 2);
        assert_eq!(ratios_per_pass(4, 16 * gb, 10 * gb), 1, "the merge itself refuses one that does not fit");
        assert_eq!(ratios_per_pass(4, 0, 0), 1);
    }

    fn row(ratio: Option<f64>, ppl: f64, stop: f64, ko: f64) -> SweepRow {
        let mut chat = summarize(&[]);
        chat.stop_rate = stop;
        chat.korean_ratio = Some(ko);
        SweepRow {
            ratio,
            perplexity: Some(Perplexity {
                tokens: 10,
                scored: 9,
                windows: 1,
                window: Window::new(10, 10).unwrap(),
                mean_nll: ppl.ln(),
                perplexity: ppl,
            }),
            chat: Some(chat),
        }
    }

    #[test]
    fn best_is_the_highest_score_within_tolerance_then_the_lower_ratio() {
        let rows = vec![
            row(None, 10.0, 0.0, 1.0),
            row(Some(0.3), 10.1, 0.5, 0.9),
            row(Some(0.5), 10.4, 0.8, 0.9),
            row(Some(0.7), 10.4, 0.9, 0.8), // same score as 0.5 (0.72): the lower ratio wins
            row(Some(1.0), 11.0, 1.0, 1.0), // best score, but 10% worse perplexity
        ];
        assert_eq!(pick_best(&rows), Some(2));
        let text = to_text(&SweepResult { best: pick_best(&rows), rows: rows.clone(), rule: RULE.into() });
        assert!(text.lines().nth(3).unwrap().starts_with("* 0.5"), "{text}");
        // Nothing within 5%: lowest perplexity.
        let rows = vec![row(None, 10.0, 0.0, 1.0), row(Some(0.5), 12.0, 1.0, 1.0), row(Some(1.0), 11.0, 0.0, 0.0)];
        assert_eq!(pick_best(&rows), Some(2));
        assert!(!text.contains("note:"), "{text}");
    }

    #[test]
    fn a_best_chosen_by_the_fallback_says_so() {
        // Nothing within 5%: the lowest perplexity is marked, with a 0 % stop rate, and the table says why.
        let rows = vec![row(None, 10.0, 0.0, 1.0), row(Some(0.5), 12.0, 1.0, 1.0), row(Some(1.0), 11.0, 0.0, 0.0)];
        let best = pick_best(&rows);
        assert!(chosen_by_fallback(&rows, best));
        let text = to_text(&SweepResult { best, rows, rule: RULE.into() });
        assert!(
            text.contains("note: no setting's perplexity is within 5%") && text.contains("stop rate 0.0%"),
            "{text}"
        );
    }
}
