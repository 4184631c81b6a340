//! The four systems under test, each an echo server and a client that runs
//! any workload against it:
//!
//! - `mf-mio`, `mf-tokio`: this project's drivers;
//! - `raw-std`: blocking `std::net`, a u32 length prefix, `TCP_NODELAY` (the
//!   floor the targets are measured against);
//! - `raw-tokio`: the same on tokio.
//!
//! Every system counts its read and write system calls: the mio driver
//! through its own `IoStats`, the others through counters in their sockets.

pub mod mf_mio;
pub mod mf_tokio;
pub mod raw_std;
pub mod raw_tokio;
pub mod transport;

use crate::bench::harness::{IoCounts, new_histogram, process_cpu, record};
use crate::bench::workloads::{Budget, Kind, Workload};
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};
pub use transport::Knobs;

/// A system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum System {
    /// MessageFirst's blocking driver.
    #[serde(rename = "mf-mio")]
    MfMio,
    /// MessageFirst's async driver.
    #[serde(rename = "mf-tokio")]
    MfTokio,
    /// Blocking std::net with a length prefix: the floor.
    #[serde(rename = "raw-std")]
    RawStd,
    /// The same on tokio.
    #[serde(rename = "raw-tokio")]
    RawTokio,
}

impl System {
    /// All four, in report order.
    pub const ALL: [System; 4] = [System::RawStd, System::RawTokio, System::MfMio, System::MfTokio];

    /// Its name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            System::MfMio => "mf-mio",
            System::MfTokio => "mf-tokio",
            System::RawStd => "raw-std",
            System::RawTokio => "raw-tokio",
        }
    }

    /// Parse a name.
    pub fn from_name(s: &str) -> Result<System, String> {
        System::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown system {s:?}: one of mf-mio, mf-tokio, raw-std, raw-tokio"))
    }

    /// True for this project's drivers.
    pub fn is_mf(self) -> bool {
        matches!(self, System::MfMio | System::MfTokio)
    }

    /// Start an echo server on `addr` with its threads created by the
    /// calling thread (so they inherit its CPU mask). `kind` lets the raw
    /// floor pick its strongest shape: one-connection workloads are served
    /// inline on the accepting thread, fan-in by a thread per connection.
    pub fn serve(self, addr: SocketAddr, knobs: &Knobs, kind: Option<Kind>) -> Result<ServerHandle, String> {
        match self {
            System::MfMio => mf_mio::serve(addr, knobs),
            System::MfTokio => mf_tokio::serve(addr, knobs),
            System::RawStd => raw_std::serve(addr, knobs, kind.is_some_and(|k| k != Kind::FanIn)),
            System::RawTokio => raw_tokio::serve(addr, knobs),
        }
    }

    /// Run `w` against the server at `addr`.
    pub fn run(
        self,
        addr: SocketAddr,
        knobs: &Knobs,
        w: &Workload,
        budget: &Budget,
        meter: &Meter,
    ) -> Result<ClientRun, String> {
        match self {
            System::MfMio => mf_mio::run(addr, knobs, w, budget, meter),
            System::MfTokio => mf_tokio::run(addr, knobs, w, budget, meter),
            System::RawStd => raw_std::run(addr, knobs, w, budget, meter),
            System::RawTokio => raw_tokio::run(addr, knobs, w, budget, meter),
        }
    }
}

/// A running echo server. Dropping it stops it.
pub struct ServerHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its syscall counts so far.
    pub io: Arc<dyn Fn() -> IoCounts + Send + Sync>,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl ServerHandle {
    /// A handle that runs `stop` when dropped.
    pub fn new(
        addr: SocketAddr,
        io: Arc<dyn Fn() -> IoCounts + Send + Sync>,
        stop: impl FnOnce() + Send + 'static,
    ) -> ServerHandle {
        ServerHandle { addr, io, stop: Some(Box::new(stop)) }
    }

    /// Serve until the process ends.
    pub fn run_forever(mut self) -> ! {
        // Dropping the stop closure could stop the server (it may own the
        // last handle or a stop channel): keep it, never call it.
        std::mem::forget(self.stop.take());
        loop {
            std::thread::park();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

/// What one client run returns.
pub struct ClientRun {
    /// Calls completed (and checked) in the measured phase.
    pub calls: u64,
    /// Calls completed in the whole run: warm-up, measured phase and, when
    /// pipelined, the calls still in flight when the measured phase ended.
    pub calls_total: u64,
    /// Their latencies, nanoseconds.
    pub hist: Histogram<u64>,
}

/// Everything measured between [`Meter::begin`] and [`Meter::end`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Measured {
    /// Wall time.
    pub elapsed: Duration,
    /// Process CPU time (client and server).
    pub cpu: Duration,
    /// The client's syscalls.
    pub client_io: IoCounts,
    /// The server's syscalls.
    pub server_io: IoCounts,
}

/// Marks the measured phase of a run: snapshots CPU time and syscall
/// counters at its start and end.
pub struct Meter {
    server_io: Arc<dyn Fn() -> IoCounts + Send + Sync>,
    state: Mutex<MeterState>,
}

#[derive(Default)]
struct MeterState {
    start: Option<(Instant, Duration, IoCounts, IoCounts)>,
    result: Option<Measured>,
}

impl Meter {
    /// A meter reading the server's counters through `server_io`.
    pub fn new(server_io: Arc<dyn Fn() -> IoCounts + Send + Sync>) -> Meter {
        Meter { server_io, state: Mutex::new(MeterState::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MeterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The measured phase starts; `client_io` is the client's count now.
    pub fn begin(&self, client_io: IoCounts) {
        let server = (self.server_io)();
        self.lock().start = Some((Instant::now(), process_cpu(), client_io, server));
    }

    /// The measured phase ends.
    pub fn end(&self, client_io: IoCounts) {
        let (now, cpu, server) = (Instant::now(), process_cpu(), (self.server_io)());
        let mut st = self.lock();
        if let Some((t0, cpu0, c0, s0)) = st.start {
            st.result = Some(Measured {
                elapsed: now - t0,
                cpu: cpu.saturating_sub(cpu0),
                client_io: client_io - c0,
                server_io: server - s0,
            });
        }
    }

    /// What was measured, once ended.
    pub fn result(&self) -> Option<Measured> {
        self.lock().result
    }
}

/// Phases of a run, shared by the connections of one client.
pub struct Phases {
    warm: Barrier,
    start: Mutex<Option<Instant>>,
    measured: Barrier,
    done: Barrier,
}

impl Phases {
    fn new(n: usize) -> Phases {
        Phases {
            warm: Barrier::new(n),
            start: Mutex::new(None),
            measured: Barrier::new(n),
            done: Barrier::new(n),
        }
    }
}

/// Run a sequential-call workload on `conns` connections at once (one
/// thread each; `conns == 1` runs on the calling thread): warm up, measure
/// until the budget is spent, and time every call. `open(k)` makes
/// connection `k`; `call(conn, i)` makes call `i` on it and checks the reply.
pub fn sync_calls<C>(
    conns: usize,
    budget: &Budget,
    meter: &Meter,
    client_io: &(dyn Fn() -> IoCounts + Sync),
    open: &(dyn Fn(usize) -> Result<C, String> + Sync),
    call: &(dyn Fn(&mut C, u64) -> Result<(), String> + Sync),
) -> Result<ClientRun, String> {
    let phases = Phases::new(conns);
    let one = |k: usize| -> Result<ClientRun, String> {
        let mut conn = open(k);
        let mut hist = new_histogram();
        let mut calls = 0;
        let mut warm_calls = 0;
        let mut i = k as u64;
        let step = conns as u64;
        // Every connection goes through every barrier even after a failure,
        // so a failing connection cannot strand the others.
        if let Ok(c) = conn.as_mut() {
            let until = Instant::now() + budget.warmup_time;
            for _ in 0..budget.warmup_calls.div_ceil(step) {
                if let Err(e) = call(c, i) {
                    conn = Err(e);
                    break;
                }
                warm_calls += 1;
                i += step;
                if Instant::now() > until {
                    break;
                }
            }
        }
        if phases.warm.wait().is_leader() {
            meter.begin(client_io());
            *phases.start.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        phases.measured.wait();
        let t0 = phases.start.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or_else(Instant::now);
        let deadline = t0 + budget.time;
        if let Ok(c) = conn.as_mut() {
            let max = budget.calls_max.div_ceil(step);
            while calls < max {
                let start = Instant::now();
                if start >= deadline {
                    break;
                }
                if let Err(e) = call(c, i) {
                    conn = Err(e);
                    break;
                }
                record(&mut hist, start.elapsed());
                calls += 1;
                i += step;
            }
        }
        if phases.done.wait().is_leader() {
            meter.end(client_io());
        }
        conn.map(|_| ClientRun { calls, calls_total: warm_calls + calls, hist })
    };
    let runs: Vec<Result<ClientRun, String>> = if conns == 1 {
        vec![one(0)]
    } else {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..conns).map(|k| s.spawn(move || one(k))).collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("client thread panicked".into())))
                .collect()
        })
    };
    merge(runs)
}

/// As [`sync_calls`], for async clients: `conns` futures joined in the
/// calling task.
pub async fn async_calls<C>(
    conns: usize,
    budget: &Budget,
    meter: &Meter,
    client_io: &(dyn Fn() -> IoCounts + Sync),
    open: impl AsyncFn(usize) -> Result<C, String>,
    call: impl AsyncFn(&mut C, u64) -> Result<(), String>,
) -> Result<ClientRun, String> {
    let warm = tokio::sync::Barrier::new(conns);
    let measured = tokio::sync::Barrier::new(conns);
    let done = tokio::sync::Barrier::new(conns);
    let start: Mutex<Option<Instant>> = Mutex::new(None);
    let (open, call) = (&open, &call);
    let one = async |k: usize| -> Result<ClientRun, String> {
        let mut conn = open(k).await;
        let mut hist = new_histogram();
        let mut calls = 0;
        let mut warm_calls = 0;
        let step = conns as u64;
        let mut i = k as u64;
        if let Ok(c) = conn.as_mut() {
            let until = Instant::now() + budget.warmup_time;
            for _ in 0..budget.warmup_calls.div_ceil(step) {
                if let Err(e) = call(c, i).await {
                    conn = Err(e);
                    break;
                }
                warm_calls += 1;
                i += step;
                if Instant::now() > until {
                    break;
                }
            }
        }
        if warm.wait().await.is_leader() {
            meter.begin(client_io());
            *start.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        measured.wait().await;
        let t0 = start.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or_else(Instant::now);
        let deadline = t0 + budget.time;
        if let Ok(c) = conn.as_mut() {
            let max = budget.calls_max.div_ceil(step);
            while calls < max {
                let t = Instant::now();
                if t >= deadline {
                    break;
                }
                if let Err(e) = call(c, i).await {
                    conn = Err(e);
                    break;
                }
                record(&mut hist, t.elapsed());
                calls += 1;
                i += step;
            }
        }
        if done.wait().await.is_leader() {
            meter.end(client_io());
        }
        conn.map(|_| ClientRun { calls, calls_total: warm_calls + calls, hist })
    };
    let runs = futures_util::future::join_all((0..conns).map(one)).await;
    merge(runs)
}

fn merge(runs: Vec<Result<ClientRun, String>>) -> Result<ClientRun, String> {
    let mut total = ClientRun { calls: 0, calls_total: 0, hist: new_histogram() };
    for r in runs {
        let r = r?;
        total.calls += r.calls;
        total.calls_total += r.calls_total;
        // Same bounds on both sides: adding cannot fail.
        let _ = total.hist.add(&r.hist);
    }
    Ok(total)
}

/// One pipelined call in this many is timed, and the clock is read for the
/// phase deadlines only once per this many completions: at millions of calls
/// a second a clock read per call (about 70 ns on these VMs) would cost the
/// raw floor a third of its time and flatter every ratio against it.
const PIPELINE_SAMPLE: u64 = 16;

/// Book-keeping of a pipelined run: which calls are in flight since when,
/// and when to move from warm-up to measuring to draining.
pub struct Pipeline<'a> {
    budget: Budget,
    meter: &'a Meter,
    /// Send times of the calls in flight, oldest first (sampled calls only).
    pub started: std::collections::VecDeque<Option<Instant>>,
    /// The next call to start.
    pub next: u64,
    /// The next call to complete.
    pub done: u64,
    depth: usize,
    measuring: Option<(Instant, u64)>,
    stopping: bool,
    warm_until: Instant,
    /// Latencies of the sampled calls completed while measuring.
    pub hist: Histogram<u64>,
    calls: u64,
}

impl<'a> Pipeline<'a> {
    /// Start the warm-up.
    pub fn new(budget: &Budget, meter: &'a Meter, depth: usize) -> Pipeline<'a> {
        Pipeline {
            budget: *budget,
            meter,
            started: std::collections::VecDeque::with_capacity(depth),
            next: 0,
            done: 0,
            depth,
            measuring: None,
            stopping: false,
            warm_until: Instant::now() + budget.warmup_time,
            hist: new_histogram(),
            calls: 0,
        }
    }

    /// Whether another call may start now.
    pub fn may_start(&self) -> bool {
        !self.stopping && self.started.len() < self.depth
    }

    /// Call `self.next` was sent; returns its number.
    pub fn started(&mut self) -> u64 {
        let sampled = self.next % PIPELINE_SAMPLE == 0;
        self.started.push_back(sampled.then(Instant::now));
        self.next += 1;
        self.next - 1
    }

    /// The oldest call completed (its reply already checked): record it and
    /// move between phases. `client_io` is read only at a phase change.
    pub fn completed(&mut self, client_io: &dyn Fn() -> IoCounts) {
        let sent = self.started.pop_front().flatten();
        self.done += 1;
        let check_clock = self.done % PIPELINE_SAMPLE == 0;
        match self.measuring {
            None if !self.stopping
                && (self.done >= self.budget.warmup_calls
                    || (check_clock && Instant::now() > self.warm_until)) =>
            {
                self.meter.begin(client_io());
                self.measuring = Some((Instant::now(), self.done));
            }
            Some((t0, done0)) => {
                if let Some(sent) = sent {
                    record(&mut self.hist, sent.elapsed());
                }
                self.calls += 1;
                if self.done - done0 >= self.budget.calls_max
                    || (check_clock && t0.elapsed() >= self.budget.time)
                {
                    self.meter.end(client_io());
                    self.measuring = None;
                    self.stopping = true;
                }
            }
            _ => {}
        }
    }

    /// Everything measured and drained.
    pub fn finished(&self) -> bool {
        self.stopping && self.started.is_empty()
    }

    /// The result.
    pub fn into_run(self) -> ClientRun {
        ClientRun { calls: self.calls, calls_total: self.done, hist: self.hist }
    }
}
