//! The run's history: the contract checker plus a hash of the event trace
//! (equal seeds must give equal traces).

use mf_core::testing::checker::{Checker, Summary};
use mf_core::{FailReason, Fate};
use std::cell::RefCell;

/// Everything the applications and the fault schedule report, in order.
#[derive(Debug)]
pub struct History {
    inner: RefCell<Inner>,
}

#[derive(Debug)]
struct Inner {
    checker: Checker,
    trace: u64,
    events: u64,
    /// Violations found outside the checker (driver misbehaviour).
    extra: Vec<String>,
    /// Print every event (`MF_SIM_TRACE=1`).
    print: bool,
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

impl Default for History {
    fn default() -> Self {
        History {
            inner: RefCell::new(Inner {
                checker: Checker::new(),
                trace: 0xcbf2_9ce4_8422_2325,
                events: 0,
                extra: Vec::new(),
                print: std::env::var_os("MF_SIM_TRACE").is_some_and(|v| v == "1"),
            }),
        }
    }
}

impl History {
    /// Mix an event into the trace, stamped with simulated time.
    pub fn trace(&self, what: &str) {
        let t = turmoil::sim_elapsed().map_or(0, |d| d.as_micros() as u64);
        self.trace_at(t, what);
    }

    /// Mix an event into the trace at `t` simulated microseconds (for the
    /// harness, which runs outside any simulated host).
    pub fn trace_at(&self, t: u64, what: &str) {
        let mut i = self.inner.borrow_mut();
        if i.print {
            println!("{:>9}.{:03} ms  {what}", t / 1000, t % 1000);
        }
        i.events += 1;
        i.trace = fnv(fnv(i.trace, &t.to_le_bytes()), what.as_bytes());
    }

    fn with<R>(&self, what: std::fmt::Arguments<'_>, f: impl FnOnce(&mut Checker) -> R) -> R {
        self.trace(&what.to_string());
        f(&mut self.inner.borrow_mut().checker)
    }

    /// `send` accepted a message.
    pub fn sent(&self, origin: u32, seq: u64, channel: u16) {
        self.with(format_args!("sent {origin}/{seq}@{channel}"), |c| c.sent(origin, seq, channel));
    }

    /// `call` accepted a request.
    pub fn called(&self, origin: u32, seq: u64, channel: u16) {
        self.with(format_args!("called {origin}/{seq}@{channel}"), |c| c.called(origin, seq, channel));
    }

    /// The receiving application took a body.
    pub fn arrived(&self, body: &[u8]) {
        let tag = mf_core::testing::checker::parse(body).map(|t| (t.origin, t.seq)).unwrap_or((u32::MAX, 0));
        self.with(format_args!("arrived {}/{}", tag.0, tag.1), |c| c.arrived(body));
    }

    /// A receipt came back.
    pub fn receipt(&self, origin: u32, seq: u64) {
        self.with(format_args!("receipt {origin}/{seq}"), |c| c.receipt(origin, seq));
    }

    /// A message failed.
    pub fn send_failed(&self, origin: u32, seq: u64, fate: Fate) {
        self.with(format_args!("send_failed {origin}/{seq} {fate:?}"), |c| c.send_failed(origin, seq, fate));
    }

    /// A call got its response.
    pub fn response(&self, origin: u32, seq: u64, body: &[u8]) {
        self.with(format_args!("response {origin}/{seq}"), |c| c.response(origin, seq, body));
    }

    /// A call failed.
    pub fn call_failed(&self, origin: u32, seq: u64, reason: FailReason, fate: Fate) {
        self.with(format_args!("call_failed {origin}/{seq} {reason:?} {fate:?}"), |c| {
            c.call_failed(origin, seq, reason, fate)
        });
    }

    /// The senders matching `origin` died.
    pub fn abandon(&self, what: &str, origin: impl Fn(u32) -> bool) {
        self.with(format_args!("abandon {what}"), |c| c.abandon(origin));
    }

    /// A contract breach the checker cannot see (e.g. a driver error).
    pub fn violation(&self, v: String) {
        self.trace(&v);
        self.inner.borrow_mut().extra.push(v);
    }

    /// Messages and calls without an outcome yet.
    pub fn pending(&self) -> usize {
        self.inner.borrow().checker.pending()
    }

    /// Violations so far (checker and extra).
    pub fn violation_count(&self) -> usize {
        let i = self.inner.borrow();
        i.checker.violations().len() + i.extra.len()
    }

    /// Totals so far.
    pub fn summary(&self) -> Summary {
        self.inner.borrow().checker.summary()
    }

    /// The trace hash and the number of events in it.
    pub fn trace_hash(&self) -> (u64, u64) {
        let i = self.inner.borrow();
        (i.trace, i.events)
    }

    /// Final check: every message and call has its one outcome, no breach.
    pub fn finish(&self) -> Result<Summary, Vec<String>> {
        let mut i = self.inner.borrow_mut();
        let extra = i.extra.clone();
        match i.checker.finish() {
            Ok(s) if extra.is_empty() => Ok(s),
            Ok(_) => Err(extra),
            Err(mut v) => {
                v.extend(extra);
                Err(v)
            }
        }
    }
}
