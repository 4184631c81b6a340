//! A workload and fault harness over [`SimNet`], checked by [`Checker`]:
//! clients send messages and calls on several channels (some fragmented,
//! some with short deadlines), the server answers, sends messages back,
//! sometimes rejects; faults cut connections at random byte offsets, stall
//! them, partition clients, restart the server. Random runs come from a seed
//! ([`run`]); fuzzing drives the same harness with [`Op`] sequences.

use super::checker::{self, Checker, Kind, Summary};
use super::net::{Dir, NetConfig, NetEvent, SimNet};
use crate::{Config, Event, Incoming, Instant, MsgId, ReqId, ServerEvent, SessionId, Token};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::time::Duration;

/// Server-side senders get origins above this (origin = base + client index).
pub const SERVER_ORIGIN: u32 = 1 << 31;

/// Protocol settings with fast timers, so faults heal within simulated seconds.
pub fn fast_config() -> Config {
    Config {
        keepalive_interval_ms: 100,
        idle_timeout_ms: 400,
        handshake_timeout_ms: 400,
        reconnect_backoff_min_ms: 5,
        reconnect_backoff_max_ms: 100,
        resume_timeout_ms: 3_000,
        session_linger_ms: 6_000,
        close_timeout_ms: 1_000,
        fragment_bytes: 1024,
        window_msgs_max: 64,
        window_bytes_max: 64 << 10,
        send_queue_msgs_max: 256,
        calls_in_flight_max: 64,
        requests_open_max: 64,
        reassembly_max: 4,
        ..Config::default()
    }
}

/// What a random run does.
#[derive(Clone, Debug)]
pub struct ScenarioConfig {
    /// Clients.
    pub clients: usize,
    /// Messages plus calls each client issues.
    pub ops_per_client: u64,
    /// Channels used (0..channels).
    pub channels: u16,
    /// Percent of operations that are calls.
    pub call_pct: u8,
    /// Percent of bodies that are large (fragmented).
    pub large_pct: u8,
    /// Largest large body.
    pub large_bytes_max: usize,
    /// Percent of calls with a deadline short enough to expire now and then.
    pub short_deadline_pct: u8,
    /// Percent of steps in which the server sends a message to some client.
    pub server_send_pct: u8,
    /// Percent of requests the server rejects.
    pub reject_pct: u8,
    /// Percent of requests the server answers late (up to 200 steps).
    pub hold_pct: u8,
    /// Mean steps between faults (0: no faults).
    pub fault_every_steps: u64,
    /// Allow server restarts among the faults.
    pub restarts: bool,
    /// Step limit for the loaded phase.
    pub steps_max: u64,
    /// Simulated time allowed to settle after the last fault (liveness bound).
    pub settle_ms: u64,
    /// Protocol settings for both sides.
    pub protocol: Config,
    /// Network behaviour.
    pub net: NetConfig,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        ScenarioConfig {
            clients: 3,
            ops_per_client: 120,
            channels: 3,
            call_pct: 40,
            large_pct: 10,
            large_bytes_max: 6000,
            short_deadline_pct: 10,
            server_send_pct: 10,
            reject_pct: 5,
            hold_pct: 15,
            fault_every_steps: 40,
            restarts: true,
            steps_max: 20_000,
            settle_ms: 20_000,
            protocol: fast_config(),
            net: NetConfig { latency_us: 200, jitter_us: 100, chunk_bytes_max: 300 },
        }
    }
}

/// A fault the harness can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Reset the client's connection now.
    Cut(usize),
    /// Reset it after `bytes` more bytes in one direction.
    CutAfter(usize, Dir, u64),
    /// Silently stop delivering on it.
    Stall(usize),
    /// Partition the client for this many milliseconds.
    Partition(usize, u64),
    /// Restart the server (it forgets every session).
    RestartServer,
}

#[derive(Default)]
struct ClientApp {
    next_seq: u64,
    msgs: BTreeMap<MsgId, u64>,
    calls: BTreeMap<ReqId, u64>,
    sessions: u32,
    ops_left: u64,
}

/// Totals of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed (replays the run).
    pub seed: u64,
    /// Steps taken.
    pub steps: u64,
    /// Simulated time at the end.
    pub sim_time: Instant,
    /// Faults injected.
    pub faults: u64,
    /// Sessions that ended and were replaced.
    pub sessions_renewed: u64,
    /// What the checker counted.
    pub summary: Summary,
    /// Hash of the event trace (equal for equal seeds).
    pub trace_hash: u64,
}

/// Clients, a server application and the checker over a [`SimNet`].
pub struct Harness {
    /// The network.
    pub net: SimNet,
    /// The history.
    pub checker: Checker,
    protocol: Config,
    apps: Vec<ClientApp>,
    by_token: BTreeMap<Token, usize>,
    server_seq: BTreeMap<u32, u64>,
    server_msgs: BTreeMap<(SessionId, MsgId), (u32, u64)>,
    partitions: Vec<(usize, Instant)>,
    rng: ChaCha8Rng,
    /// Faults injected.
    pub faults: u64,
    /// Sessions replaced after ending.
    pub renewed: u64,
    reject_pct: u8,
    /// Requests the server application sits on: answered later (after the
    /// client may have given up), to catch late answers reaching new calls.
    held: Vec<(SessionId, ReqId, bytes::Bytes, u64)>,
    hold_pct: u8,
    trace: u64,
}

fn fnv(h: u64, s: &str) -> u64 {
    s.bytes().fold(h, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

impl Harness {
    /// `clients` connected clients on a fresh network.
    pub fn new(seed: u64, clients: usize, protocol: Config, net: NetConfig) -> Self {
        let mut h = Harness {
            net: SimNet::new(seed, protocol.clone(), net),
            checker: Checker::new(),
            protocol,
            apps: Vec::new(),
            by_token: BTreeMap::new(),
            server_seq: BTreeMap::new(),
            server_msgs: BTreeMap::new(),
            partitions: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            faults: 0,
            renewed: 0,
            reject_pct: 0,
            held: Vec::new(),
            hold_pct: 0,
            trace: 0xcbf2_9ce4_8422_2325,
        };
        for _ in 0..clients {
            let i = h.net.add_client(h.protocol.clone());
            h.apps.push(ClientApp::default());
            let t = h.net.client(i).token();
            h.by_token.insert(t, i);
            h.net.connect(i);
        }
        h
    }

    /// Set the share of requests the server application rejects.
    pub fn set_reject_pct(&mut self, pct: u8) {
        self.reject_pct = pct;
    }

    /// Set the share of requests the server application answers late (after
    /// up to 200 steps), possibly after the call's deadline.
    pub fn set_hold_pct(&mut self, pct: u8) {
        self.hold_pct = pct;
    }

    /// The trace hash so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    fn body(&mut self, kind: Kind, origin: u32, seq: u64, channel: u16, extra: usize) -> bytes::Bytes {
        checker::payload(kind, origin, seq, channel, extra)
    }

    /// Client `i` sends a message; false if refused (queue full, closed).
    pub fn send(&mut self, i: usize, channel: u16, extra: usize) -> bool {
        let seq = self.apps[i].next_seq;
        let body = self.body(Kind::Message, i as u32, seq, channel, extra);
        match self.net.client(i).send(channel, body) {
            Ok(id) => {
                self.apps[i].next_seq += 1;
                self.apps[i].msgs.insert(id, seq);
                self.checker.sent(i as u32, seq, channel);
                true
            }
            Err(_) => false,
        }
    }

    /// Client `i` calls; false if refused.
    pub fn call(&mut self, i: usize, channel: u16, extra: usize, timeout_ms: Option<u64>) -> bool {
        let seq = self.apps[i].next_seq;
        let body = self.body(Kind::Request, i as u32, seq, channel, extra);
        let deadline = timeout_ms.map(|ms| self.net.now().add_millis(ms));
        match self.net.client(i).call(channel, body, deadline) {
            Ok(id) => {
                self.apps[i].next_seq += 1;
                self.apps[i].calls.insert(id, seq);
                self.checker.called(i as u32, seq, channel);
                true
            }
            Err(_) => false,
        }
    }

    /// Client `i` cancels its oldest call in flight.
    pub fn cancel_oldest(&mut self, i: usize) {
        if let Some((&id, _)) = self.apps[i].calls.iter().next() {
            self.net.client(i).cancel(id);
        }
    }

    /// The server sends a message to client `i`'s session, if it has one.
    pub fn server_send(&mut self, i: usize, channel: u16, extra: usize) -> bool {
        let token = self.net.client(i).token();
        let Some(sid) = self.net.server.session_by_token(&token) else {
            return false;
        };
        let origin = SERVER_ORIGIN + i as u32;
        let seq = *self.server_seq.get(&origin).unwrap_or(&0);
        let body = self.body(Kind::Message, origin, seq, channel, extra);
        let now = self.net.now();
        match self.net.server.send(now, sid, channel, body) {
            Ok(id) => {
                self.server_seq.insert(origin, seq + 1);
                self.server_msgs.insert((sid, id), (origin, seq));
                self.checker.sent(origin, seq, channel);
                true
            }
            Err(_) => false,
        }
    }

    /// The server application takes up to `max` items, answering requests.
    pub fn consume_server(&mut self, max: usize) {
        let now = self.net.now();
        let step = self.net.steps();
        let mut k = 0;
        while k < self.held.len() {
            if self.held[k].3 <= step {
                let (sid, id, body, _) = self.held.swap_remove(k);
                let _ = self.net.server.respond(now, sid, id, checker::response_for(&body));
            } else {
                k += 1;
            }
        }
        for _ in 0..max {
            let Some((sid, item)) = self.net.server.recv(now) else {
                break;
            };
            self.checker.arrived(item.body());
            if let Incoming::Request { id, body, .. } = item {
                if self.reject_pct > 0 && (self.rng.next_u64() % 100) < self.reject_pct as u64 {
                    self.net.server.reject(now, sid, id, 7);
                } else if self.hold_pct > 0 && (self.rng.next_u64() % 100) < self.hold_pct as u64 {
                    let until = step + 1 + self.rng.next_u64() % 200;
                    self.held.push((sid, id, body, until));
                } else {
                    let _ = self.net.server.respond(now, sid, id, checker::response_for(&body));
                }
            }
        }
    }

    /// Client `i`'s application takes up to `max` messages.
    pub fn consume_client(&mut self, i: usize, max: usize) {
        let now = self.net.now();
        for _ in 0..max {
            let Some(item) = self.net.client(i).recv(now) else {
                break;
            };
            self.checker.arrived(item.body());
        }
    }

    /// Inject a fault.
    pub fn fault(&mut self, f: Fault) {
        self.faults += 1;
        self.trace = fnv(self.trace, &format!("{:?}@{:?}", f, self.net.now()));
        match f {
            Fault::Cut(i) => self.net.cut(i),
            Fault::CutAfter(i, d, b) => self.net.cut_after(i, d, b),
            Fault::Stall(i) => self.net.stall(i),
            Fault::Partition(i, ms) => {
                self.net.partition(i, true);
                let at = self.net.now().add_millis(ms);
                self.partitions.push((i, at));
            }
            Fault::RestartServer => {
                // The server process dies: what it had queued has no sender
                // left to tell, so it needs no outcome.
                self.checker.abandon(|origin| origin >= SERVER_ORIGIN);
                self.server_msgs.clear();
                // The dead process's application held these; they die with it.
                self.held.clear();
                self.net.restart_server();
            }
        }
    }

    /// Heal every partition now.
    pub fn heal_all(&mut self) {
        for (i, _) in self.partitions.drain(..) {
            self.net.partition(i, false);
        }
    }

    fn heal_due(&mut self) {
        let now = self.net.now();
        let mut k = 0;
        while k < self.partitions.len() {
            if self.partitions[k].1 <= now {
                let (i, _) = self.partitions.swap_remove(k);
                self.net.partition(i, false);
            } else {
                k += 1;
            }
        }
    }

    /// Route events to the checker; renew clients whose session ended.
    pub fn process_events(&mut self) {
        for e in self.net.take_events() {
            self.trace = fnv(self.trace, &format!("{e:?}"));
            match e {
                NetEvent::Client(i, ev) => self.client_event(i, ev),
                NetEvent::Server(ServerEvent::Session { session, event }) => match event {
                    Event::Delivered(id) => {
                        if let Some((o, s)) = self.server_msgs.remove(&(session, id)) {
                            self.checker.receipt(o, s);
                        }
                    }
                    Event::SendFailed { id, failure } => {
                        if let Some((o, s)) = self.server_msgs.remove(&(session, id)) {
                            self.checker.send_failed(o, s, failure.fate);
                        }
                    }
                    _ => {}
                },
                NetEvent::Server(_) => {}
            }
        }
    }

    fn client_event(&mut self, i: usize, ev: Event) {
        let origin = i as u32;
        match ev {
            Event::Delivered(id) => {
                if let Some(seq) = self.apps[i].msgs.remove(&id) {
                    self.checker.receipt(origin, seq);
                }
            }
            Event::SendFailed { id, failure } => {
                if let Some(seq) = self.apps[i].msgs.remove(&id) {
                    self.checker.send_failed(origin, seq, failure.fate);
                }
            }
            Event::Response { id, body } => {
                if let Some(seq) = self.apps[i].calls.remove(&id) {
                    self.checker.response(origin, seq, &body);
                }
            }
            Event::CallFailed { id, failure } => {
                if let Some(seq) = self.apps[i].calls.remove(&id) {
                    self.checker.call_failed(origin, seq, failure.reason, failure.fate);
                }
            }
            Event::SessionEnded { .. } => {
                // Drain what arrived, then start a new session.
                self.consume_client(i, usize::MAX);
                let app = &mut self.apps[i];
                app.msgs.clear();
                app.calls.clear();
                app.sessions += 1;
                self.renewed += 1;
                let old = self.net.client(i).token();
                self.by_token.remove(&old);
                self.net.renew_client(i, self.protocol.clone());
                let t = self.net.client(i).token();
                self.by_token.insert(t, i);
                self.net.connect(i);
            }
            _ => {}
        }
    }

    /// One network step, then events; every 16 steps, memory bounds.
    pub fn step(&mut self) -> bool {
        self.heal_due();
        let more = self.net.step();
        self.process_events();
        if self.net.steps() % 16 == 0 {
            self.check_memory();
        }
        more
    }

    /// Every session, on both sides, within `Config::session_memory_bytes_max`.
    pub fn check_memory(&mut self) {
        let bound = self.protocol.session_memory_bytes_max();
        for i in 0..self.apps.len() {
            let m = self.net.client(i).memory_bytes();
            if m > bound {
                self.checker.violation_memory(format!("memory: client {i} holds {m} B > {bound} B"));
            }
            if let Some(sid) = self.net.session_of(i) {
                let m = self.net.server.session_memory_bytes(sid).unwrap_or(0);
                if m > bound {
                    self.checker
                        .violation_memory(format!("memory: server session of {i} holds {m} B > {bound} B"));
                }
            }
        }
    }

    /// Heal, stop faults, and run (consuming everything) until every message
    /// and call has its outcome or `settle_ms` of simulated time pass; then
    /// check the whole history.
    pub fn settle(&mut self, settle_ms: u64) -> Result<Summary, Vec<String>> {
        self.heal_all();
        let deadline = self.net.now().add_millis(settle_ms);
        let mut idle_steps = 0;
        for (.., until) in self.held.iter_mut() {
            *until = 0;
        }
        for _ in 0..2_000_000u64 {
            self.consume_server(usize::MAX);
            for i in 0..self.apps.len() {
                self.consume_client(i, usize::MAX);
            }
            let more = self.step();
            if self.checker.pending() == 0 {
                idle_steps += 1;
                if idle_steps > 20 {
                    break;
                }
            }
            if !more || self.net.now() > deadline {
                break;
            }
        }
        self.process_events();
        self.checker.finish()
    }
}

/// One random run: workload and faults from `seed`, then settle and check.
/// The error names the seed and every violation.
pub fn run(seed: u64, cfg: &ScenarioConfig) -> Result<Report, String> {
    let mut h = Harness::new(seed, cfg.clients, cfg.protocol.clone(), cfg.net.clone());
    h.set_reject_pct(cfg.reject_pct);
    h.set_hold_pct(cfg.hold_pct);
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1));
    for a in &mut h.apps {
        a.ops_left = cfg.ops_per_client;
    }
    let pct = |rng: &mut ChaCha8Rng, p: u8| (rng.next_u64() % 100) < p as u64;
    for _ in 0..cfg.steps_max {
        // Workload.
        for i in 0..cfg.clients {
            if h.apps[i].ops_left == 0 || rng.next_u64() % 3 != 0 {
                continue;
            }
            let channel = (rng.next_u64() % cfg.channels.max(1) as u64) as u16;
            let extra = if pct(&mut rng, cfg.large_pct) {
                (rng.next_u64() as usize) % cfg.large_bytes_max.max(1)
            } else {
                (rng.next_u64() % 64) as usize
            };
            let ok = if pct(&mut rng, cfg.call_pct) {
                let timeout =
                    if pct(&mut rng, cfg.short_deadline_pct) { Some(1 + rng.next_u64() % 20) } else { None };
                h.call(i, channel, extra, timeout)
            } else {
                h.send(i, channel, extra)
            };
            if ok {
                h.apps[i].ops_left -= 1;
            }
        }
        if pct(&mut rng, cfg.server_send_pct) && cfg.clients > 0 {
            let i = (rng.next_u64() % cfg.clients as u64) as usize;
            h.server_send(
                i,
                (rng.next_u64() % cfg.channels.max(1) as u64) as u16,
                (rng.next_u64() % 64) as usize,
            );
        }
        // Applications take what arrived, at a varying pace (backpressure).
        let take = (rng.next_u64() % 8) as usize;
        h.consume_server(take);
        for i in 0..cfg.clients {
            h.consume_client(i, (rng.next_u64() % 4) as usize);
        }
        // Faults.
        if cfg.fault_every_steps > 0 && rng.next_u64() % cfg.fault_every_steps == 0 && cfg.clients > 0 {
            let i = (rng.next_u64() % cfg.clients as u64) as usize;
            let f = match rng.next_u64() % 100 {
                0..=34 => Fault::Cut(i),
                35..=64 => {
                    let dir = if rng.next_u64() % 2 == 0 { Dir::Up } else { Dir::Down };
                    Fault::CutAfter(i, dir, rng.next_u64() % 400)
                }
                65..=79 => Fault::Stall(i),
                80..=96 => Fault::Partition(i, 1 + rng.next_u64() % 800),
                _ if cfg.restarts => Fault::RestartServer,
                _ => Fault::Cut(i),
            };
            h.fault(f);
        }
        h.step();
        // Now and then the workload pauses long enough for sessions to go
        // idle (and drop their buffers) while answers may still be held.
        if rng.next_u64() % 150 == 0 {
            let ms = 50 + rng.next_u64() % 400;
            let until = h.net.now().add_millis(ms);
            while h.net.now() < until && h.step() {
                h.consume_server(4);
            }
        }
        if h.apps.iter().all(|a| a.ops_left == 0) {
            break;
        }
    }
    let result = h.settle(cfg.settle_ms);
    let report = Report {
        seed,
        steps: h.net.steps(),
        sim_time: h.net.now(),
        faults: h.faults,
        sessions_renewed: h.renewed,
        summary: h.checker.summary(),
        trace_hash: h.trace_hash(),
    };
    match result {
        Ok(summary) => Ok(Report { summary, ..report }),
        Err(v) => Err(format!(
            "seed {seed}: {} violation(s) after {} steps, {:?} simulated, {} faults:\n  {}\nreplay: mf_core::testing::scenario::run({seed}, &cfg)",
            v.len(),
            report.steps,
            report.sim_time,
            report.faults,
            v.join("\n  ")
        )),
    }
}

/// One step of a fuzzed run.
#[derive(Clone, Debug, arbitrary::Arbitrary)]
pub enum Op {
    /// Client sends a message.
    Send {
        /// Client (mod clients).
        client: u8,
        /// Channel (mod 4).
        channel: u8,
        /// Extra body bytes (mod 5000).
        size: u16,
    },
    /// Client calls.
    Call {
        /// Client.
        client: u8,
        /// Channel.
        channel: u8,
        /// Extra body bytes.
        size: u16,
        /// Deadline in ms, if any.
        timeout_ms: Option<u8>,
    },
    /// Client cancels its oldest call.
    Cancel {
        /// Client.
        client: u8,
    },
    /// The server sends to a client.
    ServerSend {
        /// Client.
        client: u8,
        /// Extra body bytes.
        size: u16,
    },
    /// Applications take messages.
    Consume {
        /// Server (true) or a client.
        server: bool,
        /// Which client.
        client: u8,
        /// How many.
        n: u8,
    },
    /// Reset a connection.
    Cut {
        /// Client.
        client: u8,
    },
    /// Reset a connection after some bytes.
    CutAfter {
        /// Client.
        client: u8,
        /// Direction.
        up: bool,
        /// Bytes.
        bytes: u16,
    },
    /// Stall a connection silently.
    Stall {
        /// Client.
        client: u8,
    },
    /// Partition a client for a while.
    Partition {
        /// Client.
        client: u8,
        /// Milliseconds.
        ms: u16,
    },
    /// Restart the server.
    RestartServer,
    /// Run some network steps.
    Steps {
        /// How many.
        n: u8,
    },
    /// Let simulated time pass.
    Advance {
        /// Milliseconds.
        ms: u16,
    },
}

/// Run a fuzzed operation sequence (at most 512 operations, 4 clients),
/// settle, and check.
pub fn run_ops(ops: &[Op]) -> Result<Summary, Vec<String>> {
    const CLIENTS: usize = 3;
    let mut h = Harness::new(
        1,
        CLIENTS,
        fast_config(),
        NetConfig { latency_us: 100, jitter_us: 50, chunk_bytes_max: 97 },
    );
    h.set_reject_pct(10);
    h.set_hold_pct(15);
    let c = |x: u8| x as usize % CLIENTS;
    for op in ops.iter().take(512) {
        match *op {
            Op::Send { client, channel, size } => {
                h.send(c(client), channel as u16 % 4, size as usize % 5000);
            }
            Op::Call { client, channel, size, timeout_ms } => {
                h.call(c(client), channel as u16 % 4, size as usize % 5000, timeout_ms.map(|t| t as u64 + 1));
            }
            Op::Cancel { client } => h.cancel_oldest(c(client)),
            Op::ServerSend { client, size } => {
                h.server_send(c(client), 0, size as usize % 3000);
            }
            Op::Consume { server, client, n } => {
                if server {
                    h.consume_server(n as usize);
                } else {
                    h.consume_client(c(client), n as usize);
                }
            }
            Op::Cut { client } => h.fault(Fault::Cut(c(client))),
            Op::CutAfter { client, up, bytes } => {
                let dir = if up { Dir::Up } else { Dir::Down };
                h.fault(Fault::CutAfter(c(client), dir, bytes as u64 % 2000));
            }
            Op::Stall { client } => h.fault(Fault::Stall(c(client))),
            Op::Partition { client, ms } => h.fault(Fault::Partition(c(client), ms as u64 % 2000)),
            Op::RestartServer => h.fault(Fault::RestartServer),
            Op::Steps { n } => {
                for _ in 0..n % 64 {
                    h.step();
                }
            }
            Op::Advance { ms } => {
                h.net.run_for(Duration::from_millis(ms as u64 % 3000), 10_000);
                h.process_events();
            }
        }
    }
    h.settle(20_000)
}
