//! Hostile input (C7): a raw socket sending garbage is closed with a typed
//! reason it can read, and other clients carry on.

mod common;

use mf_core::wire::{Frame, HEADER_LEN, Header, decode_frame};
use mf_driver_mio::{Client, CloseCode};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Send `garbage`, then read until EOF: the first frame must be a CLOSE.
fn close_code_for(addr: std::net::SocketAddr, garbage: &[u8]) -> CloseCode {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(garbage).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no close within the timeout: {e}"),
        }
        assert!(got.len() < 1 << 20, "server keeps talking to garbage");
    }
    // Skip what came before (a WELCOME, for a valid HELLO) to the CLOSE.
    let mut at = 0;
    while got.len() >= at + HEADER_LEN {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&got[at..at + HEADER_LEN]);
        let h = Header::parse(&h);
        let end = at + HEADER_LEN + h.len as usize;
        assert!(end <= got.len(), "truncated frame from the server");
        if let Ok(Frame::Close { code, .. }) = decode_frame(h, &got[at + HEADER_LEN..end]) {
            assert_eq!(end, got.len(), "bytes after the CLOSE");
            return code;
        }
        at = end;
    }
    panic!("connection closed without a CLOSE frame ({} bytes)", got.len());
}

#[test]
fn garbage_is_closed_with_a_typed_reason_and_others_carry_on() {
    let (server, addr, t) = common::echo_server(2);
    let good = Client::connect(addr, common::client_config(1)).unwrap();
    assert_eq!(&good.call("before").unwrap()[..], b"before");

    // Not our protocol at all.
    let http = close_code_for(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(http.is_protocol_violation(), "{http:?}");
    // A HELLO header announcing the wrong length.
    let huge = close_code_for(addr, &[0x01, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f]);
    assert!(matches!(huge, CloseCode::FrameTooLarge | CloseCode::MalformedFrame), "{huge:?}");
    // A well-formed header of an unknown frame type, after a valid HELLO
    // (taken from a real client's first write).
    let mut hello = Vec::new();
    {
        let mut c = mf_core::Client::new(common::protocol(), mf_core::seed_from_u64(9)).unwrap();
        c.connected(mf_core::Instant::ZERO);
        let mut tx = mf_core::TransmitBuf::new();
        c.poll_transmit(mf_core::Instant::ZERO, &mut tx);
        tx.copy_to_vec(&mut hello);
    }
    let mut bad = hello.clone();
    bad.extend_from_slice(&[0xee, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(close_code_for(addr, &bad), CloseCode::UnknownFrameType);

    // Everyone else is unaffected.
    for i in 0..50u32 {
        assert_eq!(&good.call(i.to_string()).unwrap()[..], i.to_string().as_bytes());
    }
    let closes = server.stats().closes;
    let violations: u64 =
        closes.iter().filter(|(c, _)| CloseCode::from_u16(**c).is_protocol_violation()).map(|(_, n)| n).sum();
    assert_eq!(violations, 3, "{closes:?}");
    good.close().unwrap();
    server.shutdown();
    t.join().unwrap();
}

/// A connection that never sends its HELLO is closed after the handshake
/// timeout (C8), with a typed reason.
#[test]
fn silent_connection_times_out() {
    let (server, addr, t) = common::echo_server(1);
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = s;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("closed within the handshake timeout");
    assert!(n >= HEADER_LEN);
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&buf[..HEADER_LEN]);
    let h = Header::parse(&h);
    match decode_frame(h, &buf[HEADER_LEN..n]) {
        Ok(Frame::Close { code, .. }) => assert_eq!(code, CloseCode::HandshakeTimeout),
        other => panic!("expected CLOSE(HandshakeTimeout), got {other:?}"),
    }
    server.shutdown();
    t.join().unwrap();
}

/// The number of sessions is bounded (C8): one past `sessions_max` is
/// refused with a typed reason, and the sessions within it carry on.
#[test]
fn sessions_beyond_the_limit_are_refused() {
    let mut cfg = common::server_config(1);
    cfg.protocol.sessions_max = 2;
    let server = mf_driver_mio::Server::bind("127.0.0.1:0", cfg).unwrap();
    let addr = server.local_addr();
    let s2 = server.clone();
    let t = std::thread::spawn(move || s2.serve(|req| req.body).unwrap());
    let a = Client::connect(addr, common::client_config(61)).unwrap();
    let b = Client::connect(addr, common::client_config(62)).unwrap();
    assert_eq!(&a.call("a").unwrap()[..], b"a");
    assert_eq!(&b.call("b").unwrap()[..], b"b");
    let c = Client::connect(addr, common::client_config(63)).unwrap();
    match c.call("c") {
        Err(mf_driver_mio::Error::SessionLost { reason, .. }) => {
            assert_eq!(reason.code, CloseCode::SessionLimit)
        }
        other => panic!("expected SessionLimit, got {other:?}"),
    }
    assert_eq!(&a.call("a again").unwrap()[..], b"a again");
    assert_eq!(server.stats().sessions, 2);
    server.shutdown();
    t.join().unwrap();
}
