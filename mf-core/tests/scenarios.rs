//! Random fault schedules on the simulated network: every message delivered
//! exactly once and in order per channel, every call answered once, every
//! message one outcome. Each failure prints its seed.

use mf_core::testing::scenario::{self, ScenarioConfig};

#[test]
fn no_faults_everything_delivered() {
    let cfg = ScenarioConfig { fault_every_steps: 0, short_deadline_pct: 0, ..Default::default() };
    let r = scenario::run(1, &cfg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.summary.failed_unknown, 0, "{r:?}");
    assert!(r.summary.responses > 0 && r.summary.receipts > 0, "{r:?}");
}

#[test]
fn random_faults_seeds() {
    let cfg = ScenarioConfig::default();
    for seed in 0..20 {
        let r = scenario::run(seed, &cfg).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("seed {seed}: {r:?}");
    }
}

#[test]
fn checker_catches_disabled_dedup() {
    let mut cfg = ScenarioConfig { restarts: false, large_pct: 0, ..Default::default() };
    cfg.protocol.fault_disable_dedup = true;
    let caught = (0..20).filter_map(|seed| scenario::run(seed, &cfg).err()).collect::<Vec<_>>();
    assert!(!caught.is_empty(), "no seed exposed the duplicate deliveries");
    assert!(caught.iter().any(|e| e.contains("C2")), "{caught:?}");
    eprintln!("{} of 20 seeds caught; first:\n{}", caught.len(), caught[0]);
}

#[test]
fn same_seed_same_trace() {
    let cfg = ScenarioConfig::default();
    let a = scenario::run(42, &cfg).unwrap();
    let b = scenario::run(42, &cfg).unwrap();
    assert_eq!(a.trace_hash, b.trace_hash);
    let c = scenario::run(43, &cfg).unwrap();
    assert_ne!(a.trace_hash, c.trace_hash);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

        /// Random fault schedules: every message delivered exactly once and in
        /// order per channel, every call answered once, every message one
        /// outcome, memory within bounds. A failure prints the seed and the
        /// replay call.
        #[test]
        fn random_fault_schedules(seed in any::<u64>(), clients in 1usize..5, fault_every in 5u64..80,
                                  large_pct in 0u8..30, call_pct in 0u8..80) {
            let cfg = ScenarioConfig {
                clients, fault_every_steps: fault_every, large_pct, call_pct, ops_per_client: 60,
                ..ScenarioConfig::default()
            };
            if let Err(e) = scenario::run(seed, &cfg) {
                prop_assert!(false, "clients={clients} fault_every={fault_every} large_pct={large_pct} call_pct={call_pct}\n{e}");
            }
        }
    }
}

/// A longer campaign: `MF_SEEDS=10000 cargo test --release -p mf-core --test
/// scenarios campaign -- --ignored --nocapture`.
#[test]
#[ignore = "long: run in release with MF_SEEDS"]
fn campaign() {
    let n: u64 = std::env::var("MF_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let mut failures = Vec::new();
    let mut faults = 0;
    let mut checked = 0;
    for seed in 0..n {
        let clients = 1 + (seed % 4) as usize;
        let cfg = ScenarioConfig {
            clients,
            fault_every_steps: 5 + seed % 60,
            large_pct: (seed % 30) as u8,
            call_pct: (seed * 7 % 80) as u8,
            ..ScenarioConfig::default()
        };
        match scenario::run(seed, &cfg) {
            Ok(r) => {
                faults += r.faults;
                checked += r.summary.messages + r.summary.calls;
            }
            Err(e) => {
                eprintln!("{e}");
                failures.push(seed);
            }
        }
    }
    eprintln!("{n} seeds, {faults} faults, {checked} messages and calls checked, failures: {failures:?}");
    assert!(failures.is_empty());
}

/// Replay one seed of `campaign`: `MF_SEED=901 cargo test --release -p mf-core
/// --test scenarios replay_campaign_seed -- --ignored --nocapture`.
#[test]
#[ignore = "replays the seed in MF_SEED"]
fn replay_campaign_seed() {
    let seed: u64 = std::env::var("MF_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let clients = 1 + (seed % 4) as usize;
    let cfg = ScenarioConfig {
        clients,
        fault_every_steps: 5 + seed % 60,
        large_pct: (seed % 30) as u8,
        call_pct: (seed * 7 % 80) as u8,
        ..ScenarioConfig::default()
    };
    if let Err(e) = scenario::run(seed, &cfg) {
        panic!("{e}");
    }
}
