//! P6: what an idle session costs the core, and allocations per message in
//! steady state.

use crate::bench::harness::{Pin, allocations, count_allocations, measure};
use crate::bench::systems::{Knobs, System};
use crate::bench::workloads::{Budget, Workload};
use bytes::Bytes;
use mf_core::testing::{NetConfig, SimNet};
use mf_core::{Config, Incoming};
use std::time::Duration;

/// P6's figures.
#[derive(Debug, Default)]
pub struct Probe {
    /// `mf_core::Client::memory_bytes` of a connected session that has made
    /// one call and is idle.
    pub idle_client_bytes: usize,
    /// `Endpoint::session_memory_bytes` of the same session at the server.
    pub idle_server_bytes: Option<usize>,
    /// Allocations per message (requests and responses; both ends of the
    /// connection, since both run in this process) in steady state, by
    /// system and workload.
    pub allocs_per_msg: Vec<(System, Workload, f64)>,
}

/// Measure P6 for `systems`.
pub fn run(systems: &[System], quick: bool) -> Probe {
    let (idle_client_bytes, idle_server_bytes) = idle_session();
    let mut allocs_per_msg = Vec::new();
    for w in [Workload::w1(64), Workload::w2(64)] {
        for &s in systems {
            if let Some(a) = allocs_per_call(s, &w, quick) {
                allocs_per_msg.push((s, w, a / 2.0));
            }
        }
    }
    Probe { idle_client_bytes, idle_server_bytes, allocs_per_msg }
}

/// A session after some traffic (calls and one-way messages, so buffers had
/// the chance to grow) and then a few idle seconds of simulated time, over
/// mf-core's simulated network: the core's own accounting at both ends.
fn idle_session() -> (usize, Option<usize>) {
    let config = Config::default();
    let mut net = SimNet::new(1, config.clone(), NetConfig::default());
    let c = net.add_client(config);
    net.connect(c);
    for i in 0..60u32 {
        if net.client(c).send((i % 4) as u16, Bytes::from(vec![1u8; 3000])).is_err()
            || net.client(c).call(1, Bytes::from(vec![2u8; 100]), None).is_err()
        {
            return (0, None);
        }
    }
    let mut taken = 0;
    net.run_until(1_000_000, |net| {
        let now = net.now();
        while let Some((s, m)) = net.server_recv() {
            taken += 1;
            if let Incoming::Request { id, .. } = m {
                let _ = net.server.respond(now, s, id, "r");
            }
        }
        taken == 120
    });
    net.run_for(Duration::from_secs(5), 100_000);
    let server = net.session_of(c).and_then(|s| net.server.session_memory_bytes(s));
    (net.client(c).memory_bytes(), server)
}

/// Allocations per call in steady state: the difference between a long and
/// a short run (set-up and tear-down cancel out), pinned to one CPU, divided
/// by the difference in calls made. Every call of a run counts, warm-up and
/// the calls a pipeline still had in flight when its measured phase ended
/// included: that tail is up to a window of calls long and varies from run
/// to run, so dividing by the measured calls alone would be off by up to
/// the window (about 0.06 per call at these lengths).
fn allocs_per_call(system: System, w: &Workload, quick: bool) -> Option<f64> {
    let (short, long) = if quick { (200, 600) } else { (2_000, 6_000) };
    let count = |calls: u64| -> Option<(u64, u64)> {
        let budget = Budget {
            warmup_calls: 200,
            warmup_time: Duration::from_secs(5),
            calls_max: calls,
            time: Duration::from_secs(30),
        };
        count_allocations(true);
        let before = allocations();
        let r = measure(system, w, Pin::Same, &Knobs::default(), &budget);
        let after = allocations();
        count_allocations(false);
        match r {
            Ok((_, fig)) if fig.calls == calls => Some((after - before, fig.calls_total)),
            _ => None,
        }
    };
    let (allocs_short, calls_short) = count(short)?;
    let (allocs_long, calls_long) = count(long)?;
    let calls = calls_long.checked_sub(calls_short).filter(|&n| n > 0)?;
    Some(allocs_long.saturating_sub(allocs_short) as f64 / calls as f64)
}
