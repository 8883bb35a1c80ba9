//! Rotary position embeddings, computed as transformers does: inverse frequencies and their
//! products with positions in float32, so cos/sin match bit for bit where libm allows.

use std::f32::consts::PI;

use candle_core::{DType, Device, Tensor};

use super::config::{RopeConfig, RopeScaling};
use crate::error::Result;

/// Inverse frequencies for one head.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// Frequencies for `head_dim`, rescaled as the config's `rope_type` asks.
    pub fn new(cfg: &RopeConfig, head_dim: usize) -> Self {
        let base = cfg.theta as f32;
        let default = (0..head_dim).step_by(2).map(|i| 1.0 / base.powf(i as f32 / head_dim as f32));
        let inv_freq = match cfg.scaling {
            RopeScaling::Default => default.collect(),
            RopeScaling::Linear { factor } => default.map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let (factor, low, high, old) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                    original_max_position_embeddings as f32,
                );
                let low_freq_wavelen = old / low;
                let high_freq_wavelen = old / high;
                default
                    .map(|freq| {
                        let wavelen = 2.0 * PI / freq;
                        if wavelen < high_freq_wavelen {
                            freq
                        } else if wavelen > low_freq_wavelen {
                            freq / factor
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * freq / factor + smooth * freq
                        }
                    })
                    .collect()
            }
        };
        Rope { inv_freq }
    }

    /// cos and sin tables of shape `(len, head_dim / 2)` for positions `start..start + len`.
    pub fn tables(&self, start: usize, len: usize, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in start..start + len {
            for &f in &self.inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (len, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (len, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// The inverse frequencies (for tests).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }
}
