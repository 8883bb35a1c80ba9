//! What chatvec's benchmarks and tests share: synthetic models of any size.
#![deny(missing_docs)]

pub mod synth;
