//! Choosing where and in which precision to compute.

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
