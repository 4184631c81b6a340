//! Wire codec: round trips with input split anywhere; malformed, truncated
//! and oversized input gives a typed error, never a panic, never a large
//! allocation.

use mf_core::CloseCode;
use mf_core::wire::{Data, DataKind, Decoder, FRAME_BODY_MAX, Frame, Handshake, TransmitBuf};
use mf_core::{Token, wire};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Spec {
    Hello(u64, u64, bool),
    Welcome(u64, u64),
    Close(u16, Vec<u8>),
    Ping(u64),
    Pong(u64),
    Ack(u64),
    Credit(u64, u64),
    Msg(u16, Vec<u8>),
    Req(u64, u16, Vec<u8>),
    Resp(u64, u16, Vec<u8>),
    First(u16, u32, Vec<u8>),
    Frag(u16, bool, bool, Vec<u8>),
    Reject(u64, u16),
    Cancel(u64),
}

fn spec() -> impl Strategy<Value = Spec> {
    let body = proptest::collection::vec(any::<u8>(), 0..300);
    let nonempty = proptest::collection::vec(any::<u8>(), 1..300);
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(a, b, r)| Spec::Hello(a, b, r)),
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Spec::Welcome(a, b)),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..256)).prop_map(|(c, d)| Spec::Close(c, d)),
        any::<u64>().prop_map(Spec::Ping),
        any::<u64>().prop_map(Spec::Pong),
        any::<u64>().prop_map(Spec::Ack),
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Spec::Credit(a, b)),
        (any::<u16>(), body.clone()).prop_map(|(c, b)| Spec::Msg(c, b)),
        (any::<u64>(), any::<u16>(), body.clone()).prop_map(|(r, c, b)| Spec::Req(r, c, b)),
        (any::<u64>(), any::<u16>(), body.clone()).prop_map(|(r, c, b)| Spec::Resp(r, c, b)),
        (any::<u16>(), 1u32..1_000_000, body).prop_map(|(c, extra, b)| Spec::First(
            c,
            b.len() as u32 + extra,
            b
        )),
        (any::<u16>(), any::<bool>(), any::<bool>(), nonempty)
            .prop_map(|(c, r, l, b)| Spec::Frag(c, r, l, b)),
        (any::<u64>(), any::<u16>()).prop_map(|(r, c)| Spec::Reject(r, c)),
        any::<u64>().prop_map(Spec::Cancel),
    ]
}

fn handshake(a: u64, b: u64, resume: bool) -> Handshake {
    Handshake {
        version: wire::PROTOCOL_VERSION,
        resume,
        token: Token([a as u8; 16]),
        recv_seq: a,
        send_start_seq: b,
        consumed_msgs: a ^ b,
        consumed_bytes: b,
        window_msgs: a as u32,
        window_bytes: b as u32,
        message_bytes_max: (a >> 32) as u32,
        reassembly_max: a as u16,
        requests_open_max: b as u16,
    }
}

fn data(kind: DataKind, channel: u16, total_len: Option<u32>, payload: &[u8]) -> Frame<'_> {
    Frame::Data(Data { kind, channel, total_len, payload })
}

fn frame(s: &Spec) -> Frame<'_> {
    match s {
        Spec::Hello(a, b, r) => Frame::Hello(handshake(*a, *b, *r)),
        Spec::Welcome(a, b) => Frame::Welcome(handshake(*a, *b, true)),
        Spec::Close(c, d) => Frame::Close { code: CloseCode::from_u16(*c), detail: d },
        Spec::Ping(n) => Frame::Ping(*n),
        Spec::Pong(n) => Frame::Pong(*n),
        Spec::Ack(n) => Frame::Ack(*n),
        Spec::Credit(a, b) => Frame::Credit { msgs: *a, bytes: *b },
        Spec::Msg(c, b) => data(DataKind::Message, *c, None, b),
        Spec::Req(r, c, b) => data(DataKind::Request(*r), *c, None, b),
        Spec::Resp(r, c, b) => data(DataKind::Response(*r), *c, None, b),
        Spec::First(c, t, b) => data(DataKind::Message, *c, Some(*t), b),
        Spec::Frag(c, r, l, b) => Frame::Fragment { channel: *c, response: *r, last: *l, payload: b },
        Spec::Reject(r, c) => Frame::Reject { req: *r, code: *c },
        Spec::Cancel(r) => Frame::Cancel { req: *r },
    }
}

fn encode_all(specs: &[Spec]) -> Vec<u8> {
    let mut buf = TransmitBuf::new();
    for s in specs {
        frame(s).encode(&mut buf);
    }
    let mut v = Vec::new();
    buf.copy_to_vec(&mut v);
    v
}

fn decode_split(bytes: &[u8], cuts: &[usize]) -> Result<Vec<String>, CloseCode> {
    let mut dec = Decoder::new(FRAME_BODY_MAX);
    let mut out = Vec::new();
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort();
    points.push(bytes.len());
    for p in points {
        dec.decode(&bytes[at..p], |f| {
            out.push(format!("{f:?}"));
            Ok(true)
        })?;
        at = p;
    }
    assert_eq!(dec.buffered(), 0, "a whole stream leaves nothing buffered");
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_split_anywhere(specs in proptest::collection::vec(spec(), 1..12),
                                 cuts in proptest::collection::vec(any::<usize>(), 0..10)) {
        let bytes = encode_all(&specs);
        let want: Vec<String> = specs.iter().map(|s| format!("{:?}", frame(s))).collect();
        prop_assert_eq!(decode_split(&bytes, &cuts).unwrap(), want);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000),
                            cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let mut dec = Decoder::new(FRAME_BODY_MAX);
        let mut at = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort();
        points.push(bytes.len());
        for p in points {
            if dec.decode(&bytes[at..p], |_| Ok(true)).is_err() { break; }
            at = p;
            // Never more than one frame's worth buffered.
            prop_assert!(dec.buffered() <= 8 + FRAME_BODY_MAX);
        }
    }

    #[test]
    fn truncation_is_never_a_frame(specs in proptest::collection::vec(spec(), 1..4), cut in any::<usize>()) {
        let bytes = encode_all(&specs);
        let cut = cut % bytes.len();
        let mut n = 0;
        let mut dec = Decoder::new(FRAME_BODY_MAX);
        dec.decode(&bytes[..cut], |_| { n += 1; Ok(true) }).unwrap();
        // Fewer frames than were encoded, and the rest waits in the buffer.
        prop_assert!(n < specs.len());
    }
}

#[test]
fn oversized_length_is_refused_before_buffering() {
    let mut dec = Decoder::new(FRAME_BODY_MAX);
    // A MESSAGE header announcing 2 GiB, then a little body.
    let mut bytes = vec![0x10, 0, 0, 0];
    bytes.extend_from_slice(&0x8000_0000u32.to_le_bytes());
    bytes.extend_from_slice(&[1, 2, 3]);
    assert_eq!(dec.decode(&bytes, |_| Ok(true)), Err(CloseCode::FrameTooLarge));
    assert!(dec.heap_bytes() < 64, "nothing allocated for the announced body");
    // Split right after the header: same verdict.
    let mut dec = Decoder::new(FRAME_BODY_MAX);
    assert_eq!(dec.decode(&bytes[..5], |_| Ok(true)), Ok(5));
    assert_eq!(dec.decode(&bytes[5..], |_| Ok(true)), Err(CloseCode::FrameTooLarge));
}

#[test]
fn malformed_frames_have_typed_codes() {
    let cases: &[(&[u8], CloseCode)] = &[
        (&[0x7f, 0, 0, 0, 0, 0, 0, 0], CloseCode::UnknownFrameType),
        // PING with a 3-byte body.
        (&[0x04, 0, 0, 0, 3, 0, 0, 0, 1, 2, 3], CloseCode::MalformedFrame),
        // PING with a flag set.
        (&[0x04, 1, 0, 0, 8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8], CloseCode::MalformedFrame),
        // ACK on a channel.
        (&[0x06, 0, 1, 0, 8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8], CloseCode::MalformedFrame),
        // Empty FRAGMENT.
        (&[0x13, 1, 0, 0, 0, 0, 0, 0], CloseCode::MalformedFrame),
        // First fragment whose total is not larger than its piece.
        (&[0x10, 1, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 9], CloseCode::MalformedFrame),
    ];
    for (bytes, code) in cases {
        let mut dec = Decoder::new(FRAME_BODY_MAX);
        assert_eq!(dec.decode(bytes, |_| Ok(true)), Err(*code), "{bytes:?}");
    }
    // A HELLO with another protocol's magic.
    let mut hello = vec![0x01, 0, 0, 0, 72, 0, 0, 0];
    hello.extend_from_slice(b"HTTP");
    hello.resize(8 + 72, 0);
    assert_eq!(Decoder::new(FRAME_BODY_MAX).decode(&hello, |_| Ok(true)), Err(CloseCode::VersionMismatch));
    assert_eq!(wire::peek_hello(&hello), Err(CloseCode::VersionMismatch));
    assert_eq!(wire::peek_hello(b"GET / HTTP/1.1"), Err(CloseCode::UnexpectedFrame));
    assert_eq!(wire::peek_hello(&hello[..20]), Ok(None));
}

#[test]
fn close_codes_round_trip() {
    for c in 0..=u16::MAX {
        assert_eq!(CloseCode::from_u16(c).to_u16(), c);
    }
}
