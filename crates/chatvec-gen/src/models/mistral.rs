//! Mistral: `MistralForCausalLM`, a Llama layout with optional sliding-window attention.

use super::config::{common, Activation, DecoderConfig, Defaults, JsonConfig};
use crate::error::Result;

pub(crate) fn config(cfg: &JsonConfig) -> Result<DecoderConfig> {
    let mut c = common(
        cfg,
        Defaults {
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
            activation: Activation::Silu,
            tie_word_embeddings: false,
            max_position_embeddings: 4096 * 32,
        },
    )?;
    c.sliding_window = cfg.opt_usize("sliding_window")?;
    Ok(c)
}
