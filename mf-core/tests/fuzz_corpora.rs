//! Replays the committed cargo-fuzz corpora (fuzz/corpus/<target>/*) through
//! the same functions the fuzz targets call, so `cargo test` keeps every input
//! the fuzzer ever found interesting passing.
//!
//! `cargo test -p mf-core --test fuzz_corpora -- --ignored write_seed_corpora`
//! regenerates the hand-made seeds.

use mf_core::testing::fuzz;
use mf_core::wire::{Data, DataKind, Frame, Handshake, PROTOCOL_VERSION, TransmitBuf};
use mf_core::{CloseCode, Token};
use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = corpus_dir(target);
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "corpus input {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "empty corpus {}", dir.display());
    n
}

#[test]
fn replay_decode_corpus() {
    eprintln!("{} inputs", replay("decode", fuzz::decode));
}

#[test]
fn replay_endpoint_corpus() {
    eprintln!("{} inputs", replay("endpoint", fuzz::endpoint));
}

#[test]
fn replay_ops_corpus() {
    eprintln!("{} inputs", replay("ops", fuzz::ops));
}

fn encode(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut buf = TransmitBuf::new();
    for f in frames {
        f.encode(&mut buf);
    }
    let mut v = Vec::new();
    buf.copy_to_vec(&mut v);
    v
}

fn sample_frames() -> Vec<Vec<u8>> {
    let h = Handshake {
        version: PROTOCOL_VERSION,
        resume: true,
        token: Token([3; 16]),
        recv_seq: 5,
        send_start_seq: 2,
        consumed_msgs: 1,
        consumed_bytes: 10,
        window_msgs: 64,
        window_bytes: 65536,
        message_bytes_max: 1 << 20,
        reassembly_max: 4,
        requests_open_max: 16,
    };
    let payload = [9u8; 40];
    vec![
        encode(&[Frame::Hello(h)]),
        encode(&[Frame::Welcome(h)]),
        encode(&[Frame::Close { code: CloseCode::IdleTimeout, detail: b"idle" }]),
        encode(&[Frame::Ping(1), Frame::Pong(2), Frame::Ack(3), Frame::Credit { msgs: 4, bytes: 5 }]),
        encode(&[Frame::Data(Data {
            kind: DataKind::Message,
            channel: 3,
            total_len: None,
            payload: &payload,
        })]),
        encode(&[Frame::Data(Data {
            kind: DataKind::Request(77),
            channel: 1,
            total_len: None,
            payload: &payload,
        })]),
        encode(&[
            Frame::Data(Data { kind: DataKind::Message, channel: 2, total_len: Some(80), payload: &payload }),
            Frame::Fragment { channel: 2, response: false, last: true, payload: &payload },
        ]),
        encode(&[Frame::Reject { req: 77, code: 3 }, Frame::Cancel { req: 78 }]),
    ]
}

#[test]
#[ignore = "writes the seed corpora into fuzz/corpus"]
fn write_seed_corpora() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    for (i, f) in sample_frames().iter().enumerate() {
        // decode: first byte is the split size.
        for split in [0u8, 7, 255] {
            let mut d = vec![split];
            d.extend_from_slice(f);
            write("decode", &format!("seed-{i}-split{split}"), &d);
        }
        // Truncated frames.
        let mut d = vec![3u8];
        d.extend_from_slice(&f[..f.len() / 2]);
        write("decode", &format!("seed-{i}-truncated"), &d);
    }
    // Oversized and unknown headers.
    write("decode", "oversized", &[0, 0x10, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f]);
    write("decode", "unknown-type", &[0, 0x7e, 0, 0, 0, 1, 0, 0, 0, 9]);
    // endpoint: client frames after the HELLO.
    let frames = sample_frames();
    for (i, f) in frames.iter().enumerate().skip(2) {
        write("endpoint", &format!("seed-{i}"), f);
    }
    let all: Vec<u8> = frames[3..].concat();
    write("endpoint", "seed-all", &all);
    write("endpoint", "garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    // ops: deterministic pseudo-random byte strings of several lengths.
    let mut x: u64 = 0x243f_6a88_85a3_08d3;
    for len in [16usize, 64, 200, 512, 1024, 2048] {
        let d: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        write("ops", &format!("seed-{len}"), &d);
    }
}
