//! Exactly once, in order, through connection cuts; explicit failures when a
//! session cannot resume; no hang when a connection stalls.

mod common;

use bytes::Bytes;
use common::proxy::{Faults, Proxy};
use mf_core::testing::checker::{Checker, Kind, payload, response_for};
use mf_driver_mio::{Client, Error, Fate, Receipt, Server};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What happened, recorded as it happened and replayed into the checker at
/// the end (so the checker sees sends before arrivals).
#[derive(Default)]
struct Log {
    sent: Vec<(u32, u64, u16, bool)>,
    outcomes: Vec<Outcome>,
}

enum Outcome {
    Receipt(u32, u64),
    SendFailed(u32, u64, Fate),
    Response(u32, u64, Bytes),
    CallFailed(u32, u64, mf_driver_mio::FailReason, Fate),
}

/// Origins of messages the server pushes: `SERVER_ORIGIN + client origin`.
const SERVER_ORIGIN: u32 = 1000;
/// The server pushes one message for every this many one-way messages.
const PUSH_EVERY: u64 = 8;

/// A push the server's `send` accepted: origin, seq, channel, its receipt.
type Push = (u32, u64, u16, mf_driver_mio::ServerReceipt);

struct Recorder {
    server: Server,
    /// What the server application took.
    arrivals: Arc<Mutex<Vec<Bytes>>>,
    pushes: Arc<Mutex<Vec<Push>>>,
    thread: std::thread::JoinHandle<()>,
}

/// A server that records arrivals, answers requests, and pushes a message
/// back to the session for every `PUSH_EVERY`th one-way message.
fn recording_server(workers: usize) -> Recorder {
    let server = common::server(workers);
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let pushes = Arc::new(Mutex::new(Vec::new()));
    let (s2, a2, p2) = (server.clone(), arrivals.clone(), pushes.clone());
    let thread = std::thread::spawn(move || {
        let s3 = s2.clone();
        let mut next_seq = std::collections::HashMap::<u32, u64>::new();
        let next_seq = Mutex::new(std::mem::take(&mut next_seq));
        s2.serve(move |req| {
            a2.lock().unwrap().push(req.body.clone());
            if req.is_request() {
                return Some(response_for(&req.body));
            }
            let tag = mf_core::testing::checker::parse(&req.body).unwrap();
            if tag.seq % PUSH_EVERY == 0 {
                let origin = SERVER_ORIGIN + tag.origin;
                let mut seqs = next_seq.lock().unwrap();
                let seq = *seqs.entry(origin).or_default();
                let body = payload(Kind::Message, origin, seq, 7, (seq % 50) as usize);
                // A full queue refuses the push: then it was never sent.
                if let Ok(r) = s3.send(req.session, 7, body) {
                    seqs.insert(origin, seq + 1);
                    p2.lock().unwrap().push((origin, seq, 7, r));
                }
            }
            None
        })
        .unwrap()
    });
    Recorder { server, arrivals, pushes, thread }
}

/// Takes what the server pushes to one client until told to stop.
fn receiver(client: Client, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<Bytes> {
    let mut got = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match client.recv_timeout(Duration::from_millis(20)) {
            Ok(m) => got.push(m.body),
            Err(Error::Timeout) => {}
            Err(e) => panic!("client recv: {e}"),
        }
    }
    got
}

/// One application thread: `ops` operations alternating pipelined sends and
/// calls, on two channels of its own.
fn worker(client: Client, origin: u32, ops: u64, log: Arc<Mutex<Log>>) {
    let mut receipts: Vec<(u64, Receipt)> = Vec::new();
    let mut local = Log::default();
    for seq in 0..ops {
        let channel = (origin * 2 + (seq % 2) as u32) as u16;
        let ch = client.channel(channel);
        if seq % 4 == 3 {
            let body = payload(Kind::Request, origin, seq, channel, (seq % 64) as usize);
            local.sent.push((origin, seq, channel, true));
            match ch.call(body) {
                Ok(b) => local.outcomes.push(Outcome::Response(origin, seq, b)),
                Err(Error::SessionLost { reason, fate, .. }) => local.outcomes.push(Outcome::CallFailed(
                    origin,
                    seq,
                    mf_driver_mio::FailReason::SessionLost(reason),
                    fate,
                )),
                Err(e) => panic!("call {origin}/{seq}: {e}"),
            }
        } else {
            let body = payload(Kind::Message, origin, seq, channel, (seq % 200) as usize);
            local.sent.push((origin, seq, channel, false));
            receipts.push((seq, ch.send(body).unwrap_or_else(|e| panic!("send {origin}/{seq}: {e}"))));
        }
    }
    for (seq, r) in receipts {
        match r.wait_timeout(Duration::from_secs(60)) {
            Ok(()) => local.outcomes.push(Outcome::Receipt(origin, seq)),
            Err(Error::SessionLost { fate, .. }) => {
                local.outcomes.push(Outcome::SendFailed(origin, seq, fate))
            }
            Err(e) => panic!("receipt {origin}/{seq}: {e}"),
        }
    }
    let mut g = log.lock().unwrap();
    g.sent.extend(local.sent);
    g.outcomes.extend(local.outcomes);
}

fn check(log: &Log, arrivals: &[Bytes]) -> mf_core::testing::checker::Summary {
    let mut c = Checker::new();
    for &(o, s, ch, call) in &log.sent {
        if call { c.called(o, s, ch) } else { c.sent(o, s, ch) }
    }
    for a in arrivals {
        c.arrived(a);
    }
    for o in &log.outcomes {
        match o {
            Outcome::Receipt(o, s) => c.receipt(*o, *s),
            Outcome::SendFailed(o, s, f) => c.send_failed(*o, *s, *f),
            Outcome::Response(o, s, b) => c.response(*o, *s, b),
            Outcome::CallFailed(o, s, r, f) => c.call_failed(*o, *s, *r, *f),
        }
    }
    match c.finish() {
        Ok(s) => s,
        Err(v) => panic!("contract violations:\n{}", v.join("\n")),
    }
}

/// `total` messages and calls from 2 clients x 2 threads, and the server's
/// pushes back, through a proxy that cuts every connection after a random
/// number of bytes.
fn exactly_once_through_cuts(total: u64, cut_after_bytes_max: u64, min_cuts: u64, seed: u64) {
    println!("seed {seed}");
    let rec = recording_server(2);
    let proxy = Proxy::start(rec.server.local_addr(), seed);
    proxy.set_faults(Faults { cut_after_bytes_max, stall_instead: false });
    let log = Arc::new(Mutex::new(Log::default()));
    let started = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut receivers = Vec::new();
    let mut clients = Vec::new();
    for c in 0..2u32 {
        let client = Client::connect(proxy.addr(), common::client_config(seed + c as u64)).unwrap();
        for t in 0..2u32 {
            let (client, log) = (client.clone(), log.clone());
            let origin = c * 2 + t;
            threads.push(std::thread::spawn(move || worker(client, origin, total / 4, log)));
        }
        let (c2, stop2) = (client.clone(), stop.clone());
        receivers.push(std::thread::spawn(move || receiver(c2, stop2)));
        clients.push(client);
    }
    for t in threads {
        t.join().unwrap();
    }
    // Every push has been issued (its trigger has its receipt); collect
    // their receipts while the receivers still take them.
    let pushes = std::mem::take(&mut *rec.pushes.lock().unwrap());
    let mut push_log = Log::default();
    for (origin, seq, channel, r) in pushes {
        push_log.sent.push((origin, seq, channel, false));
        match r.wait_timeout(Duration::from_secs(60)) {
            Ok(()) => push_log.outcomes.push(Outcome::Receipt(origin, seq)),
            Err(Error::SessionLost { fate, .. }) => {
                push_log.outcomes.push(Outcome::SendFailed(origin, seq, fate))
            }
            Err(e) => panic!("push {origin}/{seq}: {e}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut arrivals = Vec::new();
    for r in receivers {
        arrivals.extend(r.join().unwrap());
    }
    let cuts = proxy.cuts();
    let resumes: u64 = clients.iter().map(|c| c.stats().session.resumes).sum();
    let retransmitted: u64 = clients.iter().map(|c| c.stats().session.frames_retransmitted).sum();
    for c in &clients {
        c.close().unwrap();
    }
    rec.server.shutdown();
    rec.thread.join().unwrap();
    arrivals.extend(rec.arrivals.lock().unwrap().iter().cloned());
    let mut log = std::mem::take(&mut *log.lock().unwrap());
    let pushed = push_log.sent.len() as u64;
    log.sent.extend(push_log.sent);
    log.outcomes.extend(push_log.outcomes);
    let summary = check(&log, &arrivals);
    println!(
        "{total} ops + {pushed} server pushes in {:?}: {cuts} cuts, {resumes} resumes, \
         {retransmitted} frames retransmitted, {summary:?}",
        started.elapsed()
    );
    assert_eq!(summary.messages + summary.calls, total + pushed);
    assert!(pushed >= total / 16, "only {pushed} pushes");
    assert_eq!(summary.failed_not_delivered + summary.failed_unknown, 0, "every session resumed");
    assert_eq!(summary.receipts + summary.responses, total + pushed);
    assert!(cuts >= min_cuts, "only {cuts} cuts");
    assert!(resumes >= min_cuts / 2, "only {resumes} resumes");
}

/// The run the issue names: 100,000 messages and calls, 50+ cuts at random
/// byte offsets (about 6 s in debug).
#[test]
fn exactly_once_in_order_100k_through_50_cuts() {
    exactly_once_through_cuts(100_000, 64 << 10, 50, 11);
}

/// Short connections: cuts every few kilobytes, so cuts land inside
/// handshakes, fragments and retransmissions too.
#[test]
fn exactly_once_in_order_through_frequent_cuts() {
    exactly_once_through_cuts(8_000, 4 << 10, 100, 7);
}

/// A session the server no longer has (it restarted) cannot resume: every
/// pending call and message fails explicitly, later operations are refused
/// with the session's fate, and nothing hangs.
#[test]
fn server_restart_fails_pending_work_explicitly() {
    // Server A never answers (pull API, nobody pulls).
    let a = common::server(1);
    let proxy = Proxy::start(a.local_addr(), 3);
    let client = Client::connect(proxy.addr(), common::client_config(3)).unwrap();
    let receipt = client.send("unanswered message").unwrap();
    let c2 = client.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(c2.call("unanswered call")).unwrap());
    // Wait until A holds the request.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.stats().msgs_received < 2 {
        assert!(Instant::now() < deadline, "request never reached server A");
        std::thread::sleep(Duration::from_millis(2));
    }
    // "Restart": the address now leads to a fresh server B.
    let b = common::server(1);
    proxy.set_target(b.local_addr());
    proxy.reset_all();
    let r = rx.recv_timeout(Duration::from_secs(20)).expect("call hung after restart");
    match r {
        Err(Error::SessionLost { reason, fate, message: None }) => {
            assert_eq!(reason.code, mf_driver_mio::CloseCode::SessionUnknown);
            assert_eq!(fate, Fate::Unknown, "the request had reached server A");
        }
        other => panic!("expected SessionLost, got {other:?}"),
    }
    match receipt.wait_timeout(Duration::from_secs(5)) {
        Err(Error::SessionLost { fate: Fate::Unknown, .. }) => {}
        other => panic!("expected the message to fail with fate unknown, got {other:?}"),
    }
    assert!(matches!(client.state(), mf_driver_mio::ClientState::Ended(_)));
    match client.send("after the end") {
        Err(Error::SessionLost { fate: Fate::NotDelivered, message: Some(m), .. }) => {
            assert_eq!(&m[..], b"after the end");
        }
        other => panic!("expected the refused message back, got {other:?}"),
    }
    assert!(matches!(client.recv_timeout(Duration::from_secs(5)), Err(Error::SessionLost { .. })));
    drop(proxy);
    a.shutdown();
    b.shutdown();
}

/// A graceful server shutdown ends the session with `Shutdown`: a waiting
/// call fails explicitly instead of hanging.
#[test]
fn server_shutdown_wakes_waiting_call() {
    let a = common::server(2);
    let client = Client::connect(a.local_addr(), common::client_config(4)).unwrap();
    let c2 = client.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(c2.call("never answered")).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.stats().msgs_received < 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    a.shutdown();
    match rx.recv_timeout(Duration::from_secs(20)).expect("call hung after shutdown") {
        Err(Error::SessionLost { reason, .. }) => assert_eq!(reason.code, mf_driver_mio::CloseCode::Shutdown),
        other => panic!("expected SessionLost(Shutdown), got {other:?}"),
    }
}

/// A connection that silently stops forwarding is noticed by the idle
/// timeout; the session resumes on a new connection and the call completes.
#[test]
fn stalled_connection_recovers_through_idle_timeout() {
    let (server, _addr, st) = common::echo_server(1);
    let proxy = Proxy::start(server.local_addr(), 5);
    let client = Client::connect(proxy.addr(), common::client_config(5)).unwrap();
    assert_eq!(&client.call("before").unwrap()[..], b"before");
    // Stall the next bytes of this connection; new connections are clean.
    proxy.set_faults(Faults { cut_after_bytes_max: 1, stall_instead: true });
    proxy.reset_all();
    // The reconnect (through the stalling proxy) stalls after 1 byte ...
    let t = Instant::now();
    let c2 = client.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(c2.call("through the stall")).unwrap());
    std::thread::sleep(Duration::from_millis(50));
    // ... and the connections after it are clean.
    proxy.set_faults(Faults::default());
    let r = rx.recv_timeout(Duration::from_secs(20)).expect("call hung on a stalled connection");
    assert_eq!(&r.unwrap()[..], b"through the stall");
    println!("recovered in {:?}", t.elapsed());
    assert!(client.stats().session.resumes >= 1);
    client.close().unwrap();
    server.shutdown();
    st.join().unwrap();
}
