//! `mf sim`: campaigns of seeded fault simulations.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mf_sim::{Scenario, SimConfig};
use std::process::ExitCode;
use std::time::Instant;

/// Arguments of `mf sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Seeds to run (first-seed, first-seed + 1, ...).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of the campaign.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Run exactly this one seed (replays a failure).
    #[arg(long, conflicts_with_all = ["seeds", "first_seed"])]
    seed: Option<u64>,
    /// Scenario: calm, partition, hold, latency, loss, break, crash, mixed.
    /// Without it, seeds cycle through all of them.
    #[arg(long, value_parser = parse_scenario)]
    scenario: Option<Scenario>,
    /// Clients per run (1..=64).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    clients: u64,
    /// Operations (messages plus calls) per client.
    #[arg(long, default_value_t = 24)]
    ops: u64,
    /// Faults per run (default: the scenario's).
    #[arg(long)]
    faults: Option<usize>,
    /// The liveness bound in simulated ms (default: the scenario's).
    #[arg(long)]
    settle_ms: Option<u64>,
    /// Test only: turn off the receiver's duplicate suppression, to see the
    /// checker catch the duplicates.
    #[arg(long, hide = true)]
    fault_disable_dedup: bool,
    /// Stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
    /// Print one line per seed instead of a progress bar.
    #[arg(long)]
    verbose: bool,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    Scenario::from_name(s).ok_or_else(|| {
        let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
        format!("unknown scenario {s:?}; one of: {}", names.join(", "))
    })
}

/// Run the campaign; the exit code is non-zero if any seed failed.
pub fn run(args: SimArgs) -> ExitCode {
    let (first, count) = match args.seed {
        Some(s) => (s, 1),
        None => (args.first_seed, args.seeds),
    };
    let config_for = |seed: u64| {
        let scenario = args.scenario.unwrap_or(Scenario::ALL[(seed % Scenario::ALL.len() as u64) as usize]);
        let mut cfg = SimConfig {
            clients: args.clients as usize,
            ops_per_client: args.ops,
            ..SimConfig::new(scenario)
        };
        if let Some(f) = args.faults {
            cfg.faults = f;
        }
        if let Some(ms) = args.settle_ms {
            cfg.settle_ms = ms;
        }
        cfg.protocol.fault_disable_dedup = args.fault_disable_dedup;
        cfg
    };
    let scenario_text = args.scenario.map_or("all (cycled by seed)".to_string(), |s| s.to_string());
    println!(
        "mf sim: seeds {first}..{} ({count}), scenario {scenario_text}, {} clients, {} ops per client",
        first + count - 1,
        args.clients,
        args.ops
    );
    let bar = if args.verbose || count == 1 {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(count);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} seeds [{elapsed_precise}, eta {eta}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    let started = Instant::now();
    let (mut ok, mut failed, mut faults, mut checked, mut violations, mut renewed) = (0u64, 0u64, 0, 0, 0, 0);
    let mut settle_max_ms = 0;
    let mut failures = Vec::new();
    for seed in first..first + count {
        let cfg = config_for(seed);
        match mf_sim::run(seed, &cfg) {
            Ok(r) => {
                ok += 1;
                faults += r.faults;
                checked += r.checked();
                renewed += r.sessions_renewed;
                settle_max_ms = settle_max_ms.max(r.settle_ms);
                if args.verbose || count == 1 {
                    println!(
                        "seed {seed} ({}): ok, {} faults, {} checked ({} arrived, {} receipts, {} responses, {} failed explicitly), {} sessions renewed, settled in {} ms, trace {:016x}",
                        cfg.scenario,
                        r.faults,
                        r.checked(),
                        r.summary.arrived,
                        r.summary.receipts,
                        r.summary.responses,
                        r.summary.failed_not_delivered + r.summary.failed_unknown + r.summary.rejected,
                        r.sessions_renewed,
                        r.settle_ms,
                        r.trace_hash
                    );
                }
            }
            Err(f) => {
                failed += 1;
                faults += f.faults;
                violations += f.violations.len() as u64;
                bar.suspend(|| eprintln!("FAILED ({}): {f}", cfg.scenario));
                failures.push(f.replay.clone());
                if args.fail_fast {
                    break;
                }
            }
        }
        bar.set_message(format!("{failed} failed"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "seeds run: {}  passed: {ok}  failed: {failed}\nfaults injected: {faults}  messages and calls checked: {checked}  sessions renewed: {renewed}\nviolations: {violations}  longest settle after healing: {settle_max_ms} ms (bound {} ms)\nwall time: {:.1} s",
        ok + failed,
        config_for(first).settle_ms,
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("replay the failures with:");
        for f in failures.iter().take(20) {
            println!("  {f}");
        }
        ExitCode::FAILURE
    }
}
