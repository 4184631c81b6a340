//! Scenarios and their seeded fault schedules, drawn from what turmoil can
//! do to TCP.

use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use std::fmt;

/// A family of faults a run draws its schedule from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// No faults: the baseline.
    Calm,
    /// Partitions between the server and a client, repaired later (some
    /// longer than `resume_timeout_ms`, so sessions are lost).
    Partition,
    /// Held links (bytes wait, then flow on release).
    Hold,
    /// Latency and jitter raised on a link for a while.
    Latency,
    /// Random message loss on a link (turmoil's `fail_rate`): the TCP
    /// stream stalls for good; only keep-alive and idle timeout notice.
    Loss,
    /// Connections broken at once (both ends see it).
    Break,
    /// The server host crashes and restarts, losing every session.
    Crash,
    /// All of the above.
    Mixed,
}

impl Scenario {
    /// Every scenario, in the order campaigns cycle through them.
    pub const ALL: [Scenario; 8] = [
        Scenario::Calm,
        Scenario::Partition,
        Scenario::Hold,
        Scenario::Latency,
        Scenario::Loss,
        Scenario::Break,
        Scenario::Crash,
        Scenario::Mixed,
    ];

    /// The scenario's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Calm => "calm",
            Scenario::Partition => "partition",
            Scenario::Hold => "hold",
            Scenario::Latency => "latency",
            Scenario::Loss => "loss",
            Scenario::Break => "break",
            Scenario::Crash => "crash",
            Scenario::Mixed => "mixed",
        }
    }

    /// Parse a name from [`Scenario::name`].
    pub fn from_name(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Partition client `client` from the server for `ms`.
    Partition {
        /// Client index.
        client: usize,
        /// Milliseconds until repair.
        ms: u64,
    },
    /// Hold the link for `ms`, then release what waited.
    Hold {
        /// Client index.
        client: usize,
        /// Milliseconds until release.
        ms: u64,
    },
    /// Raise the link's latency to `latency_ms` plus up to `jitter_ms`, for `ms`.
    Latency {
        /// Client index.
        client: usize,
        /// Fixed latency.
        latency_ms: u64,
        /// Extra random latency.
        jitter_ms: u64,
        /// Milliseconds until restored.
        ms: u64,
    },
    /// Lose messages on the link with probability `permille`/1000, for `ms`.
    Loss {
        /// Client index.
        client: usize,
        /// Loss rate in thousandths.
        permille: u64,
        /// Milliseconds until restored.
        ms: u64,
    },
    /// Break the client's connection now.
    Break {
        /// Client index.
        client: usize,
    },
    /// Crash the server; restart it after `down_ms`.
    Crash {
        /// Milliseconds down.
        down_ms: u64,
    },
}

/// A fault and when it strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheduled {
    /// Simulated milliseconds from the start.
    pub at_ms: u64,
    /// What.
    pub fault: Fault,
}

fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    if n == 0 { 0 } else { rng.next_u64() % n }
}

/// Draw a schedule: `count` faults of `scenario` at random times within
/// `window_ms`, sorted by time.
pub fn schedule(
    rng: &mut ChaCha8Rng,
    scenario: Scenario,
    clients: usize,
    window_ms: u64,
    count: usize,
    resume_timeout_ms: u64,
) -> Vec<Scheduled> {
    if scenario == Scenario::Calm || clients == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = match scenario {
            Scenario::Mixed => Scenario::ALL[1 + below(rng, 6) as usize],
            s => s,
        };
        let client = below(rng, clients as u64) as usize;
        let fault = match kind {
            Scenario::Partition => {
                // One in eight outlasts the resume timeout: the session is lost
                // and every pending item must fail explicitly.
                let ms = if below(rng, 8) == 0 {
                    resume_timeout_ms + 200 + below(rng, 1000)
                } else {
                    50 + below(rng, 1500)
                };
                Fault::Partition { client, ms }
            }
            Scenario::Hold => Fault::Hold { client, ms: 20 + below(rng, 1200) },
            Scenario::Latency => Fault::Latency {
                client,
                latency_ms: 5 + below(rng, 150),
                jitter_ms: below(rng, 100),
                ms: 100 + below(rng, 1500),
            },
            Scenario::Loss => {
                Fault::Loss { client, permille: 5 + below(rng, 200), ms: 100 + below(rng, 1000) }
            }
            Scenario::Break => Fault::Break { client },
            Scenario::Crash => Fault::Crash { down_ms: below(rng, 600) },
            Scenario::Calm | Scenario::Mixed => unreachable!("not a fault kind"),
        };
        out.push(Scheduled { at_ms: below(rng, window_ms), fault });
    }
    out.sort_by_key(|s| s.at_ms);
    out
}
