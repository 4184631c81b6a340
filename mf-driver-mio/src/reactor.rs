//! The clients' background thread: one per process, shared by every
//! [`Client`](crate::Client). It waits in one mio `Poll` for the readiness of
//! every client's socket and for the earliest of their timers, then visits
//! the client concerned: reads, runs the protocol core's timers, reconnects,
//! writes what batching held back.
//!
//! One thread for all clients (instead of one per client) keeps a
//! connect-call-close client as cheap as the work it does (no thread to
//! create and join per connection), and a process with a thousand clients
//! does not run a thousand threads.
//!
//! Timers: each client has at most one live entry in a min-heap, keyed by
//! its slot and the time it asked to be visited; older entries are skipped
//! when they surface (lazy deletion), and the heap is rebuilt when stale
//! entries dominate. Clients in use tick on a shared 1 ms grid, so busy
//! clients are visited together, and such a visit takes the client's lock
//! only if one of its deadlines is due (see `Shared::visit`).

use crate::client::Shared;
use mf_core::Instant;
use mio::{Events, Poll, Registry, Token, Waker};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

const WAKER: Token = Token(0);
/// Readiness events taken per `poll` call.
const EVENTS_MAX: usize = 1024;
/// A deadline at most this much earlier than the reactor's planned wake-up
/// does not wake it (timer slack, as for the core's acknowledgement delay).
pub(crate) const SLACK_US: u64 = 1_000;

struct Slot {
    client: Weak<Shared>,
    /// A strong reference while a client whose handles are all gone still
    /// drains its session (graceful close in the background).
    keep: Option<Arc<Shared>>,
    /// When this client wants its next visit (`Instant::NEVER`: none).
    at: Instant,
}

struct Timers {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    /// When the reactor thread will wake by itself (`ZERO` while awake).
    wake_at: Instant,
}

/// The process-wide reactor (see the module docs).
pub(crate) struct Reactor {
    registry: Registry,
    waker: Waker,
    timers: Mutex<Timers>,
    epoch: std::time::Instant,
}

static REACTOR: Mutex<Option<Arc<Reactor>>> = Mutex::new(None);

/// The reactor, started on first use.
pub(crate) fn get() -> std::io::Result<Arc<Reactor>> {
    let mut g = REACTOR.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = g.as_ref() {
        return Ok(r.clone());
    }
    let poll = Poll::new()?;
    let r = Arc::new(Reactor {
        registry: poll.registry().try_clone()?,
        waker: Waker::new(poll.registry(), WAKER)?,
        timers: Mutex::new(Timers {
            slots: Vec::new(),
            free: Vec::new(),
            heap: BinaryHeap::new(),
            wake_at: Instant::ZERO,
        }),
        epoch: std::time::Instant::now(),
    });
    let r2 = r.clone();
    std::thread::Builder::new().name("mf-client-io".into()).spawn(move || r2.run(poll))?;
    *g = Some(r.clone());
    Ok(r)
}

/// Visit a client; a panic there (a bug) must not stop the thread that
/// serves every other client.
fn visit(c: &Shared, ev: Option<(Token, bool, bool)>) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.visit(ev))).unwrap_or(false)
}

/// A socket's token: the client's slot in the high half, the connection's
/// sequence number in the low half (so events of a closed socket are told
/// apart from its successor's).
pub(crate) fn token(slot: usize, seq: u32) -> Token {
    Token(((slot + 1) << 32) | seq as usize)
}

fn slot_of(t: Token) -> usize {
    (t.0 >> 32).wrapping_sub(1)
}

impl Reactor {
    pub(crate) fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A slot for a new client.
    pub(crate) fn add(&self, client: Weak<Shared>) -> usize {
        let mut t = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let slot = Slot { client, keep: None, at: Instant::NEVER };
        match t.free.pop() {
            Some(i) => {
                t.slots[i] = Some(slot);
                i
            }
            None => {
                t.slots.push(Some(slot));
                t.slots.len() - 1
            }
        }
    }

    /// Keep `client` alive until its session ends (its last handle is gone).
    pub(crate) fn hold(&self, slot: usize, client: Arc<Shared>) {
        let previous = {
            let mut t = self.timers.lock().unwrap_or_else(|p| p.into_inner());
            match t.slots.get_mut(slot) {
                Some(Some(s)) => s.keep.replace(client),
                _ => Some(client),
            }
        };
        // Dropped outside the lock: a client's drop takes it again.
        drop(previous);
    }

    /// The session of the client in `slot` ended: stop keeping it alive.
    fn release(&self, slot: usize) {
        let kept = {
            let mut t = self.timers.lock().unwrap_or_else(|p| p.into_inner());
            t.slots.get_mut(slot).and_then(|s| s.as_mut()).and_then(|s| s.keep.take())
        };
        // Dropped outside the lock: the client's drop takes it again.
        drop(kept);
    }

    /// Forget a client (its last reference is gone).
    pub(crate) fn remove(&self, slot: usize) {
        let slot_taken = {
            let mut t = self.timers.lock().unwrap_or_else(|p| p.into_inner());
            let taken = t.slots.get_mut(slot).and_then(|s| s.take());
            if taken.is_some() {
                t.free.push(slot);
            }
            taken
        };
        drop(slot_taken);
    }

    /// Visit `slot` at `at` (or earlier, if it already asked for earlier);
    /// `precise`: wake the reactor even if it planned to wake within the slack.
    pub(crate) fn schedule(&self, slot: usize, at: Instant, precise: bool) {
        let mut t = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(Some(s)) = t.slots.get_mut(slot) else { return };
        if at >= s.at {
            return;
        }
        s.at = at;
        t.heap.push(Reverse((at, slot)));
        if t.heap.len() > 2 * t.slots.len() + 64 {
            // Rebuilt in the heap's own buffer: a fresh one would re-grow,
            // allocating again and again in steady state.
            let mut live = std::mem::take(&mut t.heap).into_vec();
            live.clear();
            live.extend(t.slots.iter().enumerate().filter_map(|(i, s)| {
                s.as_ref().filter(|s| s.at != Instant::NEVER).map(|s| Reverse((s.at, i)))
            }));
            t.heap = BinaryHeap::from(live);
        }
        let slack = if precise { 0 } else { SLACK_US };
        let late = at.as_micros().saturating_add(slack) < t.wake_at.as_micros();
        if late && t.wake_at != Instant::ZERO {
            t.wake_at = Instant::ZERO;
            drop(t);
            let _ = self.waker.wake();
        }
    }

    fn client(&self, slot: usize) -> Option<Arc<Shared>> {
        let t = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        t.slots.get(slot)?.as_ref()?.client.upgrade()
    }

    /// The next client whose visit is due at `now`, its entry cleared.
    fn pop_due(&self, now: Instant) -> Option<(usize, Option<Arc<Shared>>)> {
        let mut t = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let &Reverse((at, slot)) = t.heap.peek()?;
            if at > now {
                return None;
            }
            t.heap.pop();
            let Some(Some(s)) = t.slots.get_mut(slot) else { continue };
            if s.at != at {
                continue; // superseded by an earlier request
            }
            s.at = Instant::NEVER;
            return Some((slot, s.client.upgrade()));
        }
    }

    fn run(&self, mut poll: Poll) {
        let mut events = Events::with_capacity(EVENTS_MAX);
        loop {
            let timeout = {
                let mut t = self.timers.lock().unwrap_or_else(|p| p.into_inner());
                let now = self.now();
                // Skip stale tops so the wake-up time is a real one.
                while let Some(&Reverse((at, slot))) = t.heap.peek() {
                    let live = matches!(t.slots.get(slot), Some(Some(s)) if s.at == at);
                    if live {
                        break;
                    }
                    t.heap.pop();
                }
                let next = t.heap.peek().map_or(Instant::NEVER, |r| r.0.0);
                t.wake_at = next.max(now);
                if next == Instant::NEVER { None } else { Some(next.saturating_since(now)) }
            };
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    // The poller failed: nothing can wait for I/O. Back off;
                    // the clients' own waits still run their timers.
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            self.timers.lock().unwrap_or_else(|p| p.into_inner()).wake_at = Instant::ZERO;
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                let slot = slot_of(ev.token());
                if let Some(c) = self.client(slot) {
                    let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                    let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
                    if visit(&c, Some((ev.token(), readable, writable))) {
                        drop(c);
                        self.release(slot);
                    }
                }
            }
            let now = self.now();
            while let Some((slot, c)) = self.pop_due(now) {
                if let Some(c) = c {
                    if visit(&c, None) {
                        drop(c);
                        self.release(slot);
                    }
                }
            }
        }
    }
}
