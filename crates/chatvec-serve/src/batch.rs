//! The decode loop the engine drives: [`chatvec_gen::Batch`] (continuous batching: sequences
//! join and leave between steps, all running ones decoded in one forward per step), behind a
//! small trait so the engine can be tested without a model.

pub use chatvec_gen::batch::{Batch, SeqEvent, SeqId, SeqRequest, TokenLogprob};
use chatvec_gen::GenError;

/// A decode loop over many sequences.
pub trait SequenceBatch: Send + 'static {
    /// Adds a sequence; it joins at the next step.
    fn insert(&mut self, request: SeqRequest) -> Result<SeqId, GenError>;
    /// Removes a sequence at once.
    fn cancel(&mut self, id: SeqId);
    /// Runs one step and returns what it produced.
    fn step(&mut self) -> Result<Vec<SeqEvent>, GenError>;
}

impl SequenceBatch for Batch {
    fn insert(&mut self, request: SeqRequest) -> Result<SeqId, GenError> {
        Batch::insert(self, request)
    }

    fn cancel(&mut self, id: SeqId) {
        Batch::cancel(self, id)
    }

    fn step(&mut self) -> Result<Vec<SeqEvent>, GenError> {
        Batch::step(self)
    }
}
