//! Choosing where and in which precision to compute.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use crate::error::{GenError, Result};

/// `cpu`, `cuda` or `cuda:N`. CUDA needs the crate's `cuda` feature.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => Err(GenError::InvalidArgument(format!("device `{spec}`: expected cpu, cuda or cuda:N"))),
        },
    }
}

fn cuda(ordinal: usize) -> Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        return Err(GenError::InvalidArgument(
            "this chatvec was built without CUDA (rebuild with --features cuda)".into(),
        ));
    }
    Ok(Device::new_cuda(ordinal)?)
}

/// `f32`, `bf16` or `f16` (also `float32`, `bfloat16`, `float16`).
pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        _ => Err(GenError::InvalidArgument(format!("dtype `{spec}`: expected f32, bf16 or f16"))),
    }
}

/// The compute dtype for `device`: the requested one, else f32 on CPU and bf16 on CUDA.
/// bf16 on CPU is replaced by f32 (with a note to print) because candle has no bf16 matmul on
/// CPU and converts on every call, about ten times slower.
pub fn resolve_dtype(requested: Option<DType>, device: &Device) -> (DType, Option<String>) {
    match (requested, device.is_cpu()) {
        (Some(DType::BF16), true) => (DType::F32, Some("bf16 has no fast matmul on CPU; computing in f32".to_string())),
        (Some(d), _) => (d, None),
        (None, true) => (DType::F32, None),
        (None, false) => (DType::BF16, None),
    }
}

/// How the weights of linear layers are held in memory (`--quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// Dense in the compute dtype (f32 on CPU: the exact path; bf16 on CUDA).
    Dense,
    /// A ggml format: quantized (q8_0, q4_k, q4_0) or kept in half precision (bf16, f16), and
    /// multiplied by candle's quantized kernels.
    Ggml(GgmlDType),
}

/// The `--quantize` values, for help and error messages.
pub const WEIGHT_FORMATS: &str = "q8_0, q4_k, q4_0, bf16, f16, none";

impl WeightFormat {
    /// Parses `q8_0`, `q4_k`, `q4_0`, `bf16`, `f16` or `none` (dense in the compute dtype).
    pub fn parse(spec: &str) -> Result<Self> {
        Ok(match spec.to_ascii_lowercase().as_str() {
            "none" | "f32" | "dense" => WeightFormat::Dense,
            "q8_0" => WeightFormat::Ggml(GgmlDType::Q8_0),
            "q4_k" | "q4_k_m" => WeightFormat::Ggml(GgmlDType::Q4K),
            "q4_0" => WeightFormat::Ggml(GgmlDType::Q4_0),
            "bf16" => WeightFormat::Ggml(GgmlDType::BF16),
            "f16" => WeightFormat::Ggml(GgmlDType::F16),
            _ => {
                return Err(GenError::InvalidArgument(format!("--quantize `{spec}`: expected one of {WEIGHT_FORMATS}")))
            }
        })
    }

    /// The default for `device`: q8_0 on CPU (an 8B model in about 9 GB, decoded at
    /// memory-bandwidth speed; perplexity within a fraction of a percent of f32), dense bf16
    /// elsewhere (GPUs have fast bf16 matmuls and the memory for it).
    pub fn default_for(device: &Device) -> Self {
        if device.is_cpu() {
            WeightFormat::Ggml(GgmlDType::Q8_0)
        } else {
            WeightFormat::Dense
        }
    }

    /// The ggml dtype, if any.
    pub fn ggml(self) -> Option<GgmlDType> {
        match self {
            WeightFormat::Dense => None,
            WeightFormat::Ggml(d) => Some(d),
        }
    }

    /// Bytes per weight of a linear layer when computing in `dtype`.
    pub fn bytes_per_weight(self, dtype: DType) -> f64 {
        match self {
            WeightFormat::Dense => dtype.size_in_bytes() as f64,
            WeightFormat::Ggml(d) => d.type_size() as f64 / d.block_size() as f64,
        }
    }

    /// The name `--quantize` takes, with the compute dtype for dense weights.
    pub fn describe(self, dtype: DType) -> String {
        match self {
            WeightFormat::Dense => format!("{dtype:?}").to_lowercase(),
            WeightFormat::Ggml(d) => ggml_name(d),
        }
    }
}

/// llama.cpp's name for a ggml dtype (`q8_0`, `q4_k`, `bf16`).
pub fn ggml_name(d: GgmlDType) -> String {
    match d {
        GgmlDType::Q2K => "q2_k".into(),
        GgmlDType::Q3K => "q3_k".into(),
        GgmlDType::Q4K => "q4_k".into(),
        GgmlDType::Q5K => "q5_k".into(),
        GgmlDType::Q6K => "q6_k".into(),
        GgmlDType::Q8K => "q8_k".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}
