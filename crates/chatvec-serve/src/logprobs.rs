//! Log-probabilities from logits, as the OpenAI API reports them: of the raw model
//! distribution (before temperature, top-p or penalties), with the most likely alternatives.

use crate::batch::TokenLogprob;

/// `log_softmax(logits)`, accumulated in f64 so a 128k vocabulary loses no precision.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    logits.iter().map(|&x| (x as f64 - log_z) as f32).collect()
}

/// `token`'s entry of `log_probs`, with the `top` most likely tokens (ties by lower id).
pub fn token_logprob(log_probs: &[f32], token: u32, top: usize) -> TokenLogprob {
    let logprob = log_probs.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY);
    TokenLogprob { token, logprob, top: top_tokens(log_probs, top) }
}

/// The `k` largest entries, largest first: a selection, then a sort of the head only.
fn top_tokens(log_probs: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(log_probs.len());
    if k == 0 {
        return Vec::new();
    }
    let by_value = |a: &u32, b: &u32| log_probs[*b as usize].total_cmp(&log_probs[*a as usize]).then(a.cmp(b));
    let mut ids: Vec<u32> = (0..log_probs.len() as u32).collect();
    if k < ids.len() {
        ids.select_nth_unstable_by(k - 1, by_value);
        ids.truncate(k);
    }
    ids.sort_unstable_by(by_value);
    ids.into_iter().map(|i| (i, log_probs[i as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_the_closed_form() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        for (x, l) in [1.0f64, 2.0, 3.0].iter().zip(&lp) {
            assert!((*l as f64 - (x - z)).abs() < 1e-6);
        }
        let total: f64 = lp.iter().map(|&l| (l as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn top_tokens_are_the_largest_in_order_with_ties_by_id() {
        let t = token_logprob(&[-3.0, -1.0, -2.0, -1.0, -5.0], 4, 3);
        assert_eq!(t.logprob, -5.0);
        assert_eq!(t.top, vec![(1, -1.0), (3, -1.0), (2, -2.0)]);
        assert!(token_logprob(&[-1.0], 0, 0).top.is_empty());
        assert_eq!(token_logprob(&[-1.0, -2.0], 0, 20).top.len(), 2);
    }
}
