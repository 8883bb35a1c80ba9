//! chatvec-format: Hugging Face checkpoints on disk, read and written in constant memory.
//!
//! [`Checkpoint`] opens a model directory (safetensors, sharded or not, or PyTorch `.bin` through
//! chatvec-pickle) for streaming reads; [`dtype`] converts the stored floats exactly;
//! [`ModelConfig`] is the one interpreter of `config.json` spellings; [`writer`] writes sharded
//! safetensors into a temporary directory that becomes the output only when complete;
//! [`modelfiles`] copies and reads the files around the weights (tokenizer, chat template,
//! generation config); [`simd`] picks the instruction-set tier every hot loop runs at, and
//! [`q8_0`] holds ggml's q8_0 block rule. Everything here is what merging, exporting and
//! generating share.

#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod dtype;
pub mod error;
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
pub mod metadata;
pub mod modelfiles;
pub mod progress;
pub mod q8_0;
pub mod reader;
pub mod resolved;
pub mod simd;
pub mod swapped;
#[doc(hidden)]
pub mod testing;
pub mod writer;

pub use checkpoint::{resolve_shard, Checkpoint, TensorEntry, WeightFormat};
pub use config::ModelConfig;
pub use dtype::DType;
pub use error::{Error, OutputPathProblem, Result, WeightMapProblem};
pub use progress::{NoProgress, Progress};
pub use resolved::ResolvedModel;
pub use simd::SimdTier;
pub use writer::TensorSink;
