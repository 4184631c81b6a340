//! Heap allocations per message in steady state (BRIEF P6: at most one),
//! counted with a counting global allocator. This binary holds one test so
//! no other test's allocations are counted.
//!
//! Ping-pong calls with time passing between them, as the drivers run the
//! core: every call moves the session's timers (ack delay, keep-alive, idle),
//! so this also covers the endpoint's timer heap.

use bytes::Bytes;
use mf_core::{Client, Config, ConnId, Endpoint, Event, Incoming, Instant, TransmitBuf, seed_from_u64};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Pair {
    client: Client,
    server: Endpoint,
    conn: ConnId,
    buf: TransmitBuf,
    now: Instant,
    responses: u64,
}

impl Pair {
    fn new() -> Pair {
        let config = Config::default();
        let mut client = Client::new(config.clone(), seed_from_u64(1)).unwrap();
        let mut server = Endpoint::new(config, seed_from_u64(2)).unwrap();
        client.connected(Instant::ZERO);
        let conn = server.accept(Instant::ZERO);
        Pair { client, server, conn, buf: TransmitBuf::new(), now: Instant::ZERO, responses: 0 }
    }

    /// Move bytes both ways until quiet; the server answers every request
    /// with `answer`.
    fn pump(&mut self, answer: &Bytes) {
        for _round in 0..64 {
            let mut moved = false;
            self.client.poll_transmit(self.now, &mut self.buf);
            while !self.buf.is_empty() {
                moved = true;
                let n = self.buf.chunk().len();
                self.server.handle_input(self.now, self.conn, self.buf.chunk());
                self.buf.advance(n);
            }
            while let Some((s, m)) = self.server.recv(self.now) {
                if let Incoming::Request { id, .. } = m {
                    self.server.respond(self.now, s, id, answer.clone()).expect("room to answer");
                }
            }
            while self.server.poll_event().is_some() {}
            while self.server.poll_dirty().is_some() {}
            self.server.handle_timeout(self.now);
            self.server.poll_transmit(self.now, self.conn, &mut self.buf);
            while !self.buf.is_empty() {
                moved = true;
                let n = self.buf.chunk().len();
                self.client.handle_input(self.now, self.buf.chunk());
                self.buf.advance(n);
            }
            while let Some(e) = self.client.poll_event() {
                if let Event::Response { .. } = e {
                    self.responses += 1;
                }
            }
            self.client.handle_timeout(self.now);
            if !moved {
                return;
            }
        }
        panic!("the pair did not go quiet in 64 rounds");
    }

    /// `calls` sequential calls, `step_us` of time passing before each,
    /// each with a deadline `deadline_ms` from now if given.
    fn ping_pong(&mut self, body: &Bytes, calls: u64, step_us: u64, deadline_ms: Option<u64>) {
        for _ in 0..calls {
            self.now = Instant::from_micros(self.now.as_micros() + step_us);
            let deadline = deadline_ms.map(|ms| self.now.add_millis(ms));
            self.client.call(0, body.clone(), deadline).expect("room for one call");
            self.pump(body);
        }
    }
}

#[test]
fn ping_pong_allocates_at_most_one_block_per_message() {
    static BODY: [u8; 64] = [7u8; 64];
    let body = Bytes::from_static(&BODY);
    let mut p = Pair::new();
    // Time steps that cross the ack delay now and then, as a real ping-pong
    // at tens of microseconds per call does; without and with a deadline
    // per call (the call table's deadline heap).
    for deadline_ms in [None, Some(1_000)] {
        p.ping_pong(&body, 5_000, 37, deadline_ms);
        let calls = 40_000;
        let answered = p.responses;
        let before = ALLOCS.load(Relaxed);
        p.ping_pong(&body, calls, 37, deadline_ms);
        let allocs = ALLOCS.load(Relaxed) - before;
        assert_eq!(p.responses - answered, calls, "every call answered");
        // A call is two messages; each arrives in a block of its own (the
        // received body). Anything more per call is a leak of allocations
        // into the steady state (such as a timer heap that re-grows).
        let per_message = allocs as f64 / (2 * calls) as f64;
        println!(
            "deadline {deadline_ms:?}: {allocs} allocations for {calls} calls: {per_message:.4} per message"
        );
        assert!(
            per_message <= 1.0 + 1e-3,
            "deadline {deadline_ms:?}: {per_message:.4} allocations per message ({allocs} for {calls} calls)"
        );
    }
}
