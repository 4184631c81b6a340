//! How the driver uses the socket: write batching (`write_batch_us` on both
//! sides), the handshake sharing a write with the first call, `close`
//! writing its CLOSE before returning, callers reading their own responses
//! without starving anyone, and served handlers (inline, spawned when
//! pending, messages in order). Counts come from `IoStats`; nothing here
//! depends on timing.

// `Config` and the options are non_exhaustive: built by default and assignment.
#![allow(clippy::field_reassign_with_default)]

use bytes::Bytes;
use futures::FutureExt;
use mf_driver_tokio::transport::{TcpConnector, TcpListener};
use mf_driver_tokio::{Client, ClientOptions, Handler, Message, Request, Server, ServerOptions};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn listener() -> (TcpListener, std::net::SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// A config whose acks never leave on their own during a test: every write
/// counted is one the test caused.
fn quiet_config() -> mf_core::Config {
    let mut c = mf_core::Config::default();
    c.ack_delay_ms = 60_000;
    c
}

fn echo_server(options: ServerOptions) -> (Server, std::net::SocketAddr) {
    let (l, addr) = listener();
    let server = Server::start(l, options).unwrap();
    server.serve(|req: Request| async move { Ok(req.body) });
    (server, addr)
}

/// Start `n` calls at once, then take every answer (checking each).
async fn burst(client: &Client, n: u64) {
    let calls: Vec<_> =
        (0..n).map(|i| client.try_call(0, Bytes::from(i.to_le_bytes().to_vec()), None).unwrap()).collect();
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await.unwrap(), Bytes::from((i as u64).to_le_bytes().to_vec()));
    }
}

/// Default batching: a burst of calls queued without yielding leaves in a
/// few writes, and so do the server's answers; `Some(0)` writes every
/// request on its own (until the socket is full: then what waits leaves
/// together, so the bound is loose).
#[tokio::test]
async fn burst_batches_by_default_and_not_when_off() {
    let (server, addr) = echo_server(ServerOptions::new(quiet_config()));
    let batched = Client::connect(TcpConnector::new(addr), ClientOptions::new(quiet_config())).await.unwrap();
    let before = batched.io_stats();
    burst(&batched, 200).await;
    let writes = batched.io_stats().write_syscalls - before.write_syscalls;
    assert!(writes <= 10, "200 queued calls took {writes} writes");
    assert!(server.io_stats().write_syscalls < 60, "{:?}", server.io_stats());

    let mut off = ClientOptions::new(quiet_config());
    off.write_batch_us = Some(0);
    let unbatched = Client::connect(TcpConnector::new(addr), off).await.unwrap();
    let before = unbatched.io_stats();
    burst(&unbatched, 200).await;
    let writes = unbatched.io_stats().write_syscalls - before.write_syscalls;
    assert!(writes >= 100, "batching off: 200 calls in {writes} writes");
    batched.close().await;
    unbatched.close().await;
    server.shutdown().await;
}

/// A server with `write_batch_us = Some(0)` answers each request of a burst
/// in a write of its own (until the socket is full).
#[tokio::test]
async fn server_batching_off_writes_each_answer() {
    let mut options = ServerOptions::new(quiet_config());
    options.write_batch_us = Some(0);
    let (server, addr) = echo_server(options);
    let client = Client::connect(TcpConnector::new(addr), ClientOptions::new(quiet_config())).await.unwrap();
    let before = server.io_stats().write_syscalls;
    burst(&client, 100).await;
    let writes = server.io_stats().write_syscalls - before;
    assert!(writes >= 50, "100 answers in {writes} writes");
    client.close().await;
    server.shutdown().await;
}

/// `Some(us)`: one-way messages queued across many scheduler turns, within
/// the hold, share writes; an awaited call still completes at once.
#[tokio::test]
async fn hold_batches_across_turns() {
    let (server, addr) = echo_server(ServerOptions::new(quiet_config()));
    let mut options = ClientOptions::new(quiet_config());
    options.write_batch_us = Some(1_000_000);
    let client = Client::connect(TcpConnector::new(addr), options).await.unwrap();
    let before = client.io_stats().write_syscalls;
    let mut receipts = Vec::new();
    for i in 0..50u32 {
        receipts.push(client.send(1, Bytes::from(i.to_le_bytes().to_vec())).await.unwrap());
        tokio::task::yield_now().await;
    }
    // Nothing forced a write yet, except at most the first message.
    assert!(client.io_stats().write_syscalls - before <= 1, "{:?}", client.io_stats());
    // Waiting for a call writes what is held, with the request.
    assert_eq!(&client.call(0, "now").await.unwrap()[..], b"now");
    assert!(client.io_stats().write_syscalls - before <= 2, "{:?}", client.io_stats());
    for r in receipts {
        r.await.unwrap();
    }
    client.close().await;
    server.shutdown().await;
}

/// `start` then `call`: the HELLO and the request leave in one write; `close`
/// returns once its CLOSE frame is written (one more write).
#[tokio::test]
async fn handshake_shares_the_first_write_and_close_writes_before_returning() {
    let (server, addr) = echo_server(ServerOptions::new(quiet_config()));
    let client = Client::start(TcpConnector::new(addr), ClientOptions::new(quiet_config())).unwrap();
    assert_eq!(&client.call(0, "first").await.unwrap()[..], b"first");
    let io = client.io_stats();
    assert_eq!((io.connections, io.write_syscalls), (1, 1), "{io:?}");
    assert_eq!(client.close().await.code, mf_driver_tokio::CloseCode::Normal);
    assert_eq!(client.io_stats().write_syscalls, 2, "{:?}", client.io_stats());
    // The server sees the session end without waiting for any timeout.
    tokio::time::timeout(Duration::from_secs(10), async {
        while server.session_count() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the server kept the session");
    server.shutdown().await;
}

/// Output larger than a connection's buffer leaves in several writes
/// without waiting for anything from the peer: here acks are held back for
/// a minute, so a stall at the buffer's high-water mark would time out.
#[tokio::test]
async fn large_messages_flow_without_waiting_for_acks() {
    let (server, addr) = echo_server(ServerOptions::new(quiet_config()));
    let client = Client::connect(TcpConnector::new(addr), ClientOptions::new(quiet_config())).await.unwrap();
    let body = Bytes::from((0..3u32 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    for _ in 0..2 {
        let r = tokio::time::timeout(Duration::from_secs(20), client.call(0, body.clone()))
            .await
            .expect("stalled");
        assert!(r.unwrap() == body);
    }
    assert!(server.io_stats().write_syscalls >= 2 * 12, "{:?}", server.io_stats());
    client.close().await;
    server.shutdown().await;
}

/// A ping-pong call writes its request and reads its response itself.
#[tokio::test]
async fn awaited_calls_write_and_read_themselves() {
    let (server, addr) = echo_server(ServerOptions::new(quiet_config()));
    let client = Client::connect(TcpConnector::new(addr), ClientOptions::new(quiet_config())).await.unwrap();
    let before = client.io_stats();
    for i in 0..100u32 {
        let body = Bytes::from(i.to_le_bytes().to_vec());
        assert_eq!(client.call(0, body.clone()).await.unwrap(), body);
    }
    let io = client.io_stats();
    assert_eq!(io.inline_writes - before.inline_writes, 100, "{io:?}");
    assert!(io.inline_reads - before.inline_reads >= 50, "{io:?}");
    client.close().await;
    server.shutdown().await;
}

/// A call polled once with a waker that never wakes anything (as
/// `now_or_never` does) becomes the reading caller; the socket must still
/// be read for everyone else, and for it once it is awaited properly.
#[tokio::test]
async fn a_caller_polled_with_a_dead_waker_starves_nobody() {
    let (l, addr) = listener();
    let server = Server::start(l, ServerOptions::new(quiet_config())).unwrap();
    let client = Client::connect(TcpConnector::new(addr), ClientOptions::new(quiet_config())).await.unwrap();
    let mut first = client.try_call(0, "first", None).unwrap();
    // Not answered yet (the server application takes nothing so far).
    assert!((&mut first).now_or_never().is_none());
    let second = tokio::spawn({
        let c = client.clone();
        async move { c.call(0, "second").await }
    });
    let mut answered = 0;
    while answered < 2 {
        let (sid, item) = server.recv().await.unwrap();
        if let mf_driver_tokio::Incoming::Request { id, body, .. } = item {
            server.respond(sid, id, body).unwrap();
            answered += 1;
        }
    }
    let second = tokio::time::timeout(Duration::from_secs(10), second).await.expect("starved");
    assert_eq!(&second.unwrap().unwrap()[..], b"second");
    assert_eq!(&first.await.unwrap()[..], b"first");
    client.close().await;
    server.shutdown().await;
}

/// Handler futures that are pending after their first poll run in tasks
/// of their own (at most `handlers_max`), and every call gets its own answer.
#[tokio::test]
async fn pending_handlers_are_spawned_and_answer() {
    let (l, addr) = listener();
    let mut options = ServerOptions::new(quiet_config());
    options.handlers_max = 2;
    let server = Server::start(l, options).unwrap();
    server.serve(|req: Request| async move {
        if req.body[0] % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(req.body[0] % 5))).await;
        }
        if req.body[0] == 13 { Err(13) } else { Ok(req.body) }
    });
    let client = Client::connect(TcpConnector::new(addr), ClientOptions::new(quiet_config())).await.unwrap();
    let calls: Vec<_> =
        (0..40u8).map(|i| client.try_call(0, Bytes::from(vec![i, 1, 2]), None).unwrap()).collect();
    for (i, c) in calls.into_iter().enumerate() {
        match c.await {
            Ok(b) => assert_eq!(b, Bytes::from(vec![i as u8, 1, 2])),
            Err(mf_driver_tokio::CallError::Failed(f)) => {
                assert_eq!((i, f.reason), (13, mf_driver_tokio::FailReason::Rejected(13)))
            }
            Err(e) => panic!("call {i}: {e}"),
        }
    }
    client.close().await;
    server.shutdown().await;
}

/// One-way messages reach the handler one at a time, in order, even when
/// its future is pending; requests meanwhile are answered.
#[tokio::test]
async fn served_messages_stay_in_order() {
    struct Recorder(Arc<Mutex<Vec<u32>>>);
    impl Handler for Recorder {
        async fn request(&self, req: Request) -> Result<Bytes, u16> {
            Ok(req.body)
        }
        fn message(&self, msg: Message) -> impl Future<Output = ()> + Send {
            let seen = self.0.clone();
            async move {
                let n = u32::from_le_bytes(msg.body[..4].try_into().unwrap());
                if n % 7 == 0 {
                    tokio::task::yield_now().await;
                }
                seen.lock().unwrap().push(n);
            }
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (l, addr) = listener();
    let server = Server::start(l, ServerOptions::new(mf_core::Config::default())).unwrap();
    server.serve(Recorder(seen.clone()));
    let client = Client::connect(TcpConnector::new(addr), ClientOptions::new(mf_core::Config::default()))
        .await
        .unwrap();
    let mut receipts = Vec::new();
    for n in 0..300u32 {
        receipts.push(client.send(2, Bytes::from(n.to_le_bytes().to_vec())).await.unwrap());
        if n % 50 == 0 {
            assert_eq!(&client.call(0, "mid").await.unwrap()[..], b"mid");
        }
    }
    for r in receipts {
        r.await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.lock().unwrap().len() < 300 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("messages missing");
    assert_eq!(*seen.lock().unwrap(), (0..300).collect::<Vec<_>>());
    client.close().await;
    server.shutdown().await;
}

#[tokio::test]
#[should_panic(expected = "serve called twice")]
async fn serve_twice_is_a_misuse() {
    let (server, _) = echo_server(ServerOptions::default());
    server.serve(|req: Request| async move { Ok(req.body) });
}
