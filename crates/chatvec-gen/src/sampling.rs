//! Next-token choice with transformers' semantics: repetition penalty, then temperature, top-k
//! and top-p (in that order), then a draw from a seeded generator; or argmax when greedy.

use crate::error::{GenError, Result};
use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256StarStar;

/// How to pick each token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 disables it.
    pub top_p: f64,
    /// Keep the k most likely tokens; `None` or 0 disables it.
    pub top_k: Option<usize>,
    /// transformers' `repetition_penalty` (1 disables it): logits of tokens already in the
    /// context are divided by it when positive and multiplied by it when negative.
    pub repetition_penalty: f64,
    /// Always take the most likely token.
    pub greedy: bool,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_p: 1.0, top_k: None, repetition_penalty: 1.0, greedy: false, seed: 0 }
    }
}

impl SamplingParams {
    /// Rejects values transformers would reject.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(GenError::InvalidArgument(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!("repetition_penalty must be > 0, got {}", self.repetition_penalty));
        }
        Ok(())
    }

    /// Whether tokens are chosen by argmax.
    pub fn is_greedy(&self) -> bool {
        self.greedy || self.temperature == 0.0
    }
}

/// transformers' `GenerationConfig` defaults for sampling, overridden by the model's
/// `generation_config.json`: `do_sample` false, temperature 1, top_p 1, top_k 50,
/// repetition_penalty 1.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationDefaults {
    /// Whether the model's authors sample (`do_sample`).
    pub do_sample: bool,
    /// `temperature`.
    pub temperature: f64,
    /// `top_p`.
    pub top_p: f64,
    /// `top_k` (None: off).
    pub top_k: Option<usize>,
    /// `repetition_penalty`.
    pub repetition_penalty: f64,
}

impl Default for GenerationDefaults {
    fn default() -> Self {
        GenerationDefaults { do_sample: false, temperature: 1.0, top_p: 1.0, top_k: Some(50), repetition_penalty: 1.0 }
    }
}

impl GenerationDefaults {
    /// Reads `dir/generation_config.json` if there is one.
    pub fn for_model(dir: &std::path::Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        let mut d = GenerationDefaults::default();
        if !path.is_file() {
            return Ok(d);
        }
        let text = chatvec_format::metadata::read_metadata(&path)?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| GenError::bad_file(&path, e.to_string()))?;
        let field = |k: &str| v.get(k).filter(|x| !x.is_null());
        let wrong = |k: &str, what: &str| {
            GenError::bad_file(
                &path,
                format!("`{k}` is {}, expected {what}", field(k).map(|x| x.to_string()).unwrap_or_default()),
            )
        };
        let num = |k: &str| field(k).map(|x| x.as_f64().ok_or_else(|| wrong(k, "a number"))).transpose();
        if let Some(b) = field("do_sample") {
            d.do_sample = b.as_bool().ok_or_else(|| wrong("do_sample", "true or false"))?;
        }
        d.temperature = num("temperature")?.unwrap_or(d.temperature);
        d.top_p = num("top_p")?.unwrap_or(d.top_p);
        if let Some(k) = field("top_k") {
            d.top_k = Some(k.as_u64().ok_or_else(|| wrong("top_k", "an integer >= 0"))? as usize).filter(|&k| k > 0);
        }
        d.repetition_penalty = num("repetition_penalty")?.unwrap_or(d.repetition_penalty);
        let as_params = SamplingParams {
            temperature: d.temperature,
            top_p: d.top_p,
            repetition_penalty: d.repetition_penalty,
            ..SamplingParams::default()
        };
        as_params.validate().map_err(|e| GenError::bad_file(&path, e.to_string()))?;
        Ok(d)
    }
}

/// A small, fast, seedable generator (rand_xoshiro's xoshiro256**, seeded through splitmix64 as
/// its authors recommend), so runs reproduce across platforms.
#[derive(Debug, Clone)]
pub struct Rng(Xoshiro256StarStar);

impl Rng {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(Xoshiro256StarStar::seed_from_u64(seed))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Applies transformers' `RepetitionPenaltyLogitsProcessor` to `logits` for each distinct id in
/// `context`.
pub fn apply_repetition_penalty(logits: &mut [f32], context: &[u32], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &id in context {
        let i = id as usize;
        if i < logits.len() && !seen[i] {
            seen[i] = true;
            let l = logits[i] as f64;
            logits[i] = if l < 0.0 { l * penalty } else { l / penalty } as f32;
        }
    }
}

/// The distribution sampling draws from: softmax(logits / temperature) restricted by top-k and
/// top-p and renormalised. Zero entries are filtered out.
pub fn probabilities(logits: &[f32], temperature: f64, top_k: Option<usize>, top_p: f64) -> Vec<f64> {
    let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / temperature).collect();
    let mut keep = vec![true; scaled.len()];
    if let Some(k) = top_k.filter(|&k| k > 0 && k < scaled.len()) {
        // Ties with the k-th value are kept, as `scores < topk(scores, k)[-1]` does. A
        // selection, not a sort: O(vocab) for a 128k vocabulary.
        let mut values = scaled.clone();
        let (_, &mut kth, _) = values.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        for (i, &s) in scaled.iter().enumerate() {
            keep[i] = s >= kth;
        }
    }
    let softmax = |keep: &[bool]| -> Vec<f64> {
        let max = scaled.iter().zip(keep).filter(|(_, &k)| k).map(|(&s, _)| s).fold(f64::NEG_INFINITY, f64::max);
        let mut p: Vec<f64> = scaled.iter().zip(keep).map(|(&s, &k)| if k { (s - max).exp() } else { 0.0 }).collect();
        let sum: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= sum);
        p
    };
    let mut probs = softmax(&keep);
    if top_p < 1.0 {
        // Keep the most likely tokens until their mass reaches top_p: a token stays when the
        // mass strictly before it (in descending order) is below top_p. This is transformers'
        // "drop where ascending cumsum <= 1 - top_p", and always keeps the top token.
        let mut order: Vec<usize> = (0..probs.len()).filter(|&i| keep[i]).collect();
        let head = nucleus_len(&mut order, &probs, top_p);
        for &i in &order[head..] {
            keep[i] = false;
        }
        probs = softmax(&keep);
    }
    probs
}

/// Reorders `order` so that it starts with the nucleus, most likely first (ties by lower id),
/// and returns the nucleus's length: tokens are kept while the mass before them is below
/// `top_p`. Sorts only a head of growing size (64, 128, ...) found by selection, so a 128k
/// vocabulary costs O(vocab) rather than a full sort.
fn nucleus_len(order: &mut [usize], probs: &[f64], top_p: f64) -> usize {
    let by_prob = |a: &usize, b: &usize| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b));
    let mut head = 64.min(order.len());
    loop {
        if head < order.len() {
            order.select_nth_unstable_by(head - 1, by_prob);
        }
        order[..head].sort_unstable_by(by_prob);
        let mut before = 0.0;
        for (n, &i) in order[..head].iter().enumerate() {
            if before >= top_p {
                return n;
            }
            before += probs[i];
        }
        if head == order.len() {
            return head;
        }
        head = (head * 2).min(order.len());
    }
}

/// Picks tokens according to [`SamplingParams`].
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    /// A sampler seeded with `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Sampler { rng: Rng::new(params.seed), params })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token from `logits` given the tokens so far (prompt and answer).
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> u32 {
        apply_repetition_penalty(logits, context, self.params.repetition_penalty);
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let probs = probabilities(logits, self.params.temperature, self.params.top_k, self.params.top_p);
        let mut r = self.rng.next_f64();
        let mut last = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                last = i;
                if r < p {
                    return i as u32;
                }
                r -= p;
            }
        }
        // Rounding left r just above the total mass: the last kept token.
        last as u32
    }
}

/// Index of the largest logit (the first one on ties, like torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator chatvec used before it took rand_xoshiro's, kept as the reference: the same
    /// seeds must give the same streams, or every recorded sampled output would change.
    fn xoshiro_reference(seed: u64, n: usize) -> Vec<u64> {
        let mut x = seed;
        let mut splitmix = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut s = [splitmix(), splitmix(), splitmix(), splitmix()];
        (0..n)
            .map(|_| {
                let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
                let t = s[1] << 17;
                s[2] ^= s[0];
                s[3] ^= s[1];
                s[1] ^= s[2];
                s[0] ^= s[3];
                s[2] ^= t;
                s[3] = s[3].rotate_left(45);
                result
            })
            .collect()
    }

    #[test]
    fn seeded_streams_are_the_ones_chatvec_always_gave() {
        for seed in [0, 1, 42, 299792458, u64::MAX] {
            let mut rng = Rng::new(seed);
            let got: Vec<u64> = (0..1000).map(|_| rng.next_u64()).collect();
            assert_eq!(got, xoshiro_reference(seed, 1000), "seed {seed}");
        }
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let logits = [2.0f32, 1.0, 0.0];
        let p1 = probabilities(&logits, 1.0, None, 1.0);
        let z: f64 = [2.0f64, 1.0, 0.0].iter().map(|x| x.exp()).sum();
        assert!(close(&p1, &[2f64.exp() / z, 1f64.exp() / z, 1.0 / z]));
        let cold = probabilities(&logits, 0.5, None, 1.0);
        let hot = probabilities(&logits, 2.0, None, 1.0);
        assert!(cold[0] > p1[0] && p1[0] > hot[0]);
        // T = 0.5 is softmax of doubled logits.
        let doubled = probabilities(&[4.0, 2.0, 0.0], 1.0, None, 1.0);
        assert!(close(&cold, &doubled));
    }

    #[test]
    fn top_p_keeps_the_smallest_head_reaching_the_mass() {
        // Probabilities 0.5, 0.3, 0.15, 0.05.
        let logits: Vec<f32> = [0.5f64, 0.3, 0.15, 0.05].iter().map(|p| p.ln() as f32).collect();
        let p = probabilities(&logits, 1.0, None, 0.7);
        assert!(close(&p, &[0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]), "{p:?}");
        let p = probabilities(&logits, 1.0, None, 0.81);
        assert!(p[2] > 0.0 && p[3] == 0.0, "{p:?}");
        // A tiny top_p still keeps the most likely token.
        let p = probabilities(&logits, 1.0, None, 0.01);
        assert!(close(&p, &[1.0, 0.0, 0.0, 0.0]), "{p:?}");
        // top_p applies to the tempered distribution: at T=0.1 token 0 alone exceeds 0.7.
        let p = probabilities(&logits, 0.1, None, 0.7);
        assert!(close(&p, &[1.0, 0.0, 0.0, 0.0]), "{p:?}");
    }

    #[test]
    fn top_k_keeps_k_and_ties() {
        let p = probabilities(&[3.0, 1.0, 2.0, 0.0], 1.0, Some(2), 1.0);
        assert!(p[0] > 0.0 && p[2] > 0.0 && p[1] == 0.0 && p[3] == 0.0);
        let p = probabilities(&[3.0, 2.0, 2.0, 0.0], 1.0, Some(2), 1.0);
        assert!(p[1] > 0.0 && p[2] > 0.0 && p[3] == 0.0);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut logits = [2.0f32, -2.0, 1.0];
        apply_repetition_penalty(&mut logits, &[0, 1, 1], 2.0);
        assert_eq!(logits, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn sampler_follows_the_distribution_and_the_seed() {
        let logits = [0.0f32, (3.0f64).ln() as f32]; // p = 0.25, 0.75
        let params = SamplingParams { seed: 5, ..SamplingParams::default() };
        let mut s = Sampler::new(params.clone()).unwrap();
        let draws: Vec<u32> = (0..20_000).map(|_| s.sample(&mut logits.clone(), &[])).collect();
        let ones = draws.iter().filter(|&&d| d == 1).count() as f64 / draws.len() as f64;
        assert!((ones - 0.75).abs() < 0.02, "{ones}");
        let mut again = Sampler::new(params).unwrap();
        let replay: Vec<u32> = (0..20_000).map(|_| again.sample(&mut logits.clone(), &[])).collect();
        assert_eq!(draws, replay);
    }

    #[test]
    fn greedy_and_zero_temperature_take_the_argmax() {
        let mut s = Sampler::new(SamplingParams { temperature: 0.0, ..SamplingParams::default() }).unwrap();
        assert_eq!(s.sample(&mut [0.1, 0.9, 0.5], &[]), 1);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }

    #[test]
    fn generation_config_overrides_transformers_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(GenerationDefaults::for_model(dir.path()).unwrap(), GenerationDefaults::default());
        assert_eq!(GenerationDefaults::default().top_k, Some(50));
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"do_sample": true, "temperature": 0.6, "top_p": 0.9, "top_k": 0, "eos_token_id": [1, 2]}"#,
        )
        .unwrap();
        let d = GenerationDefaults::for_model(dir.path()).unwrap();
        assert!(d.do_sample);
        assert_eq!((d.temperature, d.top_p, d.top_k, d.repetition_penalty), (0.6, 0.9, None, 1.0));
    }

    #[test]
    fn bad_generation_config_values_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        for (json, needle) in [
            (r#"{"temperature": -1}"#, "temperature must be >= 0"),
            (r#"{"temperature": "hot"}"#, "`temperature` is \"hot\", expected a number"),
            (r#"{"top_p": 0}"#, "top_p must be in (0, 1]"),
            (r#"{"top_k": -5}"#, "`top_k` is -5"),
            (r#"{"do_sample": 1}"#, "`do_sample` is 1"),
        ] {
            std::fs::write(dir.path().join("generation_config.json"), json).unwrap();
            let err = GenerationDefaults::for_model(dir.path()).unwrap_err().to_string();
            assert!(err.contains("generation_config.json") && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        for params in [
            SamplingParams { temperature: -1.0, ..SamplingParams::default() },
            SamplingParams { top_p: 0.0, ..SamplingParams::default() },
            SamplingParams { top_p: 1.5, ..SamplingParams::default() },
            SamplingParams { repetition_penalty: 0.0, ..SamplingParams::default() },
        ] {
            assert!(Sampler::new(params).is_err());
        }
    }
}
