//! The merge rules, element by element, in float64. Everything around them (streaming, sharding,
//! rounding to the output dtype) lives elsewhere so the arithmetic can be checked against the paper
//! at a glance.

/// The chat-vector rule (Huang et al., arXiv 2310.04799): `T + r·(C − B)`.
#[inline]
pub fn chat_vector(target: f64, chat: f64, base: f64, ratio: f64) -> f64 {
    target + ratio * (chat - base)
}

/// Feature-porter weight of one element: `sigmoid(steepness·a − shift)`, where `a` is
/// `|T − B|` min-max normalised over the tensor to [0, 1].
#[inline]
pub fn porter_weight(a: f64, steepness: f64, shift: f64) -> f64 {
    1.0 / (1.0 + (-(steepness * a - shift)).exp())
}

/// The feature-porter rule: `T + r·(C − B)·(1 − w)`, so elements the target moved far from the
/// base (large `w`) keep the target's value.
#[inline]
pub fn feature_porter(target: f64, chat: f64, base: f64, ratio: f64, w: f64) -> f64 {
    target + ratio * (chat - base) * (1.0 - w)
}

/// Parameters of the feature-porter method.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PorterParams {
    /// Sigmoid steepness (12 by default).
    pub steepness: f64,
    /// Sigmoid shift (6 by default).
    pub shift: f64,
}

impl Default for PorterParams {
    fn default() -> Self {
        PorterParams { steepness: 12.0, shift: 6.0 }
    }
}

/// The per-tensor normalisation of `|T − B|` used by feature-porter.
#[derive(Debug, Clone, Copy)]
pub struct PorterRange {
    /// Smallest `|T − B|` of the tensor.
    pub min: f64,
    /// Largest `|T − B|` of the tensor.
    pub max: f64,
}

impl PorterRange {
    /// The weight of an element with target `t` and base `b`; 0 for a tensor whose `|T − B|` is
    /// flat (max − min < 1e-6), where normalising would divide by nothing.
    #[inline]
    pub fn weight(&self, t: f64, b: f64, p: &PorterParams) -> f64 {
        let span = self.max - self.min;
        if span < 1e-6 {
            return 0.0;
        }
        porter_weight(((t - b).abs() - self.min) / span, p.steepness, p.shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_vector_is_target_plus_scaled_difference() {
        assert_eq!(chat_vector(1.0, 3.0, 2.0, 0.5), 1.5);
        assert_eq!(chat_vector(1.0, 2.0, 2.0, 1.0), 1.0);
    }

    #[test]
    fn porter_keeps_target_where_it_moved_most() {
        let p = PorterParams::default();
        let r = PorterRange { min: 0.0, max: 1.0 };
        // Far-moved element: w ≈ sigmoid(6) ≈ 0.9975, so almost no vector is added.
        let w = r.weight(1.0, 0.0, &p);
        assert!((w - 1.0 / (1.0 + (-6f64).exp())).abs() < 1e-15);
        // Unmoved element: w = sigmoid(-6) ≈ 0.0025, so nearly the whole vector is added.
        assert!(r.weight(0.0, 0.0, &p) < 0.003);
        let flat = PorterRange { min: 0.5, max: 0.5 };
        assert_eq!(flat.weight(1.0, 0.5, &p), 0.0);
        assert_eq!(feature_porter(1.0, 3.0, 2.0, 1.0, 0.0), chat_vector(1.0, 3.0, 2.0, 1.0));
    }
}
