//! The core alone: 64-byte one-way messages from a client to a server
//! endpoint in memory, with receipts flowing back. Prints messages per second
//! on one core and heap allocations per message in steady state.
//!
//! Run: `cargo bench -p mf-core --bench core_pair` (add `-- --messages N`).
//! The best of three runs is reported, as the machine is shared.

use bytes::Bytes;
use mf_core::{Client, Config, Endpoint, Event, Instant, TransmitBuf, seed_from_u64};
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
    conn: mf_core::ConnId,
    buf: TransmitBuf,
    now: Instant,
    delivered: u64,
    responses: u64,
}

impl Pair {
    fn new() -> Pair {
        let config = Config::default();
        let mut p = Pair {
            client: Client::new(config.clone(), seed_from_u64(1)).unwrap(),
            server: Endpoint::new(config, seed_from_u64(2)).unwrap(),
            conn: placeholder_conn(),
            buf: TransmitBuf::new(),
            now: Instant::ZERO,
            delivered: 0,
            responses: 0,
        };
        p.client.connected(p.now);
        p.conn = p.server.accept(p.now);
        p.pump();
        p
    }

    /// Move bytes both ways until quiet; the server application takes
    /// everything; count receipts.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            self.client.poll_transmit(self.now, &mut self.buf);
            while !self.buf.is_empty() {
                moved = true;
                let c = self.buf.chunk();
                let n = c.len();
                self.server.handle_input(self.now, self.conn, c);
                self.buf.advance(n);
            }
            while self.server.recv(self.now).is_some() {}
            while self.server.poll_event().is_some() {}
            while self.server.poll_dirty().is_some() {}
            self.server.handle_timeout(self.now);
            self.server.poll_transmit(self.now, self.conn, &mut self.buf);
            while !self.buf.is_empty() {
                moved = true;
                let c = self.buf.chunk();
                let n = c.len();
                self.client.handle_input(self.now, c);
                self.buf.advance(n);
            }
            while let Some(e) = self.client.poll_event() {
                if let Event::Delivered(_) = e {
                    self.delivered += 1;
                }
            }
            self.client.handle_timeout(self.now);
            if !moved {
                break;
            }
        }
    }
}

impl Pair {
    /// As `pump`, but the server answers every request with `body`.
    fn pump_answering(&mut self, body: &Bytes) {
        loop {
            let mut moved = false;
            self.client.poll_transmit(self.now, &mut self.buf);
            while !self.buf.is_empty() {
                moved = true;
                let c = self.buf.chunk();
                let n = c.len();
                self.server.handle_input(self.now, self.conn, c);
                self.buf.advance(n);
            }
            while let Some((s, m)) = self.server.recv(self.now) {
                if let mf_core::Incoming::Request { id, .. } = m {
                    self.server.respond(self.now, s, id, body.clone()).expect("room");
                }
            }
            while self.server.poll_event().is_some() {}
            while self.server.poll_dirty().is_some() {}
            self.server.handle_timeout(self.now);
            self.server.poll_transmit(self.now, self.conn, &mut self.buf);
            while !self.buf.is_empty() {
                moved = true;
                let c = self.buf.chunk();
                let n = c.len();
                self.client.handle_input(self.now, c);
                self.buf.advance(n);
            }
            while let Some(e) = self.client.poll_event() {
                if let Event::Response { .. } = e {
                    self.responses += 1;
                }
            }
            self.client.handle_timeout(self.now);
            if !moved {
                break;
            }
        }
    }
}

fn placeholder_conn() -> mf_core::ConnId {
    // A placeholder id, replaced in `Pair::new` by the real one.
    let mut e = Endpoint::new(Config::default(), seed_from_u64(0)).unwrap();
    e.accept(Instant::ZERO)
}

fn run(p: &mut Pair, body: &Bytes, messages: u64, batch: u64) -> (u64, std::time::Duration) {
    let start = std::time::Instant::now();
    let mut sent = 0;
    while sent < messages {
        for _ in 0..batch {
            p.client.send(0, body.clone()).expect("queue has room");
        }
        sent += batch;
        // Time passes so acks and credits are due.
        p.now = p.now.add_millis(1);
        p.pump();
    }
    (sent, start.elapsed())
}

/// Pipelined calls: `batch` calls out, the server answers each, repeat.
fn run_calls(p: &mut Pair, body: &Bytes, calls: u64, batch: u64) -> (u64, std::time::Duration) {
    let start = std::time::Instant::now();
    let mut done = 0;
    while done < calls {
        for _ in 0..batch {
            p.client.call(0, body.clone(), None).expect("room for the batch");
        }
        done += batch;
        p.now = p.now.add_millis(1);
        p.pump_answering(body);
    }
    (done, start.elapsed())
}

fn main() {
    let mut messages: u64 = 5_000_000;
    let mut calls_mode = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--messages" {
            messages = args.next().and_then(|v| v.parse().ok()).unwrap_or(messages);
        }
        if a == "--calls" {
            calls_mode = true;
        }
    }
    if calls_mode {
        static BODY: [u8; 64] = [7u8; 64];
        let body = Bytes::from_static(&BODY);
        let mut p = Pair::new();
        let (warm, _) = run_calls(&mut p, &body, 100_000, 256);
        let before = ALLOCS.load(Relaxed);
        let mut best = None;
        let mut total = 0;
        for _ in 0..3 {
            let (n, t) = run_calls(&mut p, &body, messages / 2, 256);
            total += n;
            best = Some(best.map_or(t, |b: std::time::Duration| b.min(t)));
        }
        let allocs = ALLOCS.load(Relaxed) - before;
        let t = best.unwrap_or_default();
        let rate = (messages / 2) as f64 / t.as_secs_f64();
        assert_eq!(p.responses, total + warm, "every call answered");
        println!("core_pair --calls: 64 B request and response, 256 pipelined");
        println!("  throughput   {:.2} M calls/s on one core ({:.0} ns/call)", rate / 1e6, 1e9 / rate);
        println!("  allocations  {:.3} per call ({allocs} for {total} calls)", allocs as f64 / total as f64);
        return;
    }
    // A static body: the benchmark measures the core, not the reference
    // counting of a body the application shares between messages.
    static BODY: [u8; 64] = [7u8; 64];
    let body = Bytes::from_static(&BODY);
    let batch = 256;
    let mut p = Pair::new();
    // Warm up: buffers reach their steady capacity.
    let (warm, _) = run(&mut p, &body, 200_000, batch);
    let before = ALLOCS.load(Relaxed);
    let mut runs = Vec::new();
    let mut total = 0;
    for _ in 0..3 {
        let (n, t) = run(&mut p, &body, messages, batch);
        total += n;
        runs.push((n, t));
    }
    let allocs = ALLOCS.load(Relaxed) - before;
    let (messages, t) = runs.iter().copied().min_by_key(|r| r.1).unwrap();
    // Flush the last receipts, then every message sent must have one.
    p.now = p.now.add_millis(1);
    p.pump();
    assert_eq!(p.delivered, warm + total, "every message gets its receipt");
    let rate = messages as f64 / t.as_secs_f64();
    println!("core_pair: {messages} x 64 B one-way messages, batches of {batch}, receipts back");
    println!("  throughput   {:.2} M messages/s on one core ({:.0} ns/message)", rate / 1e6, 1e9 / rate);
    println!(
        "  allocations  {:.3} per message in steady state ({allocs} for {total} messages)",
        allocs as f64 / total as f64
    );
}
