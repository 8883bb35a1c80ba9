//! Llama family (Llama 2/3/3.1, SOLAR/EEVE-style depth-upscaled variants): `LlamaForCausalLM`.

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
            max_position_embeddings: 2048,
        },
    )?;
    let attention_bias = cfg.opt_bool("attention_bias")?.unwrap_or(false);
    c.qkv_bias = attention_bias;
    c.o_bias = attention_bias;
    c.mlp_bias = cfg.opt_bool("mlp_bias")?.unwrap_or(false);
    Ok(c)
}
