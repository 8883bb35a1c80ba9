//! `chatvec download ID[@REV]`: fetches a hub model into the cache ahead of time and prints its
//! snapshot folder.

use std::process::ExitCode;

use anyhow::{bail, Result};
use chatvec_hub::HubId;

use super::common::{interrupt_flag, Bar, DownloadBar, HubArgs};

/// Download arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model: org/name, optionally @branch, @tag or @commit (default @main).
    #[arg(value_name = "ID[@REV]")]
    pub model: String,
    #[command(flatten)]
    pub hub: HubArgs,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Asks the hub for the revision, fetches what the cache lacks, prints the snapshot's folder.
pub fn run(a: Args) -> Result<ExitCode> {
    let Some(id) = HubId::parse(&a.model)? else {
        bail!("{}: not a hub id of the form org/name[@revision]", a.model);
    };
    let bar = DownloadBar { bar: Bar::new(a.quiet), label: a.model.clone() };
    let model = a.hub.hub().download(&id, &bar, &interrupt_flag())?;
    if !a.quiet {
        eprintln!("{id}: commit {}", model.revision.as_deref().unwrap_or("?"));
    }
    println!("{}", model.path.display());
    Ok(ExitCode::SUCCESS)
}
