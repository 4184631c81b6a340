//! Cancel safety, method by method: dropping a future at any point loses
//! nothing and duplicates nothing.

// `Config` is non_exhaustive: it can only be built by default and assignment.
#![allow(clippy::field_reassign_with_default)]

use bytes::Bytes;
use mf_core::testing::checker::{Checker, Kind, payload, response_for};
use mf_driver_tokio::transport::{TcpConnector, TcpListener};
use mf_driver_tokio::{
    CallError, Client, ClientOptions, FailReason, Incoming, SendError, Server, ServerOptions,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn pair(config: mf_core::Config) -> (Server, Client) {
    let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    let server = Server::start(l, ServerOptions::new(config.clone())).unwrap();
    let client = Client::connect(TcpConnector::new(addr), ClientOptions::new(config)).await.unwrap();
    (server, client)
}

/// Calls dropped at random points (before acceptance, in flight, while the
/// server is working on them): the server application takes each request
/// at most once, the core ends with no call in flight, and the session
/// still works.
#[tokio::test]
async fn dropped_calls_are_seen_at_most_once() {
    let (server, client) = pair(mf_core::Config::default()).await;
    let checker = Arc::new(Mutex::new(Checker::new()));
    // The server application: records each request, answers after a delay.
    let app = tokio::spawn({
        let (server, checker) = (server.clone(), checker.clone());
        async move {
            while let Some((sid, item)) = server.recv().await {
                checker.lock().unwrap().arrived(item.body());
                if let Incoming::Request { id, body, .. } = item {
                    let server = server.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(u64::from(body[6]) % 7)).await;
                        let _ = server.respond(sid, id, response_for(&body));
                    });
                }
            }
        }
    });
    let mut tasks = Vec::new();
    for seq in 0..300u64 {
        let body = payload(Kind::Request, 0, seq, (seq % 3) as u16, 16);
        checker.lock().unwrap().called(0, seq, (seq % 3) as u16);
        let client = client.clone();
        let checker = checker.clone();
        let give_up_us = (seq * 7919) % 6000;
        tasks.push(tokio::spawn(async move {
            let r =
                tokio::time::timeout(Duration::from_micros(give_up_us), client.call((seq % 3) as u16, body))
                    .await;
            let mut c = checker.lock().unwrap();
            match r {
                Ok(Ok(resp)) => c.response(0, seq, &resp),
                Ok(Err(CallError::Failed(f))) => c.call_failed(0, seq, f.reason, f.fate),
                Ok(Err(e)) => panic!("call {seq}: {e}"),
                // Dropped: whatever happened, the server must not see it twice.
                Err(_) => c.call_failed(0, seq, FailReason::Cancelled, mf_core::Fate::Unknown),
            }
        }));
        if seq % 10 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Let late requests and responses settle (a call after all of them has
    // its answer after theirs), then check.
    let last = payload(Kind::Request, 1, 0, 9, 0);
    checker.lock().unwrap().called(1, 0, 9);
    let resp = client.call(9, last).await.unwrap();
    checker.lock().unwrap().response(1, 0, &resp);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(client.queues().calls_in_flight, 0);
    let summary = checker.lock().unwrap().finish().unwrap_or_else(|v| panic!("{v:#?}"));
    assert!(summary.responses > 0 && summary.responses < 300, "{summary:?}");
    client.close().await;
    server.shutdown().await;
    app.abort();
}

/// A `call` future dropped before its first poll sends nothing.
#[tokio::test]
async fn call_dropped_before_polling_sends_nothing() {
    let (server, client) = pair(mf_core::Config::default()).await;
    drop(client.call(0, "never"));
    let second = client.try_call(0, "second", None).unwrap();
    let (sid, first) = server.recv().await.unwrap();
    assert_eq!(&first.body()[..], b"second");
    let Incoming::Request { id, .. } = first else { panic!() };
    server.respond(sid, id, "ok").unwrap();
    assert_eq!(&second.await.unwrap()[..], b"ok");
}

/// A `send` future dropped while it waits for room has not queued its
/// message: it never arrives. A `recv` future dropped by a timeout loses
/// nothing.
#[tokio::test]
async fn dropped_send_and_recv_lose_and_duplicate_nothing() {
    let mut config = mf_core::Config::default();
    config.send_queue_msgs_max = 4;
    let (server, client) = pair(config).await;
    // Fill the window and the queue: the server application takes nothing yet.
    let mut n = 0u64;
    loop {
        match client.try_send(0, payload(Kind::Message, 0, n, 0, 8)) {
            Ok(_) => n += 1,
            Err(SendError::Full(_)) => break,
            Err(e) => panic!("{e:?}"),
        }
        if n % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(n < 5000);
    }
    // Give up on a send that waits for room.
    let dropped = payload(Kind::Message, 0, 999_999, 0, 8);
    assert!(tokio::time::timeout(Duration::from_millis(20), client.send(0, dropped)).await.is_err());
    // Take everything, with recv futures that time out now and then.
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        if let Ok(Some((_, m))) = tokio::time::timeout(Duration::from_micros(300), server.recv()).await {
            got.push(mf_core::testing::checker::parse(m.body()).unwrap().seq);
        }
    }
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "every message once, in order");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), server.recv()).await.is_err(),
        "the dropped send arrived"
    );

    // Server to client, received through a timing-out recv.
    let sid = server.session_by_token(&client.token()).unwrap();
    for i in 0..50u64 {
        server.send(sid, 1, Bytes::from(i.to_le_bytes().to_vec())).await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 50 {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_micros(200), client.recv()).await {
            seen.push(u64::from_le_bytes(m.body()[..8].try_into().unwrap()));
        }
    }
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
}

/// A deadline enforced by the core: the call fails with `Deadline`, and the
/// driver is not left holding anything.
#[tokio::test]
async fn call_deadline_fails_explicitly() {
    let (server, client) = pair(mf_core::Config::default()).await;
    let r = client.call_timeout(0, "slow", Duration::from_millis(30)).await;
    match r {
        Err(CallError::Failed(f)) => assert_eq!(f.reason, FailReason::Deadline),
        other => panic!("expected a deadline failure, got {other:?}"),
    }
    // The server took it (it had arrived); answering now is refused quietly.
    let (sid, req) = server.recv().await.unwrap();
    let Incoming::Request { id, .. } = req else { panic!() };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!server.respond(sid, id, "late").unwrap(), "a cancelled request must no longer be open");
    assert_eq!(client.queues().calls_in_flight, 0);
}

/// `try_call` hands a request back when calls in flight are at the limit;
/// dropping a `PendingCall` frees its slot.
#[tokio::test]
async fn try_call_hands_back_and_pending_call_drop_frees() {
    let mut config = mf_core::Config::default();
    config.calls_in_flight_max = 2;
    let (_server, client) = pair(config).await;
    let a = client.try_call(0, "a", None).unwrap();
    let _b = client.try_call(0, "b", None).unwrap();
    match client.try_call(0, "c", None) {
        Err(SendError::Full(body)) => assert_eq!(&body[..], b"c"),
        other => panic!("expected Full, got {other:?}"),
    }
    drop(a);
    assert!(client.try_call(0, "c", None).is_ok());
}
