//! The blocking API's modes, one behaviour per test.

mod common;

use mf_driver_mio::{Client, ClientState, Error, Fate, Reply};
use std::time::{Duration, Instant};

#[test]
fn call_timeout_fails_with_deadline_when_unanswered() {
    let server = common::server(1); // pull mode: nobody answers
    let client = Client::connect(server.local_addr(), common::client_config(31)).unwrap();
    let t = Instant::now();
    match client.call_timeout("ping", Duration::from_millis(100)) {
        Err(Error::Deadline { fate }) => assert_eq!(fate, Fate::Unknown),
        other => panic!("expected Deadline, got {other:?}"),
    }
    assert!(t.elapsed() >= Duration::from_millis(100));
    // The session is fine afterwards.
    assert!(matches!(client.state(), ClientState::Connected | ClientState::Handshaking));
    server.shutdown();
}

/// A call started with a deadline and then waited for without one still
/// fails at its deadline: the waiting thread, reading the socket itself,
/// must not sleep in a blocking read past it.
#[test]
fn pending_call_deadline_ends_an_untimed_wait() {
    let server = common::server(1); // pull mode: nobody answers
    let client = Client::connect(server.local_addr(), common::client_config(39)).unwrap();
    let t = Instant::now();
    let pending = client.call_start("ping", Some(Duration::from_millis(100))).unwrap();
    match pending.wait() {
        Err(Error::Deadline { fate }) => assert_eq!(fate, Fate::Unknown),
        other => panic!("expected Deadline, got {other:?}"),
    }
    assert!(t.elapsed() >= Duration::from_millis(100));
    // Untimed calls still lead and complete once answered (the responder
    // may see the expired request too: it answers whatever comes).
    let s2 = server.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let answer = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(req) = s2.recv_timeout(Duration::from_millis(20)) {
                let _ = s2.respond(&req, "pong");
            }
        }
    });
    assert_eq!(&client.call("ping").unwrap()[..], b"pong");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    answer.join().unwrap();
    server.shutdown();
}

/// Against a peer that accepts and then says nothing at all (no WELCOME, no
/// acknowledgement that could wake a reader), a call's deadline still ends
/// the caller's wait on time: it fails while the connection is still in
/// its handshake, long before the handshake timeout would drop it.
#[test]
fn call_deadline_ends_a_wait_on_a_silent_peer() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || silent.accept().map(|(s, _)| s));
    let mut config = common::client_config(40);
    config.protocol.handshake_timeout_ms = 60_000;
    config.protocol.idle_timeout_ms = 120_000;
    config.protocol.keepalive_interval_ms = 60_000;
    let client = Client::connect(addr, config).unwrap();
    let pending = client.call_start("anyone?", Some(Duration::from_millis(100))).unwrap();
    match pending.wait() {
        Err(Error::Deadline { .. }) => {}
        other => panic!("expected Deadline, got {other:?}"),
    }
    assert_eq!(client.state(), ClientState::Handshaking);
    match client.call_timeout("anyone?", Duration::from_millis(50)) {
        Err(Error::Deadline { .. }) => {}
        other => panic!("expected Deadline, got {other:?}"),
    }
    assert_eq!(client.state(), ClientState::Handshaking);
    drop(client);
    drop(held.join().unwrap());
}

#[test]
fn pull_api_responds_and_rejects() {
    let server = common::server(2);
    let client = Client::connect(server.local_addr(), common::client_config(32)).unwrap();
    let s2 = server.clone();
    let t = std::thread::spawn(move || {
        for _ in 0..2 {
            let req = s2.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(req.is_request());
            if &req.body[..] == b"reject me" {
                assert!(s2.reject(&req, 42));
            } else {
                assert!(s2.respond(&req, "yes").unwrap());
            }
        }
    });
    assert_eq!(&client.call("answer me").unwrap()[..], b"yes");
    assert!(matches!(client.call("reject me"), Err(Error::Rejected(42))));
    t.join().unwrap();
    assert!(matches!(server.try_recv(), Err(Error::Empty)));
    assert!(matches!(server.recv_timeout(Duration::from_millis(20)), Err(Error::Timeout)));
    server.shutdown();
}

#[test]
fn server_push_recv_modes_and_channels() {
    let server = common::server(1);
    let client = Client::connect(server.local_addr(), common::client_config(33)).unwrap();
    assert!(matches!(client.try_recv(), Err(Error::Empty)));
    assert!(matches!(client.recv_timeout(Duration::from_millis(20)), Err(Error::Timeout)));
    client.channel(9).send("hi on 9").unwrap();
    let hi = server.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(hi.channel, 9);
    assert!(!hi.is_request());
    let receipt = server.send(hi.session, 5, "pushed").unwrap();
    // Not taken by the client application yet: no receipt.
    assert!(matches!(receipt.wait_timeout(Duration::from_millis(30)), Err(Error::Timeout)));
    assert_eq!(receipt.poll(), None);
    let m = client.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((m.channel, &m.body[..]), (5, &b"pushed"[..]));
    receipt.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(receipt.poll(), Some(Ok(())));
    // A blocked recv wakes for a push from another thread.
    let c2 = client.clone();
    let t = std::thread::spawn(move || c2.recv().unwrap());
    std::thread::sleep(Duration::from_millis(20));
    server.send(hi.session, 6, "later").unwrap();
    let m = t.join().unwrap();
    assert_eq!((m.channel, &m.body[..]), (6, &b"later"[..]));
    client.close().unwrap();
    server.shutdown();
}

#[test]
fn receipts_wait_and_poll() {
    let server = common::server(1);
    let client = Client::connect(server.local_addr(), common::client_config(34)).unwrap();
    let r = client.send("one").unwrap();
    // Not taken by the server application yet: no receipt.
    assert!(matches!(r.wait_timeout(Duration::from_millis(50)), Err(Error::Timeout)));
    assert_eq!(r.poll(), None);
    server.recv_timeout(Duration::from_secs(5)).unwrap();
    r.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(r.poll(), Some(Ok(())));
    client.close().unwrap();
    server.shutdown();
}

#[test]
fn pipelined_calls_from_one_thread_batch_their_writes() {
    let (server, addr, t) = common::echo_server(1);
    let client = Client::connect(addr, common::client_config(35)).unwrap();
    client.call("warm up").unwrap();
    let before = client.stats().io;
    const N: usize = 2000;
    for round in 0..(N / 200) {
        let pending: Vec<_> =
            (0..200).map(|i| client.call_start(format!("{round}/{i}"), None).unwrap()).collect();
        for (i, p) in pending.into_iter().enumerate() {
            assert_eq!(p.wait().unwrap(), format!("{round}/{i}").as_bytes());
        }
    }
    // Fire-and-forget messages in a burst.
    let receipts: Vec<_> = (0..N).map(|i| client.send(format!("m{i}")).unwrap()).collect();
    for r in receipts {
        r.wait_timeout(Duration::from_secs(10)).unwrap();
    }
    let io = client.stats().io;
    let writes = io.write_syscalls - before.write_syscalls;
    let per_msg = writes as f64 / (2 * N) as f64;
    println!("{writes} writes for {} messages and calls: {per_msg:.3} per message", 2 * N);
    // P7 asks <= 0.1 in the benchmark; here only that batching happens at all.
    assert!(per_msg < 0.5, "{per_msg}");
    let ss = server.stats();
    println!(
        "server: {} writes, {} reads for {} messages",
        ss.io.write_syscalls, ss.io.read_syscalls, ss.msgs_received
    );
    client.close().unwrap();
    server.shutdown();
    t.join().unwrap();
}

#[test]
fn dropped_pending_call_is_cancelled() {
    let server = common::server(1);
    let client = Client::connect(server.local_addr(), common::client_config(36)).unwrap();
    let mut p = client.call_start("slow", None).unwrap();
    assert!(p.try_take().is_none());
    assert!(matches!(p.wait_timeout(Duration::from_millis(20)), Err(Error::Timeout)));
    // The server application holds the request ...
    let req = server.recv_timeout(Duration::from_secs(5)).unwrap();
    // ... when the caller gives up on it.
    drop(p);
    assert_eq!(client.queues().calls_in_flight, 0);
    // A late answer is dropped, not delivered to anyone.
    let _ = server.respond(&req, "too late");
    assert!(matches!(client.recv_timeout(Duration::from_millis(50)), Err(Error::Timeout)));
    client.close().unwrap();
    server.shutdown();
}

#[test]
fn close_then_operations_are_refused_with_the_message() {
    let (server, addr, t) = common::echo_server(1);
    let client = Client::connect(addr, common::client_config(37)).unwrap();
    let r = client.send("last words").unwrap();
    client.close().unwrap();
    // Close waited for the receipt.
    assert_eq!(r.poll(), Some(Ok(())));
    assert!(matches!(client.state(), ClientState::Ended(_)));
    match client.send("after close") {
        Err(e) => assert_eq!(&e.into_message().unwrap()[..], b"after close"),
        Ok(_) => panic!("send after close accepted"),
    }
    server.shutdown();
    t.join().unwrap();
}

#[test]
fn resume_lands_on_other_workers_and_is_handed_over() {
    let (server, addr, t) = common::echo_server(4);
    assert_eq!(server.workers(), 4);
    let client = Client::connect(addr, common::client_config(38)).unwrap();
    for i in 0..30 {
        assert_eq!(client.call(format!("{i}")).unwrap(), format!("{i}").as_bytes());
        client.disconnect();
    }
    assert_eq!(&client.call("end").unwrap()[..], b"end");
    let s = client.stats();
    assert!(s.session.resumes >= 30, "{s:?}");
    let ss = server.stats();
    assert_eq!(ss.sessions, 1, "one session, resumed each time");
    // With four workers, 30 reconnects all landing on the owner is (1/4)^30.
    assert!(ss.handoffs > 0, "{ss:?}");
    client.close().unwrap();
    server.shutdown();
    t.join().unwrap();
}

#[test]
fn handler_can_reject_and_push() {
    let server = common::server(2);
    let addr = server.local_addr();
    let s2 = server.clone();
    let t = std::thread::spawn(move || {
        let s3 = s2.clone();
        s2.serve(move |req| {
            if &req.body[..] == b"no" {
                return Reply::Reject(7);
            }
            if !req.is_request() {
                s3.send(req.session, 2, "pong").unwrap();
                return Reply::Nothing;
            }
            Reply::Respond(req.body)
        })
        .unwrap()
    });
    let client = Client::connect(addr, common::client_config(39)).unwrap();
    assert!(matches!(client.call("no"), Err(Error::Rejected(7))));
    client.send("ping").unwrap();
    assert_eq!(&client.recv_timeout(Duration::from_secs(5)).unwrap().body[..], b"pong");
    client.close().unwrap();
    server.shutdown();
    t.join().unwrap();
}

#[test]
fn connect_to_nothing_fails_fast() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    assert!(matches!(Client::connect(addr, common::client_config(40)), Err(Error::Io(_))));
}

#[test]
fn many_threads_share_one_client() {
    let (server, addr, t) = common::echo_server(2);
    let client = Client::connect(addr, common::client_config(41)).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|k| {
            let c = client.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let body = format!("{k}:{i}");
                    assert_eq!(c.call(body.clone()).unwrap(), body.as_bytes());
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    client.close().unwrap();
    server.shutdown();
    t.join().unwrap();
}

#[test]
fn dropping_the_last_handle_still_delivers_queued_messages() {
    let server = common::server(1);
    let client = Client::connect(server.local_addr(), common::client_config(42)).unwrap();
    // More than the server's credit window: most must wait for credit,
    // after the last handle is gone.
    let n = 3 * common::protocol().window_msgs_max as usize;
    for i in 0..n {
        drop(client.send(format!("m{i}")).unwrap());
    }
    drop(client);
    for i in 0..n {
        let m = server.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(m.body, format!("m{i}").as_bytes());
    }
    // With every receipt back, the background close ends the session (well
    // before the server would expire it: session_linger_ms is 6 s).
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.stats().sessions > 0 {
        assert!(Instant::now() < deadline, "session not closed");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.shutdown();
}

#[test]
fn a_panicking_handler_rejects_its_request_and_the_server_carries_on() {
    let server = common::server(1);
    let addr = server.local_addr();
    let s2 = server.clone();
    let t = std::thread::spawn(move || {
        s2.serve(|req| {
            if &req.body[..] == b"boom" {
                panic!("handler bug (expected by the test)");
            }
            req.body
        })
        .unwrap()
    });
    let client = Client::connect(addr, common::client_config(43)).unwrap();
    assert!(matches!(client.call("boom"), Err(Error::Rejected(mf_driver_mio::REJECT_HANDLER_PANICKED))));
    assert_eq!(&client.call("fine").unwrap()[..], b"fine");
    client.close().unwrap();
    server.shutdown();
    t.join().unwrap();
}

#[test]
fn pull_api_responses_to_pipelined_calls_batch_their_writes() {
    let server = common::server(1);
    let client = Client::connect(server.local_addr(), common::client_config(44)).unwrap();
    const N: usize = 2000;
    let s2 = server.clone();
    let answering = std::thread::spawn(move || {
        for _ in 0..N {
            let req = s2.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(s2.respond(&req, req.body.clone()).unwrap());
        }
    });
    let before = server.stats().io.write_syscalls;
    for round in 0..(N / 200) {
        let pending: Vec<_> =
            (0..200).map(|i| client.call_start(format!("{round}/{i}"), None).unwrap()).collect();
        for (i, p) in pending.into_iter().enumerate() {
            assert_eq!(p.wait().unwrap(), format!("{round}/{i}").as_bytes());
        }
    }
    answering.join().unwrap();
    let writes = server.stats().io.write_syscalls - before;
    println!("server: {writes} writes for {N} responses");
    assert!((writes as f64) < N as f64 * 0.5, "{writes} writes for {N} responses");
    client.close().unwrap();
    server.shutdown();
}

/// The handles are shareable across threads (checked at compile time).
#[test]
fn handles_are_clone_send_sync() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    fn sendable<T: Send + Sync + 'static>() {}
    shareable::<Client>();
    shareable::<mf_driver_mio::Channel>();
    shareable::<mf_driver_mio::Server>();
    sendable::<mf_driver_mio::Receipt>();
    sendable::<mf_driver_mio::PendingCall>();
    sendable::<mf_driver_mio::ServerReceipt>();
    sendable::<Error>();
}
