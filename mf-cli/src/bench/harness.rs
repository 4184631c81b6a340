//! Measurement plumbing: thread pinning, CPU time, peak memory, syscall and
//! allocation counters, latency histograms.

use hdrhistogram::Histogram;
use std::alloc::{GlobalAlloc, Layout, System as SystemAlloc};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

// --- pinning ----------------------------------------------------------------

/// Where client and server threads run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pin {
    /// Client and server on one vCPU (the ~13 us loopback mode).
    Same,
    /// Client on one vCPU, server on another (the ~74 us mode).
    Split,
    /// No pinning: the scheduler decides.
    None,
}

impl Pin {
    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Pin::Same => "same",
            Pin::Split => "split",
            Pin::None => "none",
        }
    }

    /// The CPU the server side runs on, if pinned.
    pub fn server_cpu(self) -> Option<usize> {
        match self {
            Pin::Same => Some(last_cpu()),
            Pin::Split => Some(0),
            Pin::None => None,
        }
    }

    /// The CPU the client side runs on, if pinned.
    pub fn client_cpu(self) -> Option<usize> {
        match self {
            Pin::Same | Pin::Split => Some(last_cpu()),
            Pin::None => None,
        }
    }
}

fn last_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_sub(1)
}

/// Pin the calling thread to `cpu` (`None`: every CPU). Threads it spawns
/// afterwards inherit the mask, which is how the drivers' own threads get
/// pinned without the drivers knowing.
pub fn pin_current(cpu: Option<usize>) {
    #[cfg(target_os = "linux")]
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads `size` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        match cpu {
            Some(c) => libc::CPU_SET(c, &mut set),
            None => {
                for c in 0..=last_cpu() {
                    libc::CPU_SET(c, &mut set);
                }
            }
        }
        // Failure (a CPU that does not exist) leaves the thread unpinned:
        // the figures are then the scheduler's, which the report says.
        let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cpu;
}

// --- CPU time and memory ----------------------------------------------------

/// CPU time (user + system) used by the whole process so far.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Start a new peak-RSS window (Linux: `clear_refs` 5 resets `VmHWM`).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Give memory the allocator holds but no longer uses back to the system
/// (glibc keeps freed memory resident otherwise, which would be counted
/// against the next run).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident memory now, in bytes.
pub fn rss_bytes() -> u64 {
    status_kb("VmRSS:") * 1024
}

fn status_kb(field: &str) -> u64 {
    if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
        for line in s.lines() {
            if let Some(v) = line.strip_prefix(field) {
                return v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            }
        }
    }
    0
}

/// Peak resident memory since the last [`reset_peak_rss`], in bytes.
pub fn peak_rss_bytes() -> u64 {
    status_kb("VmHWM:") * 1024
}

// --- allocations ------------------------------------------------------------

/// The global allocator of the `mf` binary: the system allocator, plus a
/// count of allocations while [`count_allocations`] is on. Off, it costs one
/// relaxed load per allocation.
pub struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { SystemAlloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { SystemAlloc.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { SystemAlloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { SystemAlloc.realloc(ptr, layout, new_size) }
    }
}

/// Turn allocation counting on or off (process-wide).
pub fn count_allocations(on: bool) {
    COUNTING.store(on, Ordering::SeqCst);
}

/// Allocations (and reallocations) counted so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::SeqCst)
}

// --- syscalls -----------------------------------------------------------------

/// Read and write system calls, counted by the raw systems and the counting
/// tokio transport (one per `read`/`write`/`writev` attempt, including
/// attempts that would block).
#[derive(Default, Debug)]
pub struct IoCounters {
    /// Write-side calls.
    pub writes: AtomicU64,
    /// Read-side calls.
    pub reads: AtomicU64,
}

impl IoCounters {
    /// A shared, zeroed set.
    pub fn shared() -> Arc<IoCounters> {
        Arc::new(IoCounters::default())
    }

    /// Count one write.
    pub fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Count one read.
    pub fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> IoCounts {
        IoCounts { writes: self.writes.load(Ordering::Relaxed), reads: self.reads.load(Ordering::Relaxed) }
    }
}

/// A snapshot of syscall counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounts {
    /// Write-side calls.
    pub writes: u64,
    /// Read-side calls.
    pub reads: u64,
}

impl std::ops::Sub for IoCounts {
    type Output = IoCounts;
    fn sub(self, o: IoCounts) -> IoCounts {
        IoCounts { writes: self.writes.saturating_sub(o.writes), reads: self.reads.saturating_sub(o.reads) }
    }
}

impl std::ops::Add for IoCounts {
    type Output = IoCounts;
    fn add(self, o: IoCounts) -> IoCounts {
        IoCounts { writes: self.writes + o.writes, reads: self.reads + o.reads }
    }
}

// --- latency ----------------------------------------------------------------

/// Latencies in nanoseconds, 1 ns to 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static histogram bounds are valid")
}

/// Record one latency (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_nanos() as u64).max(1));
}

// --- one measured run, and many aggregated ------------------------------------

use crate::bench::systems::{Knobs, Measured, Meter, System};
use crate::bench::workloads::{Budget, Workload};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// What identifies a series of runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// The workload.
    pub workload: Workload,
    /// Pinning.
    pub pin: Pin,
    /// Index of the knob setting (0: defaults).
    pub knobs: usize,
    /// The system.
    pub system: System,
}

/// One run's figures.
#[derive(Clone, Copy, Debug)]
pub struct RunFigures {
    /// Calls completed and checked in the measured phase.
    pub calls: u64,
    /// Calls completed in the whole run (warm-up and drained tail included).
    pub calls_total: u64,
    /// CPU, wall time and syscalls of the measured phase.
    pub measured: Measured,
    /// Peak resident memory of the process during the run (server start,
    /// connections, warm-up and measured phase).
    pub peak_rss_bytes: u64,
    /// That peak minus the resident memory just before the run started
    /// (after free memory was given back): what the run's two ends added.
    pub rss_growth_bytes: u64,
}

impl RunFigures {
    /// Calls per second.
    pub fn rate(&self) -> f64 {
        self.calls as f64 / self.measured.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Every run of one key: latencies merged, other figures per round.
pub struct Series {
    /// Latencies of every measured call, nanoseconds.
    pub hist: Histogram<u64>,
    /// One entry per round, in round order.
    pub rounds: Vec<RunFigures>,
}

/// All results of an invocation.
#[derive(Default)]
pub struct Results {
    /// By key.
    pub series: BTreeMap<Key, Series>,
    /// Runs that failed, with why.
    pub failures: Vec<(Key, String)>,
}

impl Results {
    /// Add one run.
    pub fn add(&mut self, key: Key, hist: &Histogram<u64>, fig: RunFigures) {
        let s =
            self.series.entry(key).or_insert_with(|| Series { hist: new_histogram(), rounds: Vec::new() });
        let _ = s.hist.add(hist);
        s.rounds.push(fig);
    }
}

/// Start `system`'s server pinned to the server CPU, run `w` from the client
/// CPU, and return the checked calls' latencies and the run's figures.
pub fn measure(
    system: System,
    w: &Workload,
    pin: Pin,
    knobs: &Knobs,
    budget: &Budget,
) -> Result<(Histogram<u64>, RunFigures), String> {
    release_free_memory();
    let rss_before = rss_bytes();
    reset_peak_rss();
    pin_current(pin.server_cpu());
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    let server = system.serve(addr, knobs, Some(w.kind));
    pin_current(pin.client_cpu());
    let result = server.and_then(|server| {
        let meter = Meter::new(server.io.clone());
        let run = system.run(server.addr, knobs, w, &budget.for_workload(w), &meter)?;
        let measured = meter.result().ok_or("the run ended before its measured phase")?;
        let peak_rss_bytes = peak_rss_bytes();
        drop(server);
        if run.calls == 0 {
            return Err("no call completed in the measured phase".into());
        }
        let rss_growth_bytes = peak_rss_bytes.saturating_sub(rss_before);
        Ok((
            run.hist,
            RunFigures {
                calls: run.calls,
                calls_total: run.calls_total,
                measured,
                peak_rss_bytes,
                rss_growth_bytes,
            },
        ))
    });
    pin_current(None);
    result
}
