//! `mf bench`: the message API against the raw TCP floor, and which TCP
//! knobs matter.
//!
//! One invocation starts its own loopback servers, runs every workload on
//! every system with systems interleaved run by run (the order rotates each
//! round) and threads pinned, and prints a table per workload, the targets
//! P1-P7 met or missed, and the answers to the proposal's two questions.
//!
//! - [`workloads`]: W1-W5 and the size sweep; request bodies and the reply check.
//! - [`systems`]: mf-mio, mf-tokio, raw-std (the floor), raw-tokio.
//! - [`harness`]: pinning, CPU time, peak RSS, syscall and allocation counts.
//! - [`probe`]: P6 (memory and allocations per message).
//! - [`report`]: tables, targets, answers, JSON.
//! - [`plot`]: SVG charts.
//! - [`sweep`]: `mf bench sweep`, the TCP-knob question in full.

pub mod harness;
pub mod plot;
pub mod probe;
pub mod report;
pub mod sweep;
pub mod systems;
pub mod workloads;

use clap::{Args, Subcommand, ValueEnum};
use harness::{Key, Pin, Results, measure};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use systems::{Knobs, System};
use workloads::{Budget, Workload, parse_size};

/// Arguments of `mf bench`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    common: CommonArgs,
    /// Message sizes of the W1/W2 size sweep (e.g. 16,64,1k,64k,1m).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    sizes: Option<Vec<usize>>,
    /// Skip the size sweep.
    #[arg(long)]
    no_sizes: bool,
    /// Only these workloads (e.g. W1,W2); the default is all five.
    #[arg(long, value_delimiter = ',')]
    workloads: Option<Vec<String>>,
    /// Skip the short knob check (the full one is `mf bench sweep`).
    #[arg(long)]
    no_knobs: bool,
    /// Write one JSON record per system, workload and pinning to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write SVG charts (latency CDFs, throughput against size) to DIR.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Which TCP knobs matter: nodelay, quickack, buffer sizes and batching,
    /// for W1-W3 across message sizes; writes a markdown report.
    Sweep(sweep::SweepArgs),
}

/// Options every bench mode shares.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Finish in seconds: one short round, fewer sizes (what the test runs).
    #[arg(long)]
    pub quick: bool,
    /// Pinning: same (one vCPU for both ends), split (one each), both, none.
    #[arg(long, value_enum, default_value_t = PinArg::Both)]
    pub pin: PinArg,
    /// Systems to run (comma-separated); the references raw-std and raw-tokio
    /// are always added.
    #[arg(long, value_delimiter = ',', value_parser = System::from_name)]
    pub systems: Option<Vec<System>>,
    /// Rounds: each round runs every system once per case, in rotated order.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Measured milliseconds per run.
    #[arg(long)]
    pub time_ms: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// For profiling one system: do not add the floor, skip the P6 probe.
    #[arg(long, hide = true)]
    pub profile: bool,
}

/// `--pin`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PinArg {
    /// Both ends on one vCPU.
    Same,
    /// Client and server on different vCPUs.
    Split,
    /// Same, then split (the default).
    Both,
    /// No pinning.
    None,
}

impl CommonArgs {
    /// The pinnings to run.
    pub fn pins(&self) -> Vec<Pin> {
        match self.pin {
            PinArg::Same => vec![Pin::Same],
            PinArg::Split => vec![Pin::Split],
            PinArg::Both => vec![Pin::Same, Pin::Split],
            PinArg::None => vec![Pin::None],
        }
    }

    /// The systems to run, the floor first.
    pub fn systems(&self) -> Vec<System> {
        let mut v = self.systems.clone().unwrap_or_else(|| System::ALL.to_vec());
        // The references the targets are measured against: raw-std for
        // P1-P4, raw-tokio for P5.
        if !self.profile {
            v.extend([System::RawStd, System::RawTokio]);
        }
        v.sort();
        v.dedup();
        System::ALL.into_iter().filter(|s| v.contains(s)).collect()
    }

    /// Rounds.
    pub fn rounds(&self) -> usize {
        self.rounds.unwrap_or(if self.quick { 1 } else { 3 }).max(1)
    }

    /// The budget of one run.
    pub fn budget(&self) -> Budget {
        let time = Duration::from_millis(self.time_ms.unwrap_or(if self.quick { 40 } else { 200 }));
        Budget {
            warmup_calls: if self.quick { 100 } else { 2000 },
            warmup_time: if self.quick { Duration::from_millis(20) } else { Duration::from_millis(50) },
            calls_max: 5_000_000,
            time,
        }
    }
}

/// One case of the plan: a workload, a pinning and a knob setting; every
/// system runs it once per round.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// The workload.
    pub workload: Workload,
    /// Pinning.
    pub pin: Pin,
    /// Index into the knob settings.
    pub knobs: usize,
}

/// Run every case `rounds` times, systems interleaved (rotated each round),
/// the plan forwards in even rounds and backwards in odd ones.
/// `systems_for` picks the systems of a case.
pub fn run_plan(
    cases: &[Case],
    knob_sets: &[Knobs],
    systems_for: &dyn Fn(&Case) -> Vec<System>,
    rounds: usize,
    budget: &Budget,
    progress: bool,
) -> Results {
    let total: usize = cases.iter().map(|c| systems_for(c).len()).sum::<usize>() * rounds;
    let bar = if progress { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    // One short unrecorded run per system first: page faults, lazy
    // initialisation and CPU frequency settle before anything counts.
    let mut warm: Vec<System> = cases.iter().flat_map(systems_for).collect();
    warm.sort();
    warm.dedup();
    let warm_budget = Budget { time: budget.time / 4, ..*budget };
    for s in warm {
        bar.set_message(format!("warming up {}", s.name()));
        let _ = measure(s, &Workload::w1(64), Pin::Same, &Knobs::default(), &warm_budget);
    }
    let mut results = Results::default();
    for round in 0..rounds {
        // Odd rounds run the plan backwards, so that a case's place in the
        // sequence (what ran just before it) does not favour one side of a
        // comparison.
        let order: Vec<&Case> =
            if round % 2 == 1 { cases.iter().rev().collect() } else { cases.iter().collect() };
        for case in order {
            let mut systems = systems_for(case);
            let n = systems.len().max(1);
            systems.rotate_left(round % n);
            for system in systems {
                bar.set_message(format!(
                    "{} {} pin {}",
                    system.name(),
                    case.workload.label(),
                    case.pin.name()
                ));
                let key = Key { workload: case.workload, pin: case.pin, knobs: case.knobs, system };
                match measure(system, &case.workload, case.pin, &knob_sets[case.knobs], budget) {
                    Ok((hist, fig)) => results.add(key, &hist, fig),
                    Err(e) => {
                        bar.println(format!("error: {} {}: {e}", system.name(), case.workload.label()));
                        results.failures.push((key, e));
                    }
                }
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    results
}

/// The sizes of the W1/W2 size sweep.
fn sweep_sizes(args: &BenchArgs) -> Vec<usize> {
    if args.no_sizes {
        return vec![];
    }
    args.sizes.clone().unwrap_or_else(|| {
        if args.common.quick {
            vec![16, 4 << 10]
        } else {
            vec![16, 64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20]
        }
    })
}

/// `mf bench`.
pub fn run(args: BenchArgs) -> ExitCode {
    if let Some(BenchCommand::Sweep(s)) = args.command {
        return sweep::run(s);
    }
    let common = &args.common;
    let pins = common.pins();
    let systems = common.systems();
    let budget = common.budget();
    let rounds = common.rounds();

    let mut workloads = Workload::standard();
    for size in sweep_sizes(&args) {
        for w in [Workload::w1(size), Workload::w2(size)] {
            if !workloads.contains(&w) {
                workloads.push(w);
            }
        }
    }
    if let Some(only) = &args.workloads {
        workloads.retain(|w| only.iter().any(|o| o.eq_ignore_ascii_case(w.kind.id())));
    }
    // The short knob check: one knob changed at a time on W1-W3 at 64 B,
    // first pinning; each variant runs right after its default case, so the
    // two are compared side by side.
    let knob_sets = sweep::knob_settings(false);
    let knob_workloads = [Workload::w1(64), Workload::w2(64), Workload::standard()[2]];
    let mut cases: Vec<Case> = Vec::new();
    for w in &workloads {
        for &pin in &pins {
            cases.push(Case { workload: *w, pin, knobs: 0 });
            if !args.no_knobs && pin == pins[0] && knob_workloads.contains(w) {
                for k in 1..knob_sets.len() {
                    cases.push(Case { workload: *w, pin, knobs: k });
                }
            }
        }
    }
    let knob_systems: Vec<System> = systems
        .iter()
        .copied()
        .filter(|s| matches!(s, System::RawStd | System::MfMio | System::MfTokio))
        .collect();
    let systems_for = |c: &Case| if c.knobs == 0 { systems.clone() } else { knob_systems.clone() };

    println!(
        "mf bench: {} systems x {} cases x {} rounds, {} ms per run, pinning {}, {} CPUs, load {}",
        systems.len(),
        cases.len(),
        rounds,
        budget.time.as_millis(),
        pins.iter().map(|p| p.name()).collect::<Vec<_>>().join("+"),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        report::load_average(),
    );
    let started = std::time::Instant::now();
    let results = run_plan(&cases, &knob_sets, &systems_for, rounds, &budget, !common.no_progress);
    let probe = if common.profile { probe::Probe::default() } else { probe::run(&systems, common.quick) };
    let elapsed = started.elapsed();

    let rep = report::Report {
        results: &results,
        knob_sets: &knob_sets,
        probe: &probe,
        pins: &pins,
        systems: &systems,
    };
    print!("{}", rep.render());
    println!("(measured in {:.1} s; load average now {})", elapsed.as_secs_f64(), report::load_average());
    if let Some(path) = &args.json {
        match rep.write_json(path) {
            Ok(n) => println!("wrote {n} records to {}", path.display()),
            Err(e) => {
                eprintln!("error: writing {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(dir) = &args.plot {
        match plot::write_all(&results, &pins, &systems, dir) {
            Ok(files) => println!("wrote {} charts to {}", files.len(), dir.display()),
            Err(e) => {
                eprintln!("error: plotting to {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if results.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
