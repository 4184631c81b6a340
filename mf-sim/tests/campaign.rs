//! The simulation's own guarantees: seeds replay exactly, a campaign of
//! 200+ seeds across every scenario is clean, and the checker catches a
//! deliberately broken protocol and a broken liveness bound.

use mf_sim::{Scenario, SimConfig, run};

#[test]
fn a_seed_replays_identically() {
    for scenario in [Scenario::Mixed, Scenario::Crash] {
        let cfg = SimConfig::new(scenario);
        let a = run(42, &cfg).unwrap_or_else(|f| panic!("{f}"));
        let b = run(42, &cfg).unwrap_or_else(|f| panic!("{f}"));
        println!("seed 42 ({scenario}): trace {:016x}, {} events", a.trace_hash, a.trace_events);
        assert_eq!((a.trace_hash, a.trace_events), (b.trace_hash, b.trace_events));
        assert_eq!(a.summary, b.summary);
        assert_eq!(a.sim_ms, b.sim_ms);
        assert!(a.trace_events > 100, "the trace must cover the run");
        // A different seed gives a different run.
        let c = run(43, &cfg).unwrap_or_else(|f| panic!("{f}"));
        assert_ne!(a.trace_hash, c.trace_hash);
    }
}

/// 26 seeds per scenario, 8 scenarios: 208 seeds.
#[test]
fn campaign_of_208_seeds_is_clean() {
    let mut faults = 0;
    let mut checked = 0;
    let mut renewed = 0;
    for scenario in Scenario::ALL {
        let cfg = SimConfig { ops_per_client: 16, ..SimConfig::new(scenario) };
        for seed in 0..26 {
            match run(seed, &cfg) {
                Ok(r) => {
                    faults += r.faults;
                    checked += r.checked();
                    renewed += r.sessions_renewed;
                }
                Err(f) => panic!("{scenario}: {f}"),
            }
        }
    }
    println!("208 seeds: {faults} faults, {checked} messages and calls checked, {renewed} sessions renewed");
    assert!(faults > 500, "the schedules must inject faults");
    assert!(renewed > 0, "some runs must lose sessions (crash, long partitions)");
}

#[test]
fn sixty_four_clients() {
    let cfg = SimConfig { clients: 64, ops_per_client: 6, ..SimConfig::new(Scenario::Mixed) };
    let r = run(5, &cfg).unwrap_or_else(|f| panic!("{f}"));
    assert!(r.checked() >= 64 * 6);
}

/// With duplicate suppression switched off in the receiver, retransmissions
/// after a connection break reach the application twice: the checker must
/// say so, and name the replay command.
#[test]
fn checker_catches_disabled_duplicate_suppression() {
    let mut cfg = SimConfig { faults: 12, ..SimConfig::new(Scenario::Break) };
    cfg.protocol.fault_disable_dedup = true;
    let mut caught = None;
    for seed in 0..40 {
        if let Err(f) = run(seed, &cfg) {
            caught = Some(f);
            break;
        }
    }
    let f = caught.expect("40 seeds with duplicate suppression off and no violation reported");
    println!("{f}");
    assert!(f.violations.iter().any(|v| v.starts_with("C2")), "{f}");
    assert!(f.replay.contains(&format!("--seed {}", f.seed)));
}

/// A liveness bound too short for a server restart to resolve is reported
/// as a liveness violation, not a hang.
#[test]
fn checker_reports_a_missed_liveness_bound() {
    let cfg = SimConfig { settle_ms: 1, faults: 3, ..SimConfig::new(Scenario::Partition) };
    let mut caught = None;
    for seed in 0..20 {
        if let Err(f) = run(seed, &cfg) {
            caught = Some(f);
            break;
        }
    }
    let f = caught.expect("a 1 ms liveness bound was never missed");
    assert!(f.violations.iter().any(|v| v.starts_with("liveness")), "{f}");
}
