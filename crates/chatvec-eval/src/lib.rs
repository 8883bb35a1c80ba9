//! chatvec-eval: judging chat-vector merges on one machine with local, repeatable numbers.
//!
//! [`inspect`] measures what a vector changes, streaming like the merge; [`perplexity`] scores
//! target-language text; [`chat_eval`] runs a Korean prompt set and computes the [`metrics`]
//! (on a local model, or through an OpenAI-compatible server: [`endpoint`]);
//! [`plots`] draws the heatmap and sweep plot; [`report`] writes one self-contained HTML file;
//! [`sweep`] merges at several ratios and picks the best by a stated rule.
#![deny(missing_docs)]

pub use error::EvalError;

pub mod chat_eval;
pub mod endpoint;
pub mod error;
pub mod inspect;
pub mod metrics;
pub mod modules;
pub mod perplexity;
pub mod plots;
pub mod report;
pub mod sweep;
