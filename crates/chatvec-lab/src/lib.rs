//! A miniature of the chat-vector paper (Huang et al., arXiv 2310.04799), trained by chatvec
//! itself on CPU: an English base, its English chat fine-tune, a Korean continual pre-training
//! of the base, and their merges, evaluated on Korean-content dialogs and Korean prose.
//!
//! [`data`] makes the corpora and dialogs, [`model`] is the trainable Llama and its checkpoint
//! files, [`train`] the three stages, [`eval`] the merges and metrics, [`report`] the table
//! and plot.

#![deny(missing_docs)]

pub mod data;
pub mod error;
pub mod eval;
pub mod kernels;
pub mod model;
pub mod report;
pub mod train;

pub use error::{Error, Result};
