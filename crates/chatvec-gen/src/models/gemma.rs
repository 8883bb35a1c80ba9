//! Gemma (first generation): `GemmaForCausalLM`. Differs from Llama by scaled embeddings,
//! RMSNorm with `(1 + weight)`, tanh-GELU and tied embeddings.

use super::config::{common, Activation, DecoderConfig, Defaults, JsonConfig};
use crate::error::Result;

pub(crate) fn config(cfg: &JsonConfig) -> Result<DecoderConfig> {
    let mut c = common(
        cfg,
        Defaults {
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
            activation: Activation::GeluTanh,
            tie_word_embeddings: true,
            max_position_embeddings: 8192,
        },
    )?;
    // transformers ignores Gemma's legacy `hidden_act: "gelu"` and uses the tanh approximation
    // unless `hidden_activation` says otherwise.
    if cfg.opt_str("hidden_activation").is_none() {
        c.activation = Activation::GeluTanh;
    }
    c.scale_embeddings = true;
    c.norm_weight_offset = 1.0;
    Ok(c)
}
