//! # mf-sim: deterministic network-fault simulation for MessageFirst
//!
//! One server and N clients (up to 64) run the real tokio driver
//! ([`mf_driver_tokio`]) on turmoil's simulated TCP. Clients send one-way
//! messages and calls on several channels (some cancelled mid-flight, some
//! with short deadlines); the server answers (some after a delay, some
//! rejected) and sends messages back. A schedule of faults drawn from the
//! seed strikes meanwhile ([`Scenario`]): partitions, held links, latency
//! and jitter, message loss, connection breaks, server crash and restart.
//!
//! Every body carries its own identity, and every send, arrival and outcome
//! goes to [`mf_core::testing::Checker`], which checks the contract over the
//! whole history: exactly once (C2), order per channel (C3), receipts (C4),
//! every call answered once or failed with a reason (C6), every message one
//! outcome. Then **liveness**: once the faults are healed, everything still
//! pending must complete within [`SimConfig::settle_ms`] of simulated time.
//!
//! A run is a function of its seed: turmoil's `rng_seed`, the workload, the
//! fault schedule, and every session token derive from it, and all drivers
//! use `select! { biased; .. }`. [`run`] returns the trace hash so tests can
//! assert that a seed replays identically, and every failure names the
//! command that replays it.
//!
//! ```
//! use mf_sim::{run, Scenario, SimConfig};
//! let cfg = SimConfig { clients: 2, ops_per_client: 10, ..SimConfig::new(Scenario::Break) };
//! let report = run(7, &cfg).unwrap();
//! // 20 from the clients, plus what the server sent them.
//! assert!(report.checked() >= 20);
//! println!("seed {}: {} faults, trace {:016x}", report.seed, report.faults, report.trace_hash);
//! ```

#![deny(missing_docs)]

pub mod breakable;
pub mod faults;
pub mod history;

pub use faults::{Fault, Scenario, Scheduled};
pub use history::History;

use breakable::{BreakSwitch, Breakable};
use mf_core::testing::checker::{self, Kind, Summary, parse};
use mf_core::testing::scenario::SERVER_ORIGIN;
use mf_core::{Config, FailReason, Fate, Incoming, seed_from_u64};
use mf_driver_tokio::transport::{TurmoilConnector, TurmoilListener};
use mf_driver_tokio::{
    CallError, Client, ClientOptions, ReceiptError, SendError, Server, ServerOptions, SessionId,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

/// The port the simulated server listens on.
const PORT: u16 = 7070;
/// Most clients a run supports.
pub const CLIENTS_MAX: usize = 64;

/// What a run does.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Which faults.
    pub scenario: Scenario,
    /// Clients (1..=64).
    pub clients: usize,
    /// Messages plus calls each client issues.
    pub ops_per_client: u64,
    /// Channels used (0..channels).
    pub channels: u16,
    /// Percent of operations that are calls.
    pub call_pct: u8,
    /// Percent of calls dropped by the caller before their outcome (cancel safety).
    pub cancel_pct: u8,
    /// Percent of calls with a short deadline.
    pub short_deadline_pct: u8,
    /// Percent of bodies that are large (fragmented).
    pub large_pct: u8,
    /// Largest large body.
    pub large_bytes_max: usize,
    /// Percent of requests the server rejects.
    pub reject_pct: u8,
    /// Percent of requests the server answers after a delay.
    pub slow_pct: u8,
    /// Mean milliseconds between server-to-client messages (0: none).
    pub server_send_every_ms: u64,
    /// Mean milliseconds between a client's operations.
    pub op_gap_ms: u64,
    /// Faults drawn per run (not for `calm`).
    pub faults: usize,
    /// Faults strike within this many milliseconds of the start.
    pub fault_window_ms: u64,
    /// The liveness bound: after the last fault is healed (and the workload
    /// is issued), everything pending must complete within this much
    /// simulated time.
    pub settle_ms: u64,
    /// Bound on the loaded phase (simulated ms); exceeding it is a violation.
    pub workload_ms_max: u64,
    /// Protocol settings for both sides.
    pub protocol: Config,
}

impl SimConfig {
    /// Defaults for `scenario`: 3 clients, 24 operations each, fast timers
    /// ([`mf_core::testing::scenario::fast_config`]).
    pub fn new(scenario: Scenario) -> Self {
        SimConfig {
            scenario,
            clients: 3,
            ops_per_client: 24,
            channels: 3,
            call_pct: 40,
            cancel_pct: 10,
            short_deadline_pct: 10,
            large_pct: 10,
            large_bytes_max: 5000,
            reject_pct: 5,
            slow_pct: 20,
            server_send_every_ms: 40,
            op_gap_ms: 40,
            faults: 4,
            fault_window_ms: 2_000,
            settle_ms: 20_000,
            workload_ms_max: 120_000,
            protocol: mf_core::testing::scenario::fast_config(),
        }
    }

    /// The `mf sim` command that replays `seed` with this configuration.
    pub fn replay_command(&self, seed: u64) -> String {
        let mut cmd = format!(
            "cargo run --release -p mf-cli -- sim --seed {seed} --scenario {} --clients {} --ops {}",
            self.scenario, self.clients, self.ops_per_client
        );
        let default = SimConfig::new(self.scenario);
        if self.settle_ms != default.settle_ms {
            cmd += &format!(" --settle-ms {}", self.settle_ms);
        }
        if self.faults != default.faults {
            cmd += &format!(" --faults {}", self.faults);
        }
        if self.protocol.fault_disable_dedup {
            cmd += " --fault-disable-dedup";
        }
        cmd
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Faults injected.
    pub faults: u64,
    /// Client sessions lost and replaced.
    pub sessions_renewed: u64,
    /// The checker's totals.
    pub summary: Summary,
    /// Simulated milliseconds, start to settled.
    pub sim_ms: u64,
    /// Simulated milliseconds from healed to settled (within `settle_ms`).
    pub settle_ms: u64,
    /// Hash of the event trace (equal seeds give equal hashes).
    pub trace_hash: u64,
    /// Events in the trace.
    pub trace_events: u64,
}

impl Report {
    /// Messages and calls the checker tracked.
    pub fn checked(&self) -> u64 {
        self.summary.messages + self.summary.calls
    }
}

/// A failed run: the seed, every violation, and the command that replays it.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// What broke.
    pub violations: Vec<String>,
    /// The one command that replays this run.
    pub replay: String,
    /// Faults injected before the end.
    pub faults: u64,
    /// Simulated ms the run settled after healing (of the liveness bound),
    /// if it got that far.
    pub settled_ms: Option<u64>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {}: {} violation(s) after {} faults:",
            self.seed,
            self.violations.len(),
            self.faults
        )?;
        for v in &self.violations {
            writeln!(f, "  {v}")?;
        }
        write!(f, "replay: {}", self.replay)
    }
}

impl std::error::Error for SimFailure {}

/// State shared by the simulated hosts and the harness (turmoil runs every
/// host on one thread).
struct Shared {
    seed: u64,
    cfg: SimConfig,
    history: History,
    switches: Vec<BreakSwitch>,
    server_incarnation: Cell<u64>,
    /// Next sequence number of each server-side sender (survives restarts,
    /// so bodies stay unique).
    server_seq: RefCell<BTreeMap<u32, u64>>,
    clients_done: Cell<usize>,
    renewed: Cell<u64>,
    /// Each client's current session, for the end-of-run report.
    current: RefCell<Vec<Option<Client>>>,
}

fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut s = ChaCha8Rng::seed_from_u64(seed);
    s.set_stream(stream);
    s
}

fn pct(rng: &mut ChaCha8Rng, p: u8) -> bool {
    rng.next_u64() % 100 < p as u64
}

fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    if n == 0 { 0 } else { rng.next_u64() % n }
}

fn client_name(i: usize) -> String {
    format!("c{i}")
}

/// Run one seed: build the simulation, run the workload under the seed's
/// fault schedule, heal, settle, and check the whole history.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<Report, SimFailure> {
    let clients = cfg.clients.clamp(1, CLIENTS_MAX);
    let cfg = SimConfig { clients, ..cfg.clone() };
    let sh = Rc::new(Shared {
        seed,
        cfg: cfg.clone(),
        history: History::default(),
        switches: (0..clients).map(|_| BreakSwitch::default()).collect(),
        server_incarnation: Cell::new(0),
        server_seq: RefCell::new(BTreeMap::new()),
        clients_done: Cell::new(0),
        renewed: Cell::new(0),
        current: RefCell::new(vec![None; clients]),
    });
    let fail = |sh: &Shared, faults: u64, violations: Vec<String>| SimFailure {
        seed,
        violations,
        replay: sh.cfg.replay_command(seed),
        faults,
        settled_ms: None,
    };

    let base_min = Duration::from_millis(1);
    let base_max = Duration::from_millis(3);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_millis(cfg.workload_ms_max + cfg.settle_ms + 60_000))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(base_min)
        .max_message_latency(base_max)
        .repair_rate(0.05)
        .build();

    let host_sh = sh.clone();
    sim.host("server", move || server_app(host_sh.clone()));
    for i in 0..clients {
        sim.client(client_name(i), client_app(i, sh.clone()));
    }

    let mut rng = rng_for(seed, 1);
    let schedule = faults::schedule(
        &mut rng,
        cfg.scenario,
        clients,
        cfg.fault_window_ms,
        cfg.faults,
        cfg.protocol.resume_timeout_ms,
    );
    // (at_ms, index into schedule) of pending heals.
    let mut heals: Vec<(u64, usize)> = Vec::new();
    let mut next = 0;
    let mut faults = 0u64;
    let mut server_down = false;

    let step = |sim: &mut turmoil::Sim<'_>, faults: u64| -> Result<(), SimFailure> {
        sim.step().map(|_| ()).map_err(|e| fail(&sh, faults, vec![format!("a simulated host failed: {e}")]))
    };

    // The loaded phase: the workload runs while faults strike and heal.
    loop {
        let now_ms = sim.elapsed().as_millis() as u64;
        while next < schedule.len() && schedule[next].at_ms <= now_ms {
            let s = schedule[next];
            faults += 1;
            sh.history.trace_at(sim.elapsed().as_micros() as u64, &format!("fault {:?}", s.fault));
            if let Some(ms) = apply(&mut sim, &sh, s.fault, &mut server_down) {
                heals.push((now_ms + ms, next));
            }
            next += 1;
        }
        heals.retain(|&(at, k)| {
            if at <= now_ms {
                heal(&mut sim, &sh, schedule[k].fault, &mut server_down, base_min, base_max);
                false
            } else {
                true
            }
        });
        if next == schedule.len() && heals.is_empty() && sh.clients_done.get() == clients {
            break;
        }
        if now_ms > cfg.workload_ms_max {
            let v = format!(
                "liveness: the workload did not finish within {} ms ({} of {clients} clients done)",
                cfg.workload_ms_max,
                sh.clients_done.get()
            );
            return Err(fail(&sh, faults, vec![v]));
        }
        step(&mut sim, faults)?;
    }
    for &(_, k) in &heals {
        heal(&mut sim, &sh, schedule[k].fault, &mut server_down, base_min, base_max);
    }

    // Settle: everything pending must complete within the liveness bound.
    let healed_ms = sim.elapsed().as_millis() as u64;
    let mut quiet = 0;
    while (sim.elapsed().as_millis() as u64) < healed_ms + cfg.settle_ms {
        step(&mut sim, faults)?;
        if sh.history.pending() == 0 {
            quiet += 1;
            // A few more ticks so late duplicates would still show.
            if quiet > 50 {
                break;
            }
        } else {
            quiet = 0;
        }
    }
    let end_ms = sim.elapsed().as_millis() as u64;
    if std::env::var_os("MF_SIM_TRACE").is_some_and(|v| v == "1") {
        for (i, c) in sh.current.borrow().iter().enumerate() {
            if let Some(c) = c {
                println!("client {i}: {:?} {:?}", c.state(), c.stats());
            }
        }
    }
    let (trace_hash, trace_events) = sh.history.trace_hash();
    let report = Report {
        seed,
        faults,
        sessions_renewed: sh.renewed.get(),
        summary: sh.history.summary(),
        sim_ms: end_ms,
        settle_ms: end_ms - healed_ms,
        trace_hash,
        trace_events,
    };
    let result = sh.history.finish();
    drop(sim);
    match result {
        Ok(summary) => Ok(Report { summary, ..report }),
        Err(v) => Err(SimFailure { settled_ms: Some(report.settle_ms), ..fail(&sh, faults, v) }),
    }
}

/// Inject a fault; returns after how many ms it heals, if it does.
fn apply(sim: &mut turmoil::Sim<'_>, sh: &Shared, f: Fault, server_down: &mut bool) -> Option<u64> {
    match f {
        Fault::Partition { client, ms } => {
            sim.partition("server", client_name(client));
            Some(ms)
        }
        Fault::Hold { client, ms } => {
            sim.hold("server", client_name(client));
            Some(ms)
        }
        Fault::Latency { client, latency_ms, jitter_ms, ms } => {
            let c = client_name(client);
            sim.set_link_latency("server", c.as_str(), Duration::from_millis(latency_ms));
            sim.set_link_max_message_latency(
                "server",
                c.as_str(),
                Duration::from_millis(latency_ms + jitter_ms),
            );
            Some(ms)
        }
        Fault::Loss { client, permille, ms } => {
            sim.set_link_fail_rate("server", client_name(client), permille as f64 / 1000.0);
            Some(ms)
        }
        Fault::Break { client } => {
            sh.switches[client].break_all();
            None
        }
        Fault::Crash { down_ms } => {
            if *server_down {
                return None;
            }
            // The server process dies with everything it held: what it had
            // sent has no sender left to hear the outcome.
            sim.crash("server");
            *server_down = true;
            sh.history.abandon("server", |o| o >= SERVER_ORIGIN);
            Some(down_ms)
        }
    }
}

fn heal(
    sim: &mut turmoil::Sim<'_>,
    sh: &Shared,
    f: Fault,
    server_down: &mut bool,
    base_min: Duration,
    base_max: Duration,
) {
    sh.history.trace_at(sim.elapsed().as_micros() as u64, &format!("heal {f:?}"));
    match f {
        Fault::Partition { client, .. } => sim.repair("server", client_name(client)),
        Fault::Hold { client, .. } => sim.release("server", client_name(client)),
        Fault::Latency { client, .. } => {
            let c = client_name(client);
            sim.set_link_latency("server", c.as_str(), base_min);
            sim.set_link_max_message_latency("server", c.as_str(), base_max);
        }
        Fault::Loss { client, .. } => {
            sim.set_link_fail_rate("server", client_name(client), 0.0);
            // A lost segment leaves the link randomly partitioned until
            // turmoil repairs it; repair now so the settle phase is healed.
            sim.repair("server", client_name(client));
        }
        Fault::Break { .. } => {}
        Fault::Crash { .. } => {
            if *server_down {
                sim.bounce("server");
                *server_down = false;
            }
        }
    }
}

// --- the simulated applications ----------------------------------------------

fn new_client(sh: &Shared, i: usize, session: u64) -> Client {
    let seed = seed_from_u64(sh.seed ^ ((i as u64 + 1) << 32) ^ (session << 48) ^ 0x5eed);
    let connector = Breakable::new(TurmoilConnector::new("server", PORT), sh.switches[i].clone());
    let options = ClientOptions::new(sh.cfg.protocol.clone()).with_seed(seed);
    let client = match Client::start(connector, options) {
        Ok(c) => c,
        Err(e) => panic!("the simulation's protocol config is invalid: {e}"),
    };
    sh.current.borrow_mut()[i] = Some(client.clone());
    client
}

/// Take everything the server sends to this session until it ends.
async fn client_receiver(client: Client, sh: Rc<Shared>) {
    while let Some(m) = client.recv().await {
        sh.history.arrived(m.body());
    }
}

async fn track_receipt(sh: Rc<Shared>, origin: u32, seq: u64, receipt: mf_driver_tokio::Receipt) {
    match receipt.await {
        Ok(()) => sh.history.receipt(origin, seq),
        Err(ReceiptError::Failed(f)) => sh.history.send_failed(origin, seq, f.fate),
        Err(e) => sh.history.violation(format!("receipt of {origin}/{seq}: {e}")),
    }
}

async fn track_call(
    sh: Rc<Shared>,
    origin: u32,
    seq: u64,
    mut pending: mf_driver_tokio::PendingCall,
    cancel_after_ms: Option<u64>,
) {
    let r = match cancel_after_ms {
        None => (&mut pending).await,
        Some(ms) => {
            tokio::select! {
                biased;
                r = &mut pending => r,
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {
                    // The caller gives up: dropping the call cancels it. The
                    // server may or may not have taken it; it must not take
                    // it twice, and no second outcome may follow.
                    drop(pending);
                    sh.history.call_failed(origin, seq, FailReason::Cancelled, Fate::Unknown);
                    return;
                }
            }
        }
    };
    match r {
        Ok(body) => sh.history.response(origin, seq, &body),
        Err(CallError::Failed(f)) => sh.history.call_failed(origin, seq, f.reason, f.fate),
        Err(e) => sh.history.violation(format!("call {origin}/{seq}: {e}")),
    }
}

async fn client_app(i: usize, sh: Rc<Shared>) -> turmoil::Result {
    let origin = i as u32;
    let mut rng = rng_for(sh.seed, 100 + i as u64);
    let mut session = 0u64;
    let mut client = new_client(&sh, i, session);
    tokio::task::spawn_local(client_receiver(client.clone(), sh.clone()));
    let mut seq = 0u64;
    let cfg = sh.cfg.clone();
    // Bounded: every iteration either issues an operation or renews a lost
    // session, and the harness bounds simulated time.
    while seq < cfg.ops_per_client {
        if client.session_ended().is_some() {
            session += 1;
            sh.renewed.set(sh.renewed.get() + 1);
            sh.history.trace(&format!("renew {i}"));
            client = new_client(&sh, i, session);
            tokio::task::spawn_local(client_receiver(client.clone(), sh.clone()));
        }
        tokio::time::sleep(Duration::from_millis(below(&mut rng, 2 * cfg.op_gap_ms + 1))).await;
        let channel = below(&mut rng, cfg.channels.max(1) as u64) as u16;
        let extra = if pct(&mut rng, cfg.large_pct) {
            below(&mut rng, cfg.large_bytes_max as u64 + 1) as usize
        } else {
            below(&mut rng, 64) as usize
        };
        if pct(&mut rng, cfg.call_pct) {
            let body = checker::payload(Kind::Request, origin, seq, channel, extra);
            let timeout =
                pct(&mut rng, cfg.short_deadline_pct).then(|| Duration::from_millis(1 + below(&mut rng, 30)));
            let cancel = pct(&mut rng, cfg.cancel_pct).then(|| below(&mut rng, 30));
            match client.try_call(channel, body, timeout) {
                Ok(pending) => {
                    sh.history.called(origin, seq, channel);
                    seq += 1;
                    tokio::task::spawn_local(track_call(sh.clone(), origin, seq - 1, pending, cancel));
                }
                Err(SendError::Full(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(SendError::Closed(_)) => {}
                Err(e) => sh.history.violation(format!("call {origin}/{seq} refused: {e}")),
            }
        } else {
            let body = checker::payload(Kind::Message, origin, seq, channel, extra);
            match client.send(channel, body).await {
                Ok(receipt) => {
                    sh.history.sent(origin, seq, channel);
                    seq += 1;
                    tokio::task::spawn_local(track_receipt(sh.clone(), origin, seq - 1, receipt));
                }
                Err(SendError::Closed(_)) => {}
                Err(e) => sh.history.violation(format!("send {origin}/{seq} refused: {e}")),
            }
        }
    }
    sh.clients_done.set(sh.clients_done.get() + 1);
    sh.history.trace(&format!("client {i} issued its workload"));
    // Keep the session (and its pending outcomes) alive while the harness
    // settles the run.
    std::future::pending::<()>().await;
    drop(client);
    Ok(())
}

async fn server_app(sh: Rc<Shared>) -> turmoil::Result {
    let incarnation = sh.server_incarnation.get();
    sh.server_incarnation.set(incarnation + 1);
    sh.history.trace(&format!("server start {incarnation}"));
    let listener = TurmoilListener::bind(PORT).await?;
    let seed = seed_from_u64(sh.seed ^ 0x5e4e_e000 ^ (incarnation << 40));
    let options = ServerOptions::new(sh.cfg.protocol.clone()).with_seed(seed);
    let server = Server::start(listener, options)?;
    let mut rng = rng_for(sh.seed, 1000 + incarnation);
    let cfg = sh.cfg.clone();
    // Which client each session belongs to (learned from the bodies).
    let mut sessions: BTreeMap<SessionId, u32> = BTreeMap::new();
    let mut send_timer = Box::pin(tokio::time::sleep(Duration::from_millis(below(
        &mut rng,
        2 * cfg.server_send_every_ms + 1,
    ))));
    loop {
        tokio::select! {
            biased;
            item = server.recv() => {
                let Some((sid, item)) = item else { break };
                sh.history.arrived(item.body());
                if let Ok(tag) = parse(item.body()) {
                    sessions.insert(sid, tag.origin);
                }
                if let Incoming::Request { id, body, .. } = item {
                    if pct(&mut rng, cfg.reject_pct) {
                        server.reject(sid, id, 7);
                    } else if pct(&mut rng, cfg.slow_pct) {
                        let delay = Duration::from_millis(1 + below(&mut rng, 40));
                        let server = server.clone();
                        tokio::task::spawn_local(async move {
                            tokio::time::sleep(delay).await;
                            let _ = server.respond(sid, id, checker::response_for(&body));
                        });
                    } else {
                        let _ = server.respond(sid, id, checker::response_for(&body));
                    }
                }
            }
            _ = &mut send_timer, if cfg.server_send_every_ms > 0 => {
                send_timer.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(
                    1 + below(&mut rng, 2 * cfg.server_send_every_ms),
                ));
                if sessions.is_empty() {
                    continue;
                }
                let k = below(&mut rng, sessions.len() as u64) as usize;
                let Some((&sid, &client)) = sessions.iter().nth(k) else { continue };
                let origin = SERVER_ORIGIN + client;
                let seq = *sh.server_seq.borrow().get(&origin).unwrap_or(&0);
                let channel = below(&mut rng, cfg.channels.max(1) as u64) as u16;
                let body = checker::payload(Kind::Message, origin, seq, channel, below(&mut rng, 64) as usize);
                match server.try_send(sid, channel, body) {
                    Ok(receipt) => {
                        sh.server_seq.borrow_mut().insert(origin, seq + 1);
                        sh.history.sent(origin, seq, channel);
                        tokio::task::spawn_local(track_receipt(sh.clone(), origin, seq, receipt));
                    }
                    Err(SendError::Closed(_)) => {
                        sessions.remove(&sid);
                    }
                    Err(_) => {}
                }
            }
        }
    }
    Ok(())
}
