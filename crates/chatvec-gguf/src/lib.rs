//! chatvec-gguf: Hugging Face checkpoints and chatvec merges as GGUF files for llama.cpp and
//! ollama, written in one streaming pass with the bytes llama.cpp's `convert_hf_to_gguf.py` writes.
//!
//! [`plan`] decides the whole file from shapes and config (metadata, tensor names, types,
//! offsets); [`encode`] turns each tensor's source bytes into GGUF bytes chunk by chunk;
//! [`export`] reads a checkpoint; [`sink`] takes a merge's output blocks instead.

#![deny(missing_docs)]

pub mod arch;
pub mod encode;
pub mod export;
pub mod format;
pub mod general;
pub mod hf_spm;
pub mod output;
pub mod plan;
mod pre_hashes;
pub mod pretok;
pub mod read;
pub mod sink;
pub mod spm;
pub mod stored;
pub mod types;
pub mod vocab;

pub use export::{export, ExportSummary};
pub use types::FileType;
