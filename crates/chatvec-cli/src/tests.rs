//! The command-line definition: clap's own consistency checks, and every subcommand's help
//! against its reviewed snapshot (`src/snapshots/`; review changes with `cargo insta review`).

use clap::CommandFactory;

use crate::Cli;

#[test]
fn the_command_line_definition_passes_clap_checks() {
    Cli::command().debug_assert();
}

/// Every subcommand below `cmd`, depth first, with its path of names (`eval ppl`).
fn subcommands(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{path} {}", sub.get_name()).trim().to_string();
        out.push((name.clone(), sub.clone()));
        subcommands(sub, &name, out);
    }
}

#[test]
fn every_subcommands_help_matches_its_snapshot() {
    let mut cli = Cli::command();
    cli.build();
    let mut all = vec![("chatvec".to_string(), cli.clone())];
    subcommands(&cli, "", &mut all);
    assert!(all.len() > 12, "{} commands", all.len());
    for (name, mut cmd) in all {
        let help = cmd.render_long_help().to_string();
        insta::assert_snapshot!(format!("help {name}").replace(' ', "_"), help);
    }
}
