//! A sweep that merges its ratios in groups (a disk without room for every merged model at once)
//! gives what one pass over all ratios gives, and each ratio's row is what merging that ratio
//! alone and evaluating it gives.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use chatvec_eval::chat_eval::{bundled_prompts, ChatOptions};
use chatvec_eval::perplexity::{perplexity, Window};
use chatvec_eval::sweep::{run_sweep, SweepEval, SweepMerge, SweepResult};
use chatvec_format::{NoProgress, ResolvedModel};
use chatvec_gen::{ChatModel, LoadOptions};
use chatvec_merge::{ops, MergeJob, OutputOptions, PlanOptions};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/llama-tiny");
const TEXT: &str = "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.";
const WINDOW: Window = Window { context: 16, stride: 8 };

fn model(name: &str) -> ResolvedModel {
    let path = Path::new(FIXTURES).join(name);
    ResolvedModel { spec: path.display().to_string(), path, hub_id: None, revision: None }
}

fn job(work_dir: PathBuf, at_once: Option<usize>) -> SweepMerge {
    SweepMerge {
        base: model("base"),
        chat: model("chat"),
        target: model("target"),
        ratios: vec![0.5, 1.0, 0.25],
        plan: PlanOptions::default(),
        work_dir,
        at_once,
    }
}

fn sweep(at_once: Option<usize>, eval: &SweepEval) -> (SweepResult, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Vec::new();
    let r =
        run_sweep(&job(tmp.path().into(), at_once), eval, &AtomicBool::new(false), &mut |l| log.push(l.to_string()))
            .unwrap();
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "merged models are deleted: {left:?}");
    (r, log)
}

#[test]
fn a_sweep_in_groups_gives_the_one_pass_sweep_and_each_ratio_merged_alone() {
    let prompts: Vec<_> = bundled_prompts().into_iter().take(2).collect();
    let eval = SweepEval {
        text: TEXT,
        window: WINDOW,
        max_tokens: None,
        prompts: &prompts,
        chat: ChatOptions { max_new_tokens: 4, ..ChatOptions::default() },
        load: LoadOptions::default(),
    };
    let (all, log) = sweep(None, &eval);
    assert!(log.contains(&"merging at ratios [0.5, 1.0, 0.25] in one pass".to_string()), "{log:?}");
    let rows = |r: &SweepResult| serde_json::to_value(&r.rows).unwrap();
    for at_once in [1, 2] {
        let (grouped, log) = sweep(Some(at_once), &eval);
        assert_eq!(rows(&grouped), rows(&all), "{at_once} ratio(s) per pass");
        assert_eq!(grouped.best, all.best);
        let passes = log.iter().filter(|l| l.starts_with("merging at ratios")).count();
        assert_eq!(passes, 3usize.div_ceil(at_once), "{log:?}");
    }
    // The oracle: each ratio merged on its own by `merge`, then scored.
    for row in &all.rows[1..] {
        let ratio = row.ratio.unwrap();
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join("merged");
        let output = OutputOptions { path: path.clone(), force: false, shard_size: 5_000_000_000, dry_run: false };
        let j = MergeJob {
            base: model("base"),
            chat: model("chat"),
            target: model("target"),
            ratio,
            plan: PlanOptions::default(),
            output,
        };
        ops::merge(&j, &NoProgress, &AtomicBool::new(false)).unwrap();
        let mut m = ChatModel::load(&path, &LoadOptions::default(), None).unwrap();
        let ids = m.encode_text(TEXT).unwrap();
        let ppl = perplexity(&mut m.model, &ids, WINDOW, &AtomicBool::new(false)).unwrap();
        assert_eq!(
            serde_json::to_value(&ppl).unwrap(),
            serde_json::to_value(row.perplexity.as_ref().unwrap()).unwrap(),
            "ratio {ratio}"
        );
    }
}
