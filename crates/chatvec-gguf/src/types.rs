//! Output types: the ggml element types a tensor can be stored in, the `--type` a user asks for
//! (llama.cpp's "file type"), which tensor gets which element type, and the encoding of f32 rows.
//!
//! q8_0 blocks come from `chatvec_format::q8_0`, k-quant blocks from candle's quantizers
//! (`candle_core::quantized`); both follow ggml's reference `quantize_row_*` code.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use chatvec_format::{Error, Result, SimdTier};

use crate::encode;

/// A ggml element type chatvec writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// f32.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 32-element blocks: f16 scale + 32 × i8.
    Q8_0,
    /// 32-element blocks, 5 bits.
    Q5_0,
    /// 32-element blocks, 5 bits with min.
    Q5_1,
    /// 256-element super-blocks, 4 bits.
    Q4K,
    /// 256-element super-blocks, 5 bits.
    Q5K,
    /// 256-element super-blocks, 6 bits.
    Q6K,
}

impl GgmlType {
    /// The id in GGUF tensor infos (`enum ggml_type`).
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    fn candle(self) -> GgmlDType {
        match self {
            GgmlType::F32 => GgmlDType::F32,
            GgmlType::F16 => GgmlDType::F16,
            GgmlType::BF16 => GgmlDType::BF16,
            GgmlType::Q8_0 => GgmlDType::Q8_0,
            GgmlType::Q5_0 => GgmlDType::Q5_0,
            GgmlType::Q5_1 => GgmlDType::Q5_1,
            GgmlType::Q4K => GgmlDType::Q4K,
            GgmlType::Q5K => GgmlDType::Q5K,
            GgmlType::Q6K => GgmlDType::Q6K,
        }
    }

    /// Elements per block (1 for plain floats).
    pub fn block_size(self) -> usize {
        self.candle().block_size()
    }

    /// Bytes of `numel` elements (a multiple of the block size).
    pub fn bytes(self, numel: usize) -> u64 {
        (numel / self.block_size() * self.candle().type_size()) as u64
    }

    /// Whether rows of `cols` elements can be stored in this type.
    pub fn fits_row(self, cols: usize) -> bool {
        cols.is_multiple_of(self.block_size())
    }

    /// The quantizer's refusal of values for this type.
    fn quantize_error(self, e: candle_core::Error) -> Error {
        Error::Quantize { to: format!("{self:?}"), source: Box::new(e) }
    }

    /// Appends `values` (whole rows of `cols` elements) encoded in this type to `out`.
    pub fn encode(self, values: &[f32], cols: usize, out: &mut Vec<u8>) -> Result<()> {
        match self {
            GgmlType::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
            GgmlType::F16 => encode::encode_f16(SimdTier::active(), values, out),
            GgmlType::BF16 => encode::encode_bf16(SimdTier::active(), values, out),
            GgmlType::Q8_0 => encode::encode_q8_0(SimdTier::active(), values, out),
            _ => {
                let rows = values.len() / cols.max(1);
                let q = Tensor::from_slice(values, (rows, cols), &Device::Cpu)
                    .and_then(|t| QTensor::quantize(&t, self.candle()))
                    .map_err(|e| self.quantize_error(e))?;
                out.extend_from_slice(&q.data().map_err(|e| self.quantize_error(e))?);
            }
        }
        Ok(())
    }
}

/// What `--type` asks for: one type for every weight matrix, or one of llama.cpp's k-quant mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    /// Everything f32.
    F32,
    /// Matrices f16, vectors f32 (the converter's `--outtype f16`).
    F16,
    /// Matrices bf16, vectors f32.
    BF16,
    /// Matrices q8_0.
    Q8_0,
    /// llama-quantize's Q4_K_M mix: q4_k, with q6_k for `output` and some `attn_v` / `ffn_down`.
    Q4KM,
    /// llama-quantize's Q5_K_M mix: q5_k, with q6_k where Q4_K_M has it.
    Q5KM,
    /// Matrices q6_k.
    Q6K,
}

impl FileType {
    /// Every accepted `--type` name.
    pub const NAMES: &'static [&'static str] = &["f32", "f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k"];

    /// Parses a `--type` name.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => FileType::F32,
            "f16" => FileType::F16,
            "bf16" => FileType::BF16,
            "q8_0" => FileType::Q8_0,
            "q4_k_m" => FileType::Q4KM,
            "q5_k_m" => FileType::Q5KM,
            "q6_k" => FileType::Q6K,
            other => {
                let (name, known) = (other.to_string(), Self::NAMES.join(", "));
                return Err(Error::UnknownName { what: "GGUF type", name, known });
            }
        })
    }

    /// `general.file_type` (`enum llama_ftype`).
    pub fn id(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q8_0 => 7,
            FileType::Q4KM => 15,
            FileType::Q5KM => 17,
            FileType::Q6K => 18,
            FileType::BF16 => 32,
        }
    }

    /// Whether this is a llama-quantize type (k-quants), not one the converter writes.
    pub fn is_k_quant(self) -> bool {
        matches!(self, FileType::Q4KM | FileType::Q5KM | FileType::Q6K)
    }
}

/// Where a tensor sits in the model, for the k-quant mixes' per-layer rules.
#[derive(Debug, Clone, Copy)]
pub struct Role<'a> {
    /// The GGUF name.
    pub name: &'a str,
    /// The layer index, if any.
    pub layer: Option<usize>,
    /// Number of layers.
    pub n_layers: usize,
    /// Whether the model has no `output.weight` (the embedding doubles as the output layer).
    pub tied: bool,
}

/// llama-quantize's `use_more_bits`: the first and last eighth of the layers and every third between.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The element type of a tensor of `shape` with role `role` under `ftype`, following the converter
/// (vectors and norms stay f32; a matrix whose rows do not fit the blocks falls back to f16) and,
/// for k-quants, llama-quantize's mix (q6_k for `output`, or the embedding when it is tied, more bits for some `attn_v`/`ffn_down`,
/// and its fallbacks q4_k→q5_0, q5_k→q5_1, q6_k→q8_0 when rows are not a multiple of 256).
pub fn tensor_type(ftype: FileType, shape: &[usize], role: Role) -> GgmlType {
    if shape.len() <= 1 || role.name.ends_with("_norm.weight") || !role.name.ends_with(".weight") {
        return GgmlType::F32;
    }
    let cols = *shape.last().expect("2-D");
    let wanted = match ftype {
        FileType::F32 => return GgmlType::F32,
        FileType::F16 => return GgmlType::F16,
        FileType::BF16 => return GgmlType::BF16,
        FileType::Q8_0 => GgmlType::Q8_0,
        FileType::Q6K => GgmlType::Q6K,
        FileType::Q4KM | FileType::Q5KM => {
            let base = if ftype == FileType::Q4KM { GgmlType::Q4K } else { GgmlType::Q5K };
            let more = role.layer.is_some_and(|i| use_more_bits(i, role.n_layers));
            let is = |s: &str| role.name.contains(s);
            let output = role.name == "output.weight" || (role.tied && role.name == "token_embd.weight");
            if output || ((is(".attn_v.") || is(".ffn_down.")) && more) {
                GgmlType::Q6K
            } else {
                base
            }
        }
    };
    if wanted.fits_row(cols) {
        return wanted;
    }
    let fallback = match wanted {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if fallback.fits_row(cols) {
        fallback
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    fn role(name: &str) -> Role<'_> {
        Role { name, layer: Some(0), n_layers: 16, tied: false }
    }

    #[test]
    fn vectors_and_norms_stay_f32_and_odd_rows_fall_back() {
        assert_eq!(tensor_type(FileType::Q8_0, &[64], role("blk.0.attn_norm.weight")), GgmlType::F32);
        assert_eq!(tensor_type(FileType::F16, &[64, 64], role("blk.0.attn_q.weight")), GgmlType::F16);
        assert_eq!(tensor_type(FileType::Q8_0, &[32, 48], role("blk.0.ffn_down.weight")), GgmlType::F16);
        assert_eq!(tensor_type(FileType::Q4KM, &[64, 512], role("blk.1.attn_q.weight")), GgmlType::Q4K);
        assert_eq!(tensor_type(FileType::Q4KM, &[64, 512], role("output.weight")), GgmlType::Q6K);
        assert_eq!(tensor_type(FileType::Q4KM, &[64, 64], role("blk.1.attn_q.weight")), GgmlType::Q5_0);
    }

    #[test]
    fn q8_0_blocks_hold_a_scale_and_rounded_quotients() {
        let row: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        let mut out = vec![];
        GgmlType::Q8_0.encode(&row, 32, &mut out).unwrap();
        assert_eq!(out.len() as u64, GgmlType::Q8_0.bytes(32));
        let d = f16::from_le_bytes([out[0], out[1]]).to_f32();
        assert!((d - 16.0 / 127.0).abs() < 1e-4);
        assert_eq!(out[2] as i8, -127);
    }
}
