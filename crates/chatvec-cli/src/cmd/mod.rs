//! One module per subcommand: its clap `Args` (doc comments are the help text) and its `run`.

pub mod apply;
pub mod chat;
pub mod common;
pub mod extract;
pub mod generate;
pub mod merge;
