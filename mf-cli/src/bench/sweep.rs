//! `mf bench sweep`: which TCP socket parameters matter for message
//! workloads. One knob changes at a time against the defaults (nodelay on,
//! quickack off, kernel buffer autotuning, batching on), for W1, W2 and W3
//! across message sizes, on every system; the report states each knob's
//! effect with numbers, and the message API's overhead at each size.

use crate::bench::harness::Key;
use crate::bench::probe::Probe;
use crate::bench::report::{Report, big_change, figures, knob_name, load_average, ratio};
use crate::bench::systems::{Knobs, System};
use crate::bench::workloads::{Kind, Workload, fmt_size, parse_size};
use crate::bench::{Case, CommonArgs, run_plan};
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `mf bench sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Message sizes (e.g. 64,4k,64k).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    sizes: Option<Vec<usize>>,
    /// Where to write the markdown report.
    #[arg(long, value_name = "FILE", default_value = "mf-sweep.md")]
    out: PathBuf,
}

/// The knob settings: defaults first, then one change each.
pub fn knob_settings(_full: bool) -> Vec<Knobs> {
    let d = Knobs::default();
    vec![
        d,
        Knobs { nodelay: false, ..d },
        Knobs { quickack: true, ..d },
        Knobs { send_buffer_bytes: Some(64 << 10), recv_buffer_bytes: Some(64 << 10), ..d },
        Knobs { send_buffer_bytes: Some(4 << 20), recv_buffer_bytes: Some(4 << 20), ..d },
        Knobs { batching: false, ..d },
    ]
}

/// `mf bench sweep`.
pub fn run(args: SweepArgs) -> ExitCode {
    let c = &args.common;
    let sizes =
        args.sizes.clone().unwrap_or_else(|| if c.quick { vec![64] } else { vec![64, 4 << 10, 64 << 10] });
    let knob_sets = knob_settings(true);
    let pins = c.pins();
    let systems = c.systems();
    let rounds = c.rounds.unwrap_or(if c.quick { 1 } else { 2 }).max(1);
    let mut budget = c.budget();
    if c.time_ms.is_none() && !c.quick {
        budget.time = std::time::Duration::from_millis(150);
    }
    let mut cases = Vec::new();
    for kind in [Kind::PingPong, Kind::Pipeline, Kind::ShortConn] {
        for &size in &sizes {
            for &pin in &pins {
                for k in 0..knob_sets.len() {
                    cases.push(Case { workload: Workload { kind, size }, pin, knobs: k });
                }
            }
        }
    }
    let systems_for = |_: &Case| systems.clone();
    println!(
        "mf bench sweep: {} cases x {} systems x {} rounds, {} ms per run, load {}",
        cases.len(),
        systems.len(),
        rounds,
        budget.time.as_millis(),
        load_average()
    );
    let results = run_plan(&cases, &knob_sets, &systems_for, rounds, &budget, !c.no_progress);
    let probe = Probe::default();
    let rep =
        Report { results: &results, knob_sets: &knob_sets, probe: &probe, pins: &pins, systems: &systems };

    let mut o = String::new();
    let _ = writeln!(o, "# TCP knob sweep (`mf bench sweep`)\n");
    let _ = writeln!(
        o,
        "Command: `mf bench sweep{}`; {} rounds of {} ms per run, systems interleaved; load average at the end {}.\n",
        std::env::args().skip(3).map(|a| format!(" {a}")).collect::<String>(),
        rounds,
        budget.time.as_millis(),
        load_average()
    );
    let _ = writeln!(
        o,
        "Knobs are changed one at a time from the defaults (nodelay on, quickack off, kernel buffer autotuning, batching on). \
         Ratios compare a run with the knob changed to the default run of the same system in the same round \
         (the two run one after the other).\n"
    );
    if let Some((median, p90)) = rep.spread() {
        let _ = writeln!(
            o,
            "Run-to-run spread of identical runs (default knobs, same case, across rounds): median {:.0}%, \
             90th percentile {:.0}%. A knob counts as changing something when it moves the rate or the p50 by more \
             than {:.0}% (the larger of 20% and that 90th percentile).\n",
            median * 100.0,
            p90 * 100.0,
            rep.effect_threshold() * 100.0
        );
    }

    let _ = writeln!(o, "## The message API's overhead over the raw stream, default knobs\n");
    let _ = writeln!(
        o,
        "Rate of each system relative to raw-std in the same round (p50 latency ratio in brackets).\n"
    );
    let _ = write!(o, "| workload | pin |");
    for s in systems.iter().filter(|s| **s != System::RawStd) {
        let _ = write!(o, " {} |", s.name());
    }
    let _ = writeln!(o, " raw-std calls/s | raw-std p50 us |");
    let _ = writeln!(o, "|---|---|{}--:|--:|", "--:|".repeat(systems.len() - 1));
    for case in cases.iter().filter(|c| c.knobs == 0) {
        let key = |s| Key { workload: case.workload, pin: case.pin, knobs: 0, system: s };
        let _ = write!(o, "| {} | {} |", case.workload.label(), case.pin.name());
        for &s in systems.iter().filter(|s| **s != System::RawStd) {
            let v = ratio(&results, key(s), System::RawStd)
                .map_or("-".into(), |r| format!("{:.2}x ({:.2}x)", r.throughput, r.p50));
            let _ = write!(o, " {v} |");
        }
        let base = results.series.get(&key(System::RawStd)).map(|s| figures(s, case.workload.size));
        let _ = writeln!(
            o,
            " {} | {} |",
            base.map_or("-".into(), |f| format!("{:.0}", f.calls_per_s)),
            base.map_or("-".into(), |f| format!("{:.1}", f.p50_us))
        );
    }

    let effects = rep.knob_effects();
    let threshold = rep.effect_threshold();
    let _ = writeln!(o, "\n## What each knob changes\n");
    for (k, knobs) in knob_sets.iter().enumerate().skip(1) {
        let name = knob_name(knobs);
        let mine: Vec<_> = effects.iter().filter(|e| e.0 == name).collect();
        let big: Vec<_> =
            mine.iter().filter(|e| big_change(e.4, threshold) || big_change(e.5, threshold)).collect();
        let _ = writeln!(o, "### {name}\n");
        if big.is_empty() {
            let _ = writeln!(
                o,
                "No effect beyond {:.0}% in any of the {} cases measured (largest rate change {:.2}x).\n",
                threshold * 100.0,
                mine.len(),
                mine.iter().map(|e| e.4).fold(1.0, |m: f64, r| if (r - 1.0).abs() > (m - 1.0).abs() {
                    r
                } else {
                    m
                })
            );
        } else {
            let _ = writeln!(
                o,
                "Changes beyond {:.0}% in {} of {} cases:\n",
                threshold * 100.0,
                big.len(),
                mine.len()
            );
            for e in &big {
                let _ = writeln!(
                    o,
                    "- {} pin {} {}: rate {:.2}x, p50 {:.2}x",
                    e.1.label(),
                    e.2.name(),
                    e.3.name(),
                    e.4,
                    e.5
                );
            }
            let _ = writeln!(o);
        }
        let _ = writeln!(o, "| workload | pin | system | rate | p50 | writes/msg (default -> changed) |");
        let _ = writeln!(o, "|---|---|---|--:|--:|---|");
        for e in &mine {
            let wpm = |kn: usize| {
                results
                    .series
                    .get(&Key { workload: e.1, pin: e.2, knobs: kn, system: e.3 })
                    .map_or(f64::NAN, |s| figures(s, e.1.size).writes_per_msg)
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.2}x | {:.2}x | {:.3} -> {:.3} |",
                e.1.label(),
                e.2.name(),
                e.3.name(),
                e.4,
                e.5,
                wpm(0),
                wpm(k)
            );
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "## Absolute figures\n");
    let _ = writeln!(
        o,
        "| workload | pin | knobs | system | calls/s | p50 us | p99 us | writes/msg | CPU us/msg |"
    );
    let _ = writeln!(o, "|---|---|---|---|--:|--:|--:|--:|--:|");
    for (k, s) in &results.series {
        let f = figures(s, k.workload.size);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.3} | {:.2} |",
            k.workload.label(),
            k.pin.name(),
            knob_name(&knob_sets[k.knobs]),
            k.system.name(),
            f.calls_per_s,
            f.p50_us,
            f.p99_us,
            f.writes_per_msg,
            f.cpu_us_per_msg
        );
    }
    if !results.failures.is_empty() {
        let _ = writeln!(o, "\n## Failed runs\n");
        for (k, e) in &results.failures {
            let _ = writeln!(
                o,
                "- {} {} pin {} {}: {e}",
                k.system.name(),
                k.workload.label(),
                k.pin.name(),
                knob_name(&knob_sets[k.knobs])
            );
        }
    }
    let sizes_txt: Vec<String> = sizes.iter().map(|s| fmt_size(*s)).collect();
    if let Err(e) = std::fs::write(&args.out, &o) {
        eprintln!("error: writing {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    println!("{o}");
    println!("wrote {} (sizes {})", args.out.display(), sizes_txt.join(", "));
    if results.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
