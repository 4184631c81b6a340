//! Client and server over loopback TCP: calls, messages, receipts,
//! backpressure, server-to-client messages, shutdown.

// `Config` is non_exhaustive: it can only be built by default and assignment.
#![allow(clippy::field_reassign_with_default)]

use bytes::Bytes;
use mf_driver_tokio::transport::{TcpConnector, TcpListener};
use mf_driver_tokio::{
    CallError, Client, ClientOptions, FailReason, Incoming, Request, SendError, Server, ServerOptions,
};
use std::time::Duration;

fn listener() -> (TcpListener, std::net::SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

#[tokio::test]
async fn call_and_message_with_receipt() {
    let (l, addr) = listener();
    let server = Server::start(l, ServerOptions::default()).unwrap();
    let client = Client::connect(TcpConnector::new(addr), ClientOptions::default()).await.unwrap();
    let receipt = client.send(3, "one-way").await.unwrap();
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.call(1, "question").await }
    });
    let mut got = Vec::new();
    while got.len() < 2 {
        let (sid, item) = server.recv().await.unwrap();
        if let Incoming::Request { id, ref body, .. } = item {
            assert_eq!(&body[..], b"question");
            assert!(server.respond(sid, id, "answer").unwrap());
        }
        got.push(item);
    }
    assert_eq!(&call.await.unwrap().unwrap()[..], b"answer");
    receipt.await.unwrap();
    assert!(matches!(got[0], Incoming::Message { channel: 3, .. }));
    assert_eq!(client.close().await.code, mf_driver_tokio::CloseCode::Normal);
    server.shutdown().await;
}

#[tokio::test]
async fn handler_rejects_and_server_sends_back() {
    let (l, addr) = listener();
    let server = Server::start(l, ServerOptions::default()).unwrap();
    server.serve(|req: Request| async move {
        if req.body.starts_with(b"bad") { Err(42) } else { Ok(Bytes::from_static(b"ok")) }
    });
    let client = Client::connect(TcpConnector::new(addr), ClientOptions::default()).await.unwrap();
    assert_eq!(&client.call(0, "good").await.unwrap()[..], b"ok");
    match client.call(0, "bad").await {
        Err(CallError::Failed(f)) => assert_eq!(f.reason, FailReason::Rejected(42)),
        other => panic!("expected a rejection, got {other:?}"),
    }
    let sid = server.session_by_token(&client.token()).unwrap();
    let r = server.send(sid, 5, "push").await.unwrap();
    let m = client.recv().await.unwrap();
    assert_eq!((m.channel(), &m.body()[..]), (5, &b"push"[..]));
    r.await.unwrap();
    client.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn try_send_hands_the_message_back_when_full() {
    let (l, addr) = listener();
    let server = Server::start(l, ServerOptions::default()).unwrap();
    let mut config = mf_core::Config::default();
    config.send_queue_msgs_max = 8;
    config.window_msgs_max = 64;
    let client = Client::connect(TcpConnector::new(addr), ClientOptions::new(config)).await.unwrap();
    // The server application takes nothing: the window (64) fills, then the
    // send queue (8).
    let mut accepted = 0;
    let refused = loop {
        match client.try_send(0, Bytes::from(vec![7u8; 100])) {
            Ok(_) => accepted += 1,
            Err(SendError::Full(b)) => break b,
            Err(e) => panic!("{e:?}"),
        }
        if accepted % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(accepted < 10_000, "never full");
    };
    assert_eq!(refused, Bytes::from(vec![7u8; 100]));
    // send_timeout hands it back too.
    match client.send_timeout(0, refused, Duration::from_millis(50)).await {
        Err(SendError::Full(b)) => assert_eq!(b.len(), 100),
        other => panic!("expected Full, got {other:?}"),
    }
    // Once the server takes messages, the blocked send completes.
    let sender = tokio::spawn({
        let c = client.clone();
        async move { c.send(0, "last").await.map(|r| r.id()) }
    });
    let mut taken = 0;
    while !sender.is_finished() || taken < accepted + 1 {
        if server.recv().await.is_none() {
            break;
        }
        taken += 1;
    }
    assert_eq!(taken, accepted + 1);
    sender.await.unwrap().unwrap();
    client.close().await;
    server.shutdown().await;
}

/// C8: connections past `connections_max` are closed at once, and a
/// connection that never sends a HELLO is closed after the handshake timeout.
#[tokio::test]
async fn connection_limit_and_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let (l, addr) = listener();
    let mut options = ServerOptions::new(mf_core::testing::scenario::fast_config());
    options.connections_max = 2;
    let server = Server::start(l, options).unwrap();
    let mut idle_a = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _idle_b = tokio::net::TcpStream::connect(addr).await.unwrap();
    while server.connection_count() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await.expect("not closed");
    assert!(matches!(n, Ok(0) | Err(_)), "the third connection must be closed");
    // The idle ones are closed by the handshake timeout (400 ms), with a CLOSE frame.
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), idle_a.read_to_end(&mut got))
        .await
        .expect("idle kept open");
    assert!(r.is_ok() || !got.is_empty());
    assert!(!got.is_empty(), "a typed CLOSE frame comes before the end");
    server.shutdown().await;
}
