//! Perplexity of a model on text, with the sliding window of Hugging Face's perplexity guide.
//!
//! Windows of at most `context` tokens start every `stride` tokens; each window scores only the
//! tokens no earlier window scored (the ones after the previous window's end), each conditioned
//! on everything before it in the window. So with `stride < context` every token after the
//! first is scored exactly once, with at least `context − stride` tokens of history (except near
//! the start); with `stride = context` the windows are disjoint chunks and each chunk's first
//! token, having no history, is not scored. The result is the
//! mean negative log-likelihood (natural log) over all scored tokens and its exponential. With
//! `context` ≥ the text's length it is one forward pass over the whole text. Several windows go
//! through the model in one pass (each with its own KV cache), which changes nothing but the
//! speed.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{EvalError, Result};
use chatvec_gen::models::{KvCache, Logits, SeqInput};
use chatvec_gen::Model;
use serde::Serialize;

/// The bundled default text: the opening articles of the Korean Constitution (LF line ends).
pub const BUNDLED_TEXT: &str = include_str!("../data/ko_text.txt");

/// Window settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    /// Most tokens per forward pass.
    pub context: usize,
    /// Tokens between window starts (≤ `context`).
    pub stride: usize,
}

impl Window {
    /// Checks `1 ≤ stride ≤ context` and `context ≥ 2`.
    pub fn new(context: usize, stride: usize) -> Result<Window> {
        if context < 2 {
            return Err(EvalError::InvalidSetting(format!("--context must be at least 2, got {context}")));
        }
        if stride == 0 || stride > context {
            return Err(EvalError::InvalidSetting(format!(
                "--stride must be between 1 and --context ({context}), got {stride}"
            )));
        }
        Ok(Window { context, stride })
    }
}

/// The result of [`perplexity`].
#[derive(Debug, Clone, Serialize)]
pub struct Perplexity {
    /// Tokens in the text (with BOS if the tokenizer adds one).
    pub tokens: usize,
    /// Tokens scored (all but the first).
    pub scored: usize,
    /// Forward passes.
    pub windows: usize,
    /// The window settings used.
    pub window: Window,
    /// Mean negative log-likelihood per scored token (nats).
    pub mean_nll: f64,
    /// exp(mean_nll).
    pub perplexity: f64,
}

/// −log softmax(logits)[target], computed in f64.
pub fn token_nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    lse - logits[target as usize] as f64
}

/// The windows as `(begin, end, first_scored)`: forward `ids[begin..end]`, score positions
/// `first_scored..end`.
pub fn windows(n: usize, w: Window) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let (mut begin, mut prev_end) = (0, 0);
    if n < 2 {
        return out;
    }
    loop {
        let end = (begin + w.context).min(n);
        // A window's first token has no history in it: it is never scored (as in HF's loss,
        // whose labels shift by one), which only matters when stride = context.
        out.push((begin, end, prev_end.max(begin + 1)));
        prev_end = end;
        if end == n {
            break;
        }
        begin += w.stride;
    }
    out
}

/// Windows scored in one forward pass unless told otherwise.
pub const DEFAULT_WINDOWS_PER_PASS: usize = 4;

/// Most logits (rows × vocabulary) one pass may hold, 1 GiB of f32: a window alone may exceed it.
const MAX_LOGITS_PER_PASS: usize = 1 << 28;

/// Scores `ids` with `model`, [`DEFAULT_WINDOWS_PER_PASS`] windows per forward pass; see
/// [`perplexity_in_batches`]. (The model's own cache is neither used nor changed; `&mut` keeps
/// the signature its callers know.)
pub fn perplexity(model: &mut Model, ids: &[u32], w: Window, cancel: &AtomicBool) -> Result<Perplexity> {
    perplexity_in_batches(model, ids, w, DEFAULT_WINDOWS_PER_PASS, cancel)
}

/// Scores `ids` with `model`, up to `per_pass` windows in one forward pass; `cancel` stops
/// between passes. A window longer than the model's positions (`max_position_embeddings`) is
/// refused: the model was never trained that far.
pub fn perplexity_in_batches(
    model: &Model,
    ids: &[u32],
    w: Window,
    per_pass: usize,
    cancel: &AtomicBool,
) -> Result<Perplexity> {
    if ids.len() < 2 {
        return Err(EvalError::Input(format!("the text has {} token(s); perplexity needs at least 2", ids.len())));
    }
    let vocab = model.config().vocab_size;
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(EvalError::Input(format!(
            "token id {bad} is outside the model's vocabulary ({vocab}): tokenizer and model do not match"
        )));
    }
    let plan = windows(ids.len(), w);
    let positions = model.config().max_position_embeddings;
    if let Some(&(begin, end, _)) = plan.iter().find(|(begin, end, _)| end - begin > positions) {
        return Err(EvalError::InvalidSetting(format!(
            "a window of {} tokens is beyond the model's {positions} positions (max_position_embeddings); \
             use a context of {positions} or less",
            end - begin
        )));
    }
    let (mut total, mut scored) = (0.0f64, 0usize);
    let mut rest = plan.as_slice();
    while !rest.is_empty() {
        if cancel.load(Ordering::Relaxed) {
            return Err(EvalError::Interrupted);
        }
        let n = windows_in_pass(rest, per_pass, vocab);
        let (group, tail) = rest.split_at(n);
        rest = tail;
        for nll in window_nlls(model, ids, group)? {
            total += nll;
            scored += 1;
        }
    }
    let mean = total / scored as f64;
    Ok(Perplexity { tokens: ids.len(), scored, windows: plan.len(), window: w, mean_nll: mean, perplexity: mean.exp() })
}

/// How many of the next `windows` one pass takes: at most `per_pass`, and no more logits than
/// [`MAX_LOGITS_PER_PASS`] unless the first window alone needs more.
fn windows_in_pass(windows: &[(usize, usize, usize)], per_pass: usize, vocab: usize) -> usize {
    let mut rows = 0;
    let mut n = 0;
    for &(_, end, first) in windows.iter().take(per_pass.max(1)) {
        rows += end - first + 1;
        if n > 0 && rows * vocab > MAX_LOGITS_PER_PASS {
            break;
        }
        n += 1;
    }
    n
}

/// The negative log-likelihoods of the scored tokens of `windows`, read in one forward pass,
/// in order.
fn window_nlls(model: &Model, ids: &[u32], windows: &[(usize, usize, usize)]) -> Result<Vec<f64>> {
    let mut caches: Vec<KvCache> = windows.iter().map(|_| KvCache::new()).collect();
    // Rows first-1-begin .. end-1-begin predict tokens first..end.
    let mut inputs: Vec<SeqInput> = windows
        .iter()
        .zip(caches.iter_mut())
        .map(|(&(begin, end, first), cache)| SeqInput {
            tokens: &ids[begin..end],
            cache,
            logits: Logits::From(first - 1 - begin),
        })
        .collect();
    let logits = model.forward_batch(&mut inputs)?;
    let mut nlls = Vec::new();
    for (&(_, end, first), logits) in windows.iter().zip(logits) {
        let rows = logits.expect("scored rows were asked for").to_vec2::<f32>()?;
        nlls.extend(rows.iter().zip(&ids[first..end]).map(|(row, &target)| token_nll(row, target)));
    }
    Ok(nlls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_score_every_token_after_the_first_once() {
        for (n, c, s) in [(200, 200, 200), (200, 64, 32), (10, 4, 1), (10, 4, 3), (7, 10, 5), (2, 2, 1)] {
            let w = Window::new(c, s).unwrap();
            let plan = windows(n, w);
            let mut seen = vec![0; n];
            for &(b, e, f) in &plan {
                assert!(e - b <= c && b < f && f <= e, "{n} {c} {s}: {plan:?}");
                for x in &mut seen[f..e] {
                    *x += 1;
                }
            }
            assert_eq!(seen[0], 0);
            assert!(seen[1..].iter().all(|&x| x == 1), "{n} {c} {s}: {plan:?}");
        }
        // Disjoint chunks: the first token of each is not scored.
        let plan = windows(10, Window::new(4, 4).unwrap());
        assert_eq!(plan, vec![(0, 4, 1), (4, 8, 5), (8, 10, 9)]);
        // HF's guide: stride 512, context 1024 → windows start 0, 512, 1024...
        let plan = windows(2000, Window::new(1024, 512).unwrap());
        assert_eq!(plan, vec![(0, 1024, 1), (512, 1536, 1024), (1024, 2000, 1536)]);
    }

    #[test]
    fn nll_is_log_softmax() {
        let nll = token_nll(&[0.0, 0.0, 0.0, 0.0], 2);
        assert!((nll - 4f64.ln()).abs() < 1e-12);
        // Large logits do not overflow.
        let nll = token_nll(&[1000.0, 0.0], 0);
        assert!(nll.abs() < 1e-12);
        assert!(Window::new(10, 11).is_err() && Window::new(1, 1).is_err() && Window::new(10, 0).is_err());
    }
}
