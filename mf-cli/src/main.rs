//! The `mf` command. Each subcommand lives in its own module; this file only
//! parses the command line and dispatches.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod sim;

/// MessageFirst: reliable messages over TCP.
#[derive(Parser)]
#[command(name = "mf", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run seeded network-fault simulations (turmoil) and check the contract.
    Sim(sim::SimArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Sim(args) => sim::run(args),
    }
}
