//! What `mf bench` prints: a table per workload, the size sweep, the targets
//! P1-P7 met or missed, the knob check, and the answers to the proposal's
//! two questions. Also the JSON records.

use crate::bench::harness::{Key, Pin, Results, Series};
use crate::bench::probe::Probe;
use crate::bench::systems::{Knobs, System};
use crate::bench::workloads::{Kind, Workload, fmt_size};
use std::fmt::Write as _;
use std::path::Path;

/// The machine's load average, as `/proc/loadavg` gives it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The figures of one series.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Figures {
    /// Calls measured, all rounds.
    pub calls: u64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile, microseconds.
    pub p999_us: f64,
    /// Median over rounds of calls per second.
    pub calls_per_s: f64,
    /// Request plus response bytes per second (median over rounds), MiB.
    pub mib_per_s: f64,
    /// Process CPU time per message (requests and responses), microseconds.
    pub cpu_us_per_msg: f64,
    /// Write syscalls per message, both ends.
    pub writes_per_msg: f64,
    /// Read syscalls per message, both ends.
    pub reads_per_msg: f64,
    /// Client write syscalls per request.
    pub client_writes_per_msg: f64,
    /// Server write syscalls per response.
    pub server_writes_per_msg: f64,
    /// Peak resident memory of the process during a run (max over rounds), MiB.
    pub peak_rss_mib: f64,
    /// Peak resident memory a run added to the process (both ends; max over
    /// rounds), MiB.
    pub rss_growth_mib: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Figures of a series for a workload of `size`-byte messages.
pub fn figures(s: &Series, size: usize) -> Figures {
    let q = |p: f64| s.hist.value_at_quantile(p) as f64 / 1000.0;
    let calls: u64 = s.rounds.iter().map(|r| r.calls).sum();
    let msgs = (2 * calls).max(1) as f64;
    let sum =
        |f: &dyn Fn(&crate::bench::harness::RunFigures) -> u64| s.rounds.iter().map(f).sum::<u64>() as f64;
    let rate = median(s.rounds.iter().map(|r| r.rate()).collect());
    Figures {
        calls,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        calls_per_s: rate,
        mib_per_s: rate * 2.0 * size as f64 / (1 << 20) as f64,
        cpu_us_per_msg: s.rounds.iter().map(|r| r.measured.cpu.as_secs_f64()).sum::<f64>() * 1e6 / msgs,
        writes_per_msg: sum(&|r| r.measured.client_io.writes + r.measured.server_io.writes) / msgs,
        reads_per_msg: sum(&|r| r.measured.client_io.reads + r.measured.server_io.reads) / msgs,
        client_writes_per_msg: sum(&|r| r.measured.client_io.writes) / (msgs / 2.0),
        server_writes_per_msg: sum(&|r| r.measured.server_io.writes) / (msgs / 2.0),
        peak_rss_mib: s.rounds.iter().map(|r| r.peak_rss_bytes).max().unwrap_or(0) as f64 / (1 << 20) as f64,
        rss_growth_mib: s.rounds.iter().map(|r| r.rss_growth_bytes).max().unwrap_or(0) as f64
            / (1 << 20) as f64,
    }
}

/// A system's figures relative to a reference system's, runs side by side.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Ratio {
    /// The reference system.
    pub against: System,
    /// Median over rounds of (this rate / reference rate, same round).
    pub throughput: f64,
    /// p50 latency / reference p50.
    pub p50: f64,
    /// p99 latency / reference p99.
    pub p99: f64,
}

/// Compare `key` with the same case on `against`.
pub fn ratio(results: &Results, key: Key, against: System) -> Option<Ratio> {
    let me = results.series.get(&key)?;
    let base = results.series.get(&Key { system: against, ..key })?;
    let rounds = me.rounds.len().min(base.rounds.len());
    let throughput = median((0..rounds).map(|r| me.rounds[r].rate() / base.rounds[r].rate()).collect());
    let q = |h: &hdrhistogram::Histogram<u64>, p: f64| h.value_at_quantile(p).max(1) as f64;
    Some(Ratio {
        against,
        throughput,
        p50: q(&me.hist, 0.5) / q(&base.hist, 0.5),
        p99: q(&me.hist, 0.99) / q(&base.hist, 0.99),
    })
}

/// Allocations per message are the difference of two runs' counts divided
/// by the difference of their messages; a few allocations that happen in one
/// run and not the other (a map or queue growing once) move it by this much.
const ALLOCS_RESOLUTION: f64 = 0.01;

/// Whether `ratio` is a change of more than `threshold` either way.
pub fn big_change(ratio: f64, threshold: f64) -> bool {
    ratio > 1.0 + threshold || ratio < 1.0 / (1.0 + threshold)
}

/// The reference a workload's target compares with (P5: raw-tokio).
pub fn floor_for(kind: Kind) -> System {
    if kind == Kind::FanIn { System::RawTokio } else { System::RawStd }
}

/// One target's verdict for one driver and pinning.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Verdict {
    /// P1..P7.
    pub target: &'static str,
    /// The driver.
    pub system: System,
    /// Pinning (`None` for P6's pin-independent figures).
    pub pin: Option<Pin>,
    /// The measured figure, in words.
    pub measured: String,
    /// The target, in words.
    pub goal: &'static str,
    /// Met or not (`None`: not measured).
    pub met: Option<bool>,
}

/// Knob setting names for reports.
pub fn knob_name(k: &Knobs) -> String {
    let d = Knobs::default();
    let mut parts = Vec::new();
    if k.nodelay != d.nodelay {
        parts.push(format!("nodelay {}", if k.nodelay { "on" } else { "off" }));
    }
    if k.quickack != d.quickack {
        parts.push(format!("quickack {}", if k.quickack { "on" } else { "off" }));
    }
    if k.send_buffer_bytes != d.send_buffer_bytes || k.recv_buffer_bytes != d.recv_buffer_bytes {
        let f = |b: Option<usize>| b.map_or("auto".into(), fmt_size);
        parts.push(format!("sndbuf {} rcvbuf {}", f(k.send_buffer_bytes), f(k.recv_buffer_bytes)));
    }
    if k.batching != d.batching {
        parts.push(format!("batching {}", if k.batching { "on" } else { "off" }));
    }
    if parts.is_empty() { "defaults".into() } else { parts.join(", ") }
}

/// Everything `mf bench` reports.
pub struct Report<'a> {
    /// The runs.
    pub results: &'a Results,
    /// Knob settings by index (0: defaults).
    pub knob_sets: &'a [Knobs],
    /// P6.
    pub probe: &'a Probe,
    /// Pinnings run.
    pub pins: &'a [Pin],
    /// Systems run.
    pub systems: &'a [System],
}

fn pin_words(p: Pin) -> &'static str {
    match p {
        Pin::Same => "client and server on one vCPU",
        Pin::Split => "client and server on different vCPUs",
        Pin::None => "unpinned",
    }
}

impl Report<'_> {
    fn workloads(&self) -> Vec<Workload> {
        let mut v: Vec<Workload> =
            self.results.series.keys().filter(|k| k.knobs == 0).map(|k| k.workload).collect();
        v.sort();
        v.dedup();
        v
    }

    fn key(&self, w: Workload, pin: Pin, system: System) -> Key {
        Key { workload: w, pin, knobs: 0, system }
    }

    fn fig(&self, w: Workload, pin: Pin, system: System) -> Option<Figures> {
        self.results.series.get(&self.key(w, pin, system)).map(|s| figures(s, w.size))
    }

    /// The whole text report (markdown tables).
    pub fn render(&self) -> String {
        let mut o = String::new();
        let std5 = Workload::standard();
        for w in &std5 {
            self.table(&mut o, *w);
        }
        self.size_table(&mut o);
        self.targets_table(&mut o);
        self.knob_table(&mut o);
        self.answers(&mut o);
        if !self.results.failures.is_empty() {
            let _ = writeln!(o, "\n## Failed runs\n");
            for (k, e) in &self.results.failures {
                let _ = writeln!(o, "- {} {} pin {}: {e}", k.system.name(), k.workload.label(), k.pin.name());
            }
        }
        o
    }

    fn table(&self, o: &mut String, w: Workload) {
        if !self.results.series.keys().any(|k| k.workload == w && k.knobs == 0) {
            return;
        }
        let depth =
            if w.kind == Kind::Pipeline { format!(", {} outstanding", w.depth()) } else { String::new() };
        let conns =
            if w.kind == Kind::FanIn { format!(", {} connections", w.connections()) } else { String::new() };
        let _ = writeln!(o, "\n## {}{depth}{conns}\n", w.label());
        let _ = writeln!(
            o,
            "| pin | system | p50 us | p99 us | p99.9 us | calls/s | MiB/s | CPU us/msg | writes/msg | reads/msg | +RSS MiB | vs {} |",
            floor_for(w.kind).name()
        );
        let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
        for &pin in self.pins {
            for &s in self.systems {
                let Some(f) = self.fig(w, pin, s) else { continue };
                let vs = if s == floor_for(w.kind) {
                    "floor".to_string()
                } else {
                    ratio(self.results, self.key(w, pin, s), floor_for(w.kind)).map_or("-".into(), |r| {
                        format!("rate {:.2}x, p50 {:.2}x, p99 {:.2}x", r.throughput, r.p50, r.p99)
                    })
                };
                let _ = writeln!(
                    o,
                    "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.2} | {:.3} | {:.3} | {:.1} | {} |",
                    pin.name(),
                    s.name(),
                    f.p50_us,
                    f.p99_us,
                    f.p999_us,
                    f.calls_per_s,
                    f.mib_per_s,
                    f.cpu_us_per_msg,
                    f.writes_per_msg,
                    f.reads_per_msg,
                    f.rss_growth_mib,
                    vs
                );
            }
        }
    }

    fn size_table(&self, o: &mut String) {
        for kind in [Kind::PingPong, Kind::Pipeline] {
            let sizes: Vec<usize> = {
                let mut v: Vec<usize> =
                    self.workloads().iter().filter(|w| w.kind == kind).map(|w| w.size).collect();
                v.sort();
                v.dedup();
                v
            };
            if sizes.len() < 2 {
                continue;
            }
            let _ = writeln!(
                o,
                "\n## Size sweep: {} {} (MiB/s of requests plus responses; ratio to raw-std run side by side)\n",
                kind.id(),
                kind.name()
            );
            let _ = write!(o, "| pin | size | depth |");
            for s in self.systems {
                let _ = write!(o, " {} |", s.name());
            }
            for s in self.systems.iter().filter(|s| **s != System::RawStd) {
                let _ = write!(o, " {} / raw |", s.name());
            }
            let _ = writeln!(o);
            let _ = writeln!(o, "|---|--:|--:|{}", "--:|".repeat(2 * self.systems.len() - 1));
            for &pin in self.pins {
                for &size in &sizes {
                    let w = Workload { kind, size };
                    let _ = write!(o, "| {} | {} | {} |", pin.name(), fmt_size(size), w.depth());
                    for &s in self.systems {
                        let v = self.fig(w, pin, s).map_or("-".into(), |f| format!("{:.1}", f.mib_per_s));
                        let _ = write!(o, " {v} |");
                    }
                    for &s in self.systems.iter().filter(|s| **s != System::RawStd) {
                        let v = ratio(self.results, self.key(w, pin, s), System::RawStd)
                            .map_or("-".into(), |r| format!("{:.2}x", r.throughput));
                        let _ = write!(o, " {v} |");
                    }
                    let _ = writeln!(o);
                }
            }
        }
    }

    /// P1-P7 for each driver (and pinning, where it matters).
    pub fn verdicts(&self) -> Vec<Verdict> {
        let mut v = Vec::new();
        let std5 = Workload::standard();
        let (w1, w2, w3, w4, w5) = (std5[0], std5[1], std5[2], std5[3], std5[4]);
        for &s in self.systems.iter().filter(|s| s.is_mf()) {
            for &pin in self.pins {
                let r = |w: Workload| ratio(self.results, self.key(w, pin, s), floor_for(w.kind));
                let mut push = |target, measured: String, goal, met| {
                    v.push(Verdict { target, system: s, pin: Some(pin), measured, goal, met })
                };
                match r(w1) {
                    Some(x) => push(
                        "P1",
                        format!("p50 {:.2}x, p99 {:.2}x raw-std", x.p50, x.p99),
                        "p50 <= 1.10x, p99 <= 1.25x",
                        Some(x.p50 <= 1.10 && x.p99 <= 1.25),
                    ),
                    None => push("P1", "not run".into(), "p50 <= 1.10x, p99 <= 1.25x", None),
                }
                let thr = |x: Option<Ratio>, against: &str| {
                    x.map_or("not run".to_string(), |x| format!("{:.2}x {against}", x.throughput))
                };
                let met = |x: Option<Ratio>, goal: f64| x.map(|x| x.throughput >= goal);
                push("P2", thr(r(w2), "raw-std framed-and-batched"), ">= 0.8x", met(r(w2), 0.8));
                push("P3", thr(r(w3), "raw-std"), ">= 0.9x", met(r(w3), 0.9));
                push("P4", thr(r(w4), "raw-std bytes/s"), ">= 0.9x", met(r(w4), 0.9));
                push("P5", thr(r(w5), "raw-tokio aggregate"), ">= 0.9x", met(r(w5), 0.9));
                let p7 = self.fig(w2, pin, s);
                push(
                    "P7",
                    p7.map_or("not run".into(), |f| {
                        format!(
                            "{:.3} writes/msg (client {:.3}/request, server {:.3}/response)",
                            f.writes_per_msg, f.client_writes_per_msg, f.server_writes_per_msg
                        )
                    }),
                    "<= 0.1 write syscalls per message, pipelined",
                    p7.map(|f| f.writes_per_msg <= 0.1),
                );
            }
            let allocs = self.probe.allocs_per_msg.iter().filter(|(x, _, _)| *x == s).map(|(_, _, a)| *a);
            let worst = allocs.clone().fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
            let detail: Vec<String> = self
                .probe
                .allocs_per_msg
                .iter()
                .filter(|(x, _, _)| *x == s)
                .map(|(_, w, a)| format!("{} {a:.3}", w.kind.id()))
                .collect();
            v.push(Verdict {
                target: "P6",
                system: s,
                pin: None,
                measured: format!(
                    "idle session {} B core state (client; server side {}), allocations/msg {}",
                    self.probe.idle_client_bytes,
                    self.probe.idle_server_bytes.map_or("?".into(), |b| format!("{b} B")),
                    if detail.is_empty() { "not measured".into() } else { detail.join(", ") }
                ),
                goal: "idle <= 512 B, <= 1 allocation/msg (to 0.01, the resolution of the differential count)",
                met: worst.map(|a| {
                    a <= 1.0 + ALLOCS_RESOLUTION
                        && self.probe.idle_client_bytes <= 512
                        && self.probe.idle_server_bytes.is_none_or(|b| b <= 512)
                }),
            });
        }
        v.sort_by_key(|x| (x.target, x.system, x.pin));
        v
    }

    fn targets_table(&self, o: &mut String) {
        let _ = writeln!(o, "\n## Targets (BRIEF P1-P7), ratios of runs taken side by side\n");
        let _ = writeln!(o, "| target | driver | pin | measured | goal | verdict |");
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for x in self.verdicts() {
            let verdict = match x.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {verdict} |",
                x.target,
                x.system.name(),
                x.pin.map_or("-", |p| p.name()),
                x.measured,
                x.goal
            );
        }
    }

    /// Run-to-run spread of identical runs: for every default-knob case with
    /// two or more rounds, (max - min) / median of its rates; returns the
    /// median and the 90th percentile of those spreads.
    pub fn spread(&self) -> Option<(f64, f64)> {
        let mut v: Vec<f64> = self
            .results
            .series
            .iter()
            .filter(|(k, s)| k.knobs == 0 && s.rounds.len() >= 2)
            .map(|(_, s)| {
                let rates: Vec<f64> = s.rounds.iter().map(|r| r.rate()).collect();
                let (lo, hi) = rates.iter().fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
                (hi - lo) / median(rates)
            })
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Some((v[v.len() / 2], v[(v.len() * 9 / 10).min(v.len() - 1)]))
    }

    /// The change a knob must make to count as an effect: 20%, or the
    /// run-to-run spread of identical runs if that is larger.
    pub fn effect_threshold(&self) -> f64 {
        self.spread().map_or(0.2, |(_, p90)| p90.max(0.2))
    }

    /// Knob effects: (knob name, workload, system, rate ratio, p50 ratio)
    /// relative to default knobs, same pinning, same system.
    pub fn knob_effects(&self) -> Vec<(String, Workload, Pin, System, f64, f64)> {
        let mut v = Vec::new();
        for (k, series) in &self.results.series {
            if k.knobs == 0 {
                continue;
            }
            let Some(base) = self.results.series.get(&Key { knobs: 0, ..*k }) else { continue };
            let rounds = series.rounds.len().min(base.rounds.len());
            let rate = median((0..rounds).map(|r| series.rounds[r].rate() / base.rounds[r].rate()).collect());
            let p50 = series.hist.value_at_quantile(0.5).max(1) as f64
                / base.hist.value_at_quantile(0.5).max(1) as f64;
            v.push((knob_name(&self.knob_sets[k.knobs]), k.workload, k.pin, k.system, rate, p50));
        }
        v
    }

    fn knob_table(&self, o: &mut String) {
        let effects = self.knob_effects();
        if effects.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "\n## TCP knobs, one at a time (rate and p50 relative to default knobs, same system; full sweep: `mf bench sweep`)\n"
        );
        let _ = writeln!(o, "| knob | workload | pin | system | rate | p50 |");
        let _ = writeln!(o, "|---|---|---|---|--:|--:|");
        for (name, w, pin, s, rate, p50) in &effects {
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} | {rate:.2}x | {p50:.2}x |",
                w.label(),
                pin.name(),
                s.name()
            );
        }
    }

    fn answers(&self, o: &mut String) {
        let _ = writeln!(o, "\n## Answers\n");
        let _ =
            writeln!(o, "**1. What does a message API cost over a raw TCP stream for message workloads?**\n");
        for w in Workload::standard() {
            for &pin in self.pins {
                let parts: Vec<String> = self
                    .systems
                    .iter()
                    .filter(|s| s.is_mf())
                    .filter_map(|&s| {
                        let r = ratio(self.results, self.key(w, pin, s), floor_for(w.kind))?;
                        Some(if w.kind == Kind::PingPong {
                            format!("{} p50 {:.2}x / p99 {:.2}x", s.name(), r.p50, r.p99)
                        } else {
                            format!("{} {:.2}x the rate", s.name(), r.throughput)
                        })
                    })
                    .collect();
                if parts.is_empty() {
                    continue;
                }
                let floor = self
                    .fig(w, pin, floor_for(w.kind))
                    .map(|f| {
                        if w.kind == Kind::PingPong {
                            format!("{:.1} us p50", f.p50_us)
                        } else if w.kind == Kind::Large {
                            format!("{:.0} MiB/s", f.mib_per_s)
                        } else {
                            format!("{:.0} calls/s", f.calls_per_s)
                        }
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    o,
                    "- {} ({}): {} against {} ({floor}).",
                    w.label(),
                    pin_words(pin),
                    parts.join("; "),
                    floor_for(w.kind).name()
                );
            }
        }
        let _ = writeln!(o, "\n**2. Which TCP socket parameters matter for them?**\n");
        let threshold = self.effect_threshold();
        if let Some((median, p90)) = self.spread() {
            let _ = writeln!(
                o,
                "Run-to-run spread of identical runs in this invocation: median {:.0}%, 90th percentile {:.0}%; \
                 a knob counts when it moves the rate or p50 by more than {:.0}%.\n",
                median * 100.0,
                p90 * 100.0,
                threshold * 100.0
            );
        }
        let effects = self.knob_effects();
        if effects.is_empty() {
            let _ = writeln!(o, "- (knob check skipped; run `mf bench sweep`)");
            return;
        }
        let mut names: Vec<String> = effects.iter().map(|e| e.0.clone()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let mine: Vec<_> = effects.iter().filter(|e| e.0 == name).collect();
            let big: Vec<String> = mine
                .iter()
                .filter(|e| big_change(e.4, threshold) || big_change(e.5, threshold))
                .map(|e| format!("{} {} rate {:.2}x p50 {:.2}x", e.3.name(), e.1.kind.id(), e.4, e.5))
                .collect();
            if big.is_empty() {
                let _ = writeln!(
                    o,
                    "- {name}: no change beyond {:.0}% on W1-W3 at 64 B for any system.",
                    threshold * 100.0
                );
            } else {
                let _ = writeln!(o, "- {name}: {}.", big.join("; "));
            }
        }
    }

    /// Write one JSON record per series (system x workload x pinning x knobs).
    pub fn write_json(&self, path: &Path) -> std::io::Result<usize> {
        #[derive(serde::Serialize)]
        struct Record<'a> {
            system: System,
            workload: &'static str,
            kind: &'static str,
            size_bytes: usize,
            depth: usize,
            connections: usize,
            pin: Pin,
            knobs: &'a Knobs,
            knobs_name: String,
            rounds: usize,
            #[serde(flatten)]
            figures: Figures,
            ratio: Option<Ratio>,
        }
        #[derive(serde::Serialize)]
        struct Doc<'a> {
            load_average: String,
            records: Vec<Record<'a>>,
            targets: Vec<Verdict>,
            idle_session_client_bytes: usize,
            idle_session_server_bytes: Option<usize>,
            allocations_per_msg: Vec<(System, &'static str, f64)>,
        }
        let records: Vec<Record> = self
            .results
            .series
            .iter()
            .map(|(k, s)| {
                let floor = floor_for(k.workload.kind);
                Record {
                    system: k.system,
                    workload: k.workload.kind.id(),
                    kind: k.workload.kind.name(),
                    size_bytes: k.workload.size,
                    depth: k.workload.depth(),
                    connections: k.workload.connections(),
                    pin: k.pin,
                    knobs: &self.knob_sets[k.knobs],
                    knobs_name: knob_name(&self.knob_sets[k.knobs]),
                    rounds: s.rounds.len(),
                    figures: figures(s, k.workload.size),
                    ratio: if k.system == floor { None } else { ratio(self.results, *k, floor) },
                }
            })
            .collect();
        let n = records.len();
        let doc = Doc {
            load_average: load_average(),
            records,
            targets: self.verdicts(),
            idle_session_client_bytes: self.probe.idle_client_bytes,
            idle_session_server_bytes: self.probe.idle_server_bytes,
            allocations_per_msg: self
                .probe
                .allocs_per_msg
                .iter()
                .map(|(s, w, a)| (*s, w.kind.id(), *a))
                .collect(),
        };
        let text = serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)?;
        std::fs::write(path, text)?;
        Ok(n)
    }
}
