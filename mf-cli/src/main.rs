//! The `mf` command. Each subcommand lives in its own module; this file only
//! parses the command line and dispatches.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench;
mod call;
mod serve;
mod sim;

/// Counts allocations for `mf bench` (P6); otherwise the system allocator.
#[global_allocator]
static ALLOC: bench::harness::CountingAlloc = bench::harness::CountingAlloc;

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
    /// Measure the message API against the raw TCP floor (starts its own
    /// loopback servers); `mf bench sweep` asks which TCP knobs matter.
    Bench(bench::BenchArgs),
    /// Run an echo server (any bench system) for `mf call` from another machine.
    Serve(serve::ServeArgs),
    /// Call an `mf serve` server once, or `--count N` times as a load test.
    Call(call::CallArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Sim(args) => sim::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Call(args) => call::run(args),
    }
}
