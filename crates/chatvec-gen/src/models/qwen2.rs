//! Qwen2 / Qwen2.5: `Qwen2ForCausalLM`, a Llama layout with q/k/v biases and often tied embeddings.

use super::config::{common, Activation, DecoderConfig, Defaults, JsonConfig};
use crate::error::{GenError, Result};

pub(crate) fn config(cfg: &JsonConfig) -> Result<DecoderConfig> {
    let mut c = common(
        cfg,
        Defaults {
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
            activation: Activation::Silu,
            tie_word_embeddings: false,
            max_position_embeddings: 32_768,
        },
    )?;
    c.qkv_bias = true;
    // Released Qwen2 checkpoints ship with use_sliding_window=false; the per-layer window
    // schedule of the other setting is not implemented, so refuse it rather than diverge.
    if cfg.opt_bool("use_sliding_window")?.unwrap_or(false) {
        return Err(GenError::UnsupportedConfig {
            path: cfg.path.to_path_buf(),
            message: "use_sliding_window=true is not supported for qwen2".into(),
        });
    }
    Ok(c)
}
