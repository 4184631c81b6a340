//! The bodies of the cargo-fuzz targets. `fuzz/fuzz_targets/*.rs` call these,
//! and `cargo test` replays the committed corpora through them, so a crash
//! found once stays fixed.

use crate::wire::{Decoder, FRAME_BODY_MAX, Frame, FrameType, Handshake, PROTOCOL_VERSION, TransmitBuf};
use crate::{Config, Endpoint, Instant, Token, seed_from_u64};

/// Target `decode`: the frame decoder on raw bytes, fed in pieces whose size
/// comes from the first byte. Every frame that decodes must re-encode to the
/// same bytes; nothing may panic.
pub fn decode(data: &[u8]) {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let piece = 1 + split as usize;
    let mut dec = Decoder::new(FRAME_BODY_MAX);
    let mut whole = Decoder::new(FRAME_BODY_MAX);
    let mut frames = Vec::new();
    let mut ok = true;
    for chunk in data.chunks(piece) {
        if dec
            .decode(chunk, |f| {
                frames.push(format!("{f:?}"));
                Ok(true)
            })
            .is_err()
        {
            ok = false;
            break;
        }
    }
    // The same bytes in one piece decode to the same frames.
    let mut frames_whole = Vec::new();
    let whole_ok = whole
        .decode(data, |f| {
            let mut buf = TransmitBuf::new();
            f.encode(&mut buf);
            let mut bytes = Vec::new();
            buf.copy_to_vec(&mut bytes);
            let mut again = None;
            Decoder::new(FRAME_BODY_MAX)
                .decode(&bytes, |g| {
                    again = Some(format!("{g:?}"));
                    Ok(true)
                })
                .expect("a frame we encoded must decode");
            assert_eq!(again, Some(format!("{f:?}")), "re-encoding changed the frame");
            frames_whole.push(format!("{f:?}"));
            Ok(true)
        })
        .is_ok();
    if ok && whole_ok {
        assert_eq!(frames, frames_whole, "splitting the input changed the frames");
        assert!(dec.buffered() <= 8 + FRAME_BODY_MAX);
    }
}

/// A valid HELLO creating a session with `token`.
pub fn hello(token: Token) -> Vec<u8> {
    let h = Handshake {
        version: PROTOCOL_VERSION,
        resume: false,
        token,
        recv_seq: 0,
        send_start_seq: 0,
        consumed_msgs: 0,
        consumed_bytes: 0,
        window_msgs: 64,
        window_bytes: 64 << 10,
        message_bytes_max: 1 << 20,
        reassembly_max: 2,
        requests_open_max: 0,
    };
    let mut buf = TransmitBuf::new();
    Frame::Hello(h).encode(&mut buf);
    let mut v = Vec::new();
    buf.copy_to_vec(&mut v);
    debug_assert_eq!(v[0], FrameType::Hello as u8);
    v
}

/// Target `endpoint`: a server endpoint fed arbitrary bytes after a valid
/// HELLO, in pieces, with time advancing. It must not panic, must keep the
/// session's memory within its configured bounds, and must answer anything
/// invalid by closing with a typed reason.
pub fn endpoint(data: &[u8]) {
    let config = Config {
        window_bytes_max: 64 << 10,
        message_bytes_max: 256 << 10,
        requests_open_max: 32,
        ..Config::default()
    };
    // Bodies in the window, one oversize message, a partial frame, and
    // bookkeeping (queues of small records).
    let bound = config.window_bytes_max as usize
        + config.message_bytes_max as usize
        + 2 * FRAME_BODY_MAX
        + (64 << 10);
    let mut ep = Endpoint::new(config, seed_from_u64(0)).expect("valid config");
    let mut now = Instant::ZERO;
    let conn = ep.accept(now);
    ep.handle_input(now, conn, &hello(Token([7; 16])));
    let mut out = TransmitBuf::new();
    for (k, chunk) in data.chunks(97).enumerate() {
        now = now.add_millis(k as u64 % 3);
        ep.handle_input(now, conn, chunk);
        ep.handle_timeout(now);
        // The application takes some of what arrived, and answers requests.
        if k % 2 == 0 {
            while let Some((s, item)) = ep.recv(now) {
                if let crate::Incoming::Request { id, .. } = item {
                    let _ = ep.respond(now, s, id, "ok");
                }
            }
        }
        while ep.poll_dirty().is_some() {}
        ep.poll_transmit(now, conn, &mut out);
        out.clear();
        while let Some(e) = ep.poll_event() {
            if let crate::ServerEvent::CloseConnection { reason, .. } = e {
                // Our own closes always carry a code we define.
                assert!(reason.by_peer || !matches!(reason.code, crate::CloseCode::Other(_)), "{reason:?}");
            }
        }
        if let Some(s) = ep.session_by_token(&Token([7; 16])) {
            let mem = ep.session_memory_bytes(s).unwrap_or(0);
            assert!(mem <= bound, "session holds {mem} bytes, bound {bound}");
        }
    }
}

/// Target `ops`: an `Arbitrary` sequence of sends, calls, consumption, cuts,
/// stalls, partitions, restarts and time, run on the simulated network; the
/// checker must find no violation of C2, C3, C6 or outcomes.
pub fn ops(data: &[u8]) {
    let mut u = arbitrary::Unstructured::new(data);
    let Ok(ops) = u.arbitrary::<Vec<super::scenario::Op>>() else {
        return;
    };
    if let Err(v) = super::scenario::run_ops(&ops) {
        panic!("violations for ops {ops:?}:\n{}", v.join("\n"));
    }
}
