//! chatvec-merge: the chat-vector arithmetic, streamed tensor by tensor in constant memory.
//!
//! [`kernel`] holds the paper's formula and the merge rules; [`plan`] decides what happens to
//! each tensor; the executor streams blocks through the one-pass kernels into a
//! [`chatvec_format::TensorSink`]; [`ops`] ties them together as `merge`, `extract` and `apply`.

#![deny(missing_docs)]

pub mod error;
mod exec;
mod f32_lanes;
pub mod kernel;
mod one_pass;
pub mod ops;
pub mod plan;

pub use chatvec_format::{NoProgress, Progress, ResolvedModel};
pub use error::{Error, Result};
pub use ops::{prepare_merge, ApplyJob, ExtractJob, MergeJob, OutputOptions, PreparedMerge, Summary};
pub use plan::{PlanOptions, Selection};
