//! Generation for chatvec: load a merged model with candle, render its chat template, sample
//! with transformers' semantics and stream the answer.

pub mod error;
pub mod models;

pub use error::{GenError, Result};
pub use models::{Architecture, Model};
