//! One module per subcommand: its clap `Args` (doc comments are the help text) and its `run`.

pub mod apply;
pub mod chat;
pub mod common;
pub mod download;
pub mod eval;
pub mod export;
pub mod extract;
pub mod generate;
pub mod inspect;
pub mod judging;
pub mod lab;
pub mod merge;
pub mod report;
pub mod serve;
pub mod sweep;
