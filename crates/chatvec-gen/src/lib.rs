//! Generation for chatvec: load a merged model with candle, render its chat template, sample
//! with transformers' semantics and stream the answer.
//!
//! The pieces, in the order a chat uses them: [`Model::load`], [`ModelTokenizer::load`],
//! [`ChatTemplate::for_model`], [`StopSet::for_model`], then [`generate`] with a token callback
//! that feeds a [`TextStream`].

#![deny(missing_docs)]

pub mod alloc;
pub mod batch;
pub mod device;
pub mod error;
pub mod generate;
pub mod gguf_tokenizer;
pub mod memory;
pub mod models;
pub mod sampling;
pub mod session;
pub mod stops;
pub mod template;
pub mod tokenizer;

pub use batch::{Batch, SeqEvent, SeqId, SeqOutput, SeqRequest, TokenLogprob};
pub use candle_core::{DType, Device};
pub use device::{parse_device, parse_dtype, resolve_dtype, WeightFormat};
pub use error::{GenError, Result};
pub use generate::{generate, GenerationConfig, GenerationOutput, StopReason};
pub use models::{Architecture, Model, ModelOptions};
pub use sampling::{GenerationDefaults, Sampler, SamplingParams};
pub use session::{ChatModel, LoadOptions};
pub use stops::StopSet;
pub use template::{ChatTemplate, Message};
pub use tokenizer::{ModelTokenizer, TextStream, TokenizerConfig};
