//! Bounded, explicit backpressure (C5): a reader that stops reading makes
//! the sender block or hands its message back; queues stay within limits.

mod common;

use mf_driver_mio::{Client, Error};
use std::time::{Duration, Instant};

#[test]
fn stalled_server_reader_blocks_or_refuses_the_client_and_memory_stays_bounded() {
    // Pull-mode server whose application does not read (yet).
    let server = common::server(1);
    let proto = common::protocol();
    let client = Client::connect(server.local_addr(), common::client_config(21)).unwrap();
    let body = vec![7u8; 100];
    let mut accepted = 0u64;
    let refused = loop {
        match client.try_send(body.clone()) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1_000_000, "try_send never refused");
    };
    match refused {
        Error::Full(m) => assert_eq!(&m[..], &body[..], "the refused message comes back"),
        other => panic!("expected Full, got {other:?}"),
    }
    // What the client accepted: the server's window plus the send queue.
    let max = proto.window_msgs_max as u64 + proto.send_queue_msgs_max as u64;
    assert!(accepted <= max, "accepted {accepted} > {max}");
    let q = client.queues();
    assert!(q.send_queued_msgs <= proto.send_queue_msgs_max, "{q:?}");

    // A timed send waits, then gives the message back.
    let t = Instant::now();
    match client.send_timeout("late", Duration::from_millis(50)) {
        Err(Error::Full(m)) => assert_eq!(&m[..], b"late"),
        other => panic!("expected Full after the timeout, got {other:?}"),
    }
    assert!(t.elapsed() >= Duration::from_millis(50));

    // A blocking send blocks until the reader resumes.
    let c2 = client.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(c2.send("blocked").map(|_| ())).unwrap());
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "send returned while the queue was full");

    // The server's inbox holds at most its window.
    let first = server.recv_timeout(Duration::from_secs(5)).unwrap();
    let q = server.queues(first.session).unwrap();
    assert!(q.inbox_msgs < proto.window_msgs_max, "{q:?}");
    // Now read everything: the blocked send completes.
    let mut got = 1u64;
    while got < accepted + 1 {
        server.recv_timeout(Duration::from_secs(10)).unwrap();
        got += 1;
    }
    rx.recv_timeout(Duration::from_secs(10)).expect("send still blocked").unwrap();
    client.close().unwrap();
    server.shutdown();
}

#[test]
fn client_that_stops_reading_makes_server_sends_refuse() {
    let server = common::server(1);
    let proto = common::protocol();
    let client = Client::connect(server.local_addr(), common::client_config(22)).unwrap();
    client.send("hello").unwrap();
    let hello = server.recv_timeout(Duration::from_secs(5)).unwrap();
    let mut accepted = 0u64;
    let refused = loop {
        match server.send(hello.session, 1, vec![1u8; 200]) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1_000_000, "server send never refused");
    };
    assert!(matches!(refused, Error::Full(ref m) if m.len() == 200), "{refused:?}");
    let max = proto.window_msgs_max as u64 + proto.send_queue_msgs_max as u64;
    assert!(accepted <= max, "accepted {accepted} > {max}");
    // Give the pipe time to fill to the window, then check the client's inbox bound.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (client.queues().inbox_msgs as u64) < (proto.window_msgs_max as u64).min(accepted) {
        assert!(Instant::now() < deadline, "{:?}", client.queues());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(client.queues().inbox_msgs <= proto.window_msgs_max);
    // Reading drains everything, in order, on channel 1.
    for _ in 0..accepted {
        let m = client.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(m.channel, 1);
    }
    client.close().unwrap();
    server.shutdown();
}
