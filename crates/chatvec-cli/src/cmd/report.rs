//! Placeholder until this subcommand lands.
use std::process::ExitCode;

/// Arguments (not yet implemented).
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Not implemented yet.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
