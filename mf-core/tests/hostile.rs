//! C7 and C8: hostile or broken peers get a typed close that both sides can
//! read; other sessions carry on; floods cost bounded memory.

use bytes::Bytes;
use mf_core::testing::fuzz::hello;
use mf_core::testing::scenario::fast_config;
use mf_core::wire::{Data, DataKind, Decoder, FRAME_BODY_MAX, Frame, TransmitBuf};
use mf_core::{Client, CloseCode, Config, ConnId, Endpoint, Instant, ServerEvent, Token, seed_from_u64};

fn encode(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut buf = TransmitBuf::new();
    for f in frames {
        f.encode(&mut buf);
    }
    let mut v = Vec::new();
    buf.copy_to_vec(&mut v);
    v
}

fn msg(payload: &[u8]) -> Frame<'_> {
    Frame::Data(Data { kind: DataKind::Message, channel: 0, total_len: None, payload })
}

/// Feed `bytes` to a new connection; return the close code the endpoint
/// reported and the one it wrote on the wire.
fn close_code_for(ep: &mut Endpoint, now: Instant, bytes: &[u8]) -> (Option<CloseCode>, Option<CloseCode>) {
    let conn = ep.accept(now);
    ep.handle_input(now, conn, bytes);
    closed(ep, now, conn)
}

fn closed(ep: &mut Endpoint, now: Instant, conn: ConnId) -> (Option<CloseCode>, Option<CloseCode>) {
    let mut reported = None;
    while let Some(e) = ep.poll_event() {
        if let ServerEvent::CloseConnection { conn: c, reason } = e {
            if c == conn {
                reported = Some(reason.code);
            }
        }
    }
    let mut buf = TransmitBuf::new();
    ep.poll_transmit(now, conn, &mut buf);
    let mut bytes = Vec::new();
    buf.copy_to_vec(&mut bytes);
    let mut wire = None;
    let _ = Decoder::new(FRAME_BODY_MAX).decode(&bytes, |f| {
        if let Frame::Close { code, .. } = f {
            wire = Some(code);
        }
        Ok(true)
    });
    (reported, wire)
}

fn endpoint(config: Config) -> Endpoint {
    Endpoint::new(config, seed_from_u64(9)).unwrap()
}

#[test]
fn bad_first_bytes_are_refused_with_a_typed_reason() {
    let now = Instant::ZERO;
    let mut ep = endpoint(fast_config());
    let http = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n";
    assert_eq!(
        close_code_for(&mut ep, now, http),
        (Some(CloseCode::UnknownFrameType), Some(CloseCode::UnknownFrameType))
    );
    let ping_first = encode(&[Frame::Ping(1)]);
    let c = close_code_for(&mut ep, now, &ping_first);
    assert_eq!(c, (Some(CloseCode::UnexpectedFrame), Some(CloseCode::UnexpectedFrame)));
    let mut wrong_version = hello(Token([1; 16]));
    wrong_version[8 + 4] = 9; // version field
    let c = close_code_for(&mut ep, now, &wrong_version);
    assert_eq!(c, (Some(CloseCode::VersionMismatch), Some(CloseCode::VersionMismatch)));
    assert_eq!(ep.session_count(), 0);
}

#[test]
fn violations_after_the_handshake_close_with_their_code() {
    let cfg = fast_config();
    let window = cfg.window_msgs_max as usize;
    let flood: Vec<Frame<'_>> = (0..=window).map(|_| msg(b"x")).collect();
    let mut oversized = vec![0x10, 0, 0, 0];
    oversized.extend_from_slice(&(FRAME_BODY_MAX as u32 + 1).to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, CloseCode)> = vec![
        ("unknown type", vec![0x6e, 0, 0, 0, 0, 0, 0, 0], CloseCode::UnknownFrameType),
        ("oversized", oversized, CloseCode::FrameTooLarge),
        ("credit overrun", encode(&flood), CloseCode::CreditExceeded),
        (
            "response to a server",
            encode(&[Frame::Data(Data {
                kind: DataKind::Response(1),
                channel: 0,
                total_len: None,
                payload: b"r",
            })]),
            CloseCode::UnexpectedFrame,
        ),
        (
            "fragment out of nowhere",
            encode(&[Frame::Fragment { channel: 0, response: false, last: true, payload: b"f" }]),
            CloseCode::UnexpectedFrame,
        ),
        ("second hello", hello(Token([5; 16])), CloseCode::UnexpectedFrame),
        ("ack of unsent", encode(&[Frame::Ack(10)]), CloseCode::UnexpectedFrame),
        (
            "too large",
            encode(&[Frame::Data(Data {
                kind: DataKind::Message,
                channel: 0,
                total_len: Some(cfg.message_bytes_max + 1),
                payload: b"x",
            })]),
            CloseCode::MessageTooLarge,
        ),
    ];
    for (i, (what, bytes, code)) in cases.into_iter().enumerate() {
        let mut ep = endpoint(cfg.clone());
        let now = Instant::ZERO;
        let mut input = hello(Token([i as u8 + 10; 16]));
        input.extend_from_slice(&bytes);
        let (reported, wire) = close_code_for(&mut ep, now, &input);
        assert_eq!(reported, Some(code), "{what}");
        // The WELCOME went out first, then the CLOSE with the same code, as
        // the client's decoder reads it.
        assert_eq!(wire, Some(code), "{what}");
        assert_eq!(ep.session_count(), 0, "{what}: the violating session ends");
    }
}

#[test]
fn too_many_requests_is_a_violation() {
    let cfg = fast_config();
    let n = cfg.requests_open_max as u64 + 1;
    let bodies: Vec<Vec<u8>> = (0..n).map(|i| i.to_le_bytes().to_vec()).collect();
    let frames: Vec<Frame<'_>> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Frame::Data(Data { kind: DataKind::Request(i as u64), channel: 0, total_len: None, payload: b })
        })
        .collect();
    let mut ep = endpoint(cfg);
    let now = Instant::ZERO;
    let conn = ep.accept(now);
    ep.handle_input(now, conn, &hello(Token([1; 16])));
    // Take them from the inbox (so credit is not the limit) without answering.
    let bytes = encode(&frames);
    let half = bytes.len() / 2;
    ep.handle_input(now, conn, &bytes[..half]);
    while ep.recv(now).is_some() {}
    ep.handle_input(now, conn, &bytes[half..]);
    while ep.recv(now).is_some() {}
    assert_eq!(closed(&mut ep, now, conn).0, Some(CloseCode::TooManyRequests));
}

#[test]
fn other_sessions_carry_on_beside_a_violator() {
    let now = Instant::ZERO;
    let mut ep = endpoint(fast_config());
    let mut good = Client::new(fast_config(), seed_from_u64(2)).unwrap();
    good.connected(now);
    let gconn = ep.accept(now);
    let bad = ep.accept(now);
    ep.handle_input(now, bad, &hello(Token([66; 16])));
    let mut buf = TransmitBuf::new();
    let mut bytes = Vec::new();
    for round in 0..10u8 {
        good.send(0, Bytes::from(vec![round; 10])).unwrap();
        good.poll_transmit(now, &mut buf);
        bytes.clear();
        buf.copy_to_vec(&mut bytes);
        ep.handle_input(now, gconn, &bytes);
        if round == 3 {
            ep.handle_input(now, bad, &[0xee; 64]);
        }
        let (_, m) = ep.recv(now).expect("the good client's message");
        assert_eq!(&m.body()[..], &[round; 10]);
        ep.poll_transmit(now, gconn, &mut buf);
        bytes.clear();
        buf.copy_to_vec(&mut bytes);
        good.handle_input(now, &bytes);
    }
    assert_eq!(ep.session_count(), 1, "only the good session is left");
}

#[test]
fn handshake_floods_are_bounded() {
    let cfg = Config { handshakes_max: 100, ..fast_config() };
    let mut ep = endpoint(cfg.clone());
    let now = Instant::ZERO;
    let conns: Vec<ConnId> = (0..1000).map(|_| ep.accept(now)).collect();
    let mut limited = 0;
    while let Some(e) = ep.poll_event() {
        if let ServerEvent::CloseConnection { reason, .. } = e {
            assert_eq!(reason.code, CloseCode::HandshakeLimit);
            limited += 1;
        }
    }
    assert_eq!(limited, 900);
    // A slow loris trickling a HELLO byte by byte is cut off at the deadline.
    let h = hello(Token([3; 16]));
    ep.handle_input(now, conns[0], &h[..10]);
    let later = now.add_millis(cfg.handshake_timeout_ms + 1);
    ep.handle_timeout(later);
    let mut timed_out = 0;
    while let Some(e) = ep.poll_event() {
        if let ServerEvent::CloseConnection { reason, .. } = e {
            assert_eq!(reason.code, CloseCode::HandshakeTimeout);
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, 100);
    for c in conns {
        ep.connection_lost(later, c);
    }
    assert_eq!(ep.connection_count(), 0);
    assert_eq!(ep.session_count(), 0);
}

#[test]
fn session_limit_token_reuse_and_unknown_tokens() {
    let cfg = Config { sessions_max: 2, ..fast_config() };
    let mut ep = endpoint(cfg);
    let now = Instant::ZERO;
    for t in 1..=2u8 {
        let c = ep.accept(now);
        let mut bytes = hello(Token([t; 16]));
        bytes.extend(encode(&[msg(b"data")]));
        ep.handle_input(now, c, &bytes);
    }
    assert_eq!(ep.session_count(), 2);
    assert_eq!(close_code_for(&mut ep, now, &hello(Token([3; 16]))).0, Some(CloseCode::SessionLimit));
    // Creating a session whose token is taken (and has data) is refused.
    assert_eq!(close_code_for(&mut ep, now, &hello(Token([1; 16]))).0, Some(CloseCode::TokenInUse));
    // Resuming a token nobody has is refused.
    let mut resume = hello(Token([9; 16]));
    resume[1] = 1; // FLAG_RESUME
    assert_eq!(close_code_for(&mut ep, now, &resume).0, Some(CloseCode::SessionUnknown));
}

#[test]
fn ids_from_another_endpoint_do_not_alias() {
    let now = Instant::ZERO;
    let mut a = Endpoint::new(fast_config(), seed_from_u64(1)).unwrap();
    let mut b = Endpoint::new(fast_config(), seed_from_u64(2)).unwrap();
    for ep in [&mut a, &mut b] {
        let c = ep.accept(now);
        ep.handle_input(now, c, &hello(Token([4; 16])));
    }
    let sa = a.session_by_token(&Token([4; 16])).unwrap();
    let sb = b.session_by_token(&Token([4; 16])).unwrap();
    assert_ne!(sa, sb, "same slot, different endpoints, different ids");
    assert!(b.stats(sa).is_none(), "an id from endpoint a means nothing to endpoint b");
    assert!(matches!(b.send(now, sa, 0, "x"), Err(mf_core::SendError::Closed(_))));
}
