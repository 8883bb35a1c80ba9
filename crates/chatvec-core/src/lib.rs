//! chatvec-core: streaming chat-vector arithmetic over Hugging Face checkpoints.
//!
//! [`Checkpoint`] opens a model directory for streaming reads; [`plan`] decides what happens to
//! each tensor; [`kernel`] holds the merge rules; [`writer`] writes sharded safetensors into a
//! temporary directory that becomes the output only when complete; [`ops`] ties them together as
//! `merge`, `extract` and `apply`.

#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod dtype;
pub mod error;
mod exec;
mod f32_lanes;
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod kernel;
pub mod modelfiles;
pub mod ops;
pub mod plan;
pub mod q8_0;
pub mod reader;
pub mod simd;
pub mod swapped;
pub mod writer;

pub use checkpoint::{resolve_shard, Checkpoint, TensorEntry, WeightFormat};
pub use config::ModelConfig;
pub use dtype::DType;
pub use error::{Error, Result};
pub use exec::{NoProgress, Progress};
pub use hub::{resolve_model, Hub, HubId, ResolvedModel};
pub use ops::{prepare_merge, ApplyJob, ExtractJob, MergeJob, OutputOptions, PreparedMerge, Summary};
pub use plan::{PlanOptions, Selection};
pub use simd::SimdTier;
pub use writer::TensorSink;
