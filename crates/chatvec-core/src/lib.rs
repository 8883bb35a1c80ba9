//! chatvec-core: streaming chat-vector arithmetic over Hugging Face checkpoints.

pub mod dtype;
pub mod error;
pub mod hub;

pub use dtype::DType;
pub use error::{Error, Result};
pub use hub::{resolve_model, ResolvedModel};
