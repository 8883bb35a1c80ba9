//! The ggml element types a GGUF tensor can be stored in, as the reader sees them: which chatvec
//! runs (through candle's quantized kernels) and the names of those it refuses.

use candle_core::quantized::GgmlDType;

/// A ggml type chatvec can run: its id, llama.cpp's name and candle's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredType {
    /// The id in the tensor info (`enum ggml_type`).
    pub id: u32,
    /// llama.cpp's name (`ggml_type_name`), e.g. `Q4_K`.
    pub name: &'static str,
    /// candle's type, for dequantizing and quantized matmuls.
    pub candle: GgmlDType,
}

/// Every type chatvec runs: the float types and the legacy and k-quant blocks of issue 24.
const RUNNABLE: [(u32, &str, GgmlDType); 13] = [
    (0, "F32", GgmlDType::F32),
    (1, "F16", GgmlDType::F16),
    (2, "Q4_0", GgmlDType::Q4_0),
    (3, "Q4_1", GgmlDType::Q4_1),
    (6, "Q5_0", GgmlDType::Q5_0),
    (7, "Q5_1", GgmlDType::Q5_1),
    (8, "Q8_0", GgmlDType::Q8_0),
    (10, "Q2_K", GgmlDType::Q2K),
    (11, "Q3_K", GgmlDType::Q3K),
    (12, "Q4_K", GgmlDType::Q4K),
    (13, "Q5_K", GgmlDType::Q5K),
    (14, "Q6_K", GgmlDType::Q6K),
    (30, "BF16", GgmlDType::BF16),
];

/// Types llama.cpp knows that chatvec does not run (ids from ggml.h).
const REFUSED: [(u32, &str); 19] = [
    (9, "Q8_1"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

/// Why a type id cannot be run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRunnable {
    /// A type llama.cpp has and chatvec does not run.
    Refused(&'static str),
    /// An id no ggml version defines.
    Unknown(u32),
}

impl StoredType {
    /// The type with id `id`.
    pub fn from_id(id: u32) -> Result<Self, NotRunnable> {
        if let Some(&(id, name, candle)) = RUNNABLE.iter().find(|t| t.0 == id) {
            return Ok(StoredType { id, name, candle });
        }
        match REFUSED.iter().find(|t| t.0 == id) {
            Some(&(_, name)) => Err(NotRunnable::Refused(name)),
            None => Err(NotRunnable::Unknown(id)),
        }
    }

    /// Elements per block (1 for the float types).
    pub fn block_elements(self) -> u64 {
        self.candle.block_size() as u64
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        self.candle.type_size() as u64
    }

    /// The names of the runnable types, for messages.
    pub fn runnable_names() -> String {
        RUNNABLE.iter().map(|t| t.1).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_geometry_is_ggmls() {
        let q4k = StoredType::from_id(12).unwrap();
        assert_eq!((q4k.name, q4k.block_elements(), q4k.block_bytes()), ("Q4_K", 256, 144));
        let q8 = StoredType::from_id(8).unwrap();
        assert_eq!((q8.block_elements(), q8.block_bytes()), (32, 34));
        assert_eq!(StoredType::from_id(16), Err(NotRunnable::Refused("IQ2_XXS")));
        assert_eq!(StoredType::from_id(99), Err(NotRunnable::Unknown(99)));
    }
}
