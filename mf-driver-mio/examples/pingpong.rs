//! Ping-pong latency, 64-byte request and response over loopback: this
//! driver against the raw floor (blocking std::net, u32 length prefix,
//! TCP_NODELAY), interleaved in rounds. A quick look, not the benchmark
//! (`mf bench` is): `cargo run --release -p mf-driver-mio --example pingpong [rounds] [calls]`
//! (`MF_CALLER_READS=0` to compare with the reactor reading responses,
//! `MF_ACK_MS=N` to set the protocol's acknowledgement delay, `MF_DIST=1` for
//! more percentiles, `MF_ATTRIBUTE=1` to split the calls by whether the
//! client's reactor thread visited the client during them).

use mf_driver_mio::{Client, ClientConfig, Server, ServerConfig};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

fn raw_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            s.set_nodelay(true).unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let mut len = [0u8; 4];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let n = u32::from_le_bytes(len) as usize;
                    if s.read_exact(&mut buf[..n]).is_err() {
                        return;
                    }
                    let mut out = Vec::with_capacity(4 + n);
                    out.extend_from_slice(&len);
                    out.extend_from_slice(&buf[..n]);
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn percentiles(mut v: Vec<u64>) -> (u64, u64, u64) {
    v.sort_unstable();
    (v[v.len() / 2], v[v.len() * 99 / 100], v[v.len() * 999 / 1000])
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let calls: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let raw_addr = raw_server();
    let mut sc = ServerConfig::default();
    sc.workers = 1;
    let server = Server::bind("127.0.0.1:0", sc).unwrap();
    let s2 = server.clone();
    std::thread::spawn(move || s2.serve(|req| req.body).unwrap());
    let mut cc = ClientConfig::default();
    // MF_CALLER_READS=0: the reactor thread reads responses (one more hop).
    if let Some(ms) = std::env::var("MF_ACK_MS").ok().and_then(|v| v.parse().ok()) {
        cc.protocol.ack_delay_ms = ms;
    }
    cc.caller_reads = std::env::var("MF_CALLER_READS").map_or(true, |v| v != "0");
    let client = Client::connect(server.local_addr(), cc).unwrap();
    let mut raw = TcpStream::connect(raw_addr).unwrap();
    raw.set_nodelay(true).unwrap();
    let body = vec![7u8; 64];
    let (mut raw_us, mut mf_us) = (Vec::new(), Vec::new());
    let mut framed = (64u32).to_le_bytes().to_vec();
    framed.extend_from_slice(&body);
    let mut back = vec![0u8; 68];
    let attribute = std::env::var("MF_ATTRIBUTE").is_ok();
    let (mut with_wake, mut without_wake) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for _ in 0..calls {
            let t = Instant::now();
            raw.write_all(&framed).unwrap();
            raw.read_exact(&mut back).unwrap();
            raw_us.push(t.elapsed().as_nanos() as u64);
        }
        for _ in 0..calls {
            let w0 = if attribute { client.stats().io.wakeups } else { 0 };
            let t = Instant::now();
            let r = client.call(body.clone()).unwrap();
            let ns = t.elapsed().as_nanos() as u64;
            mf_us.push(ns);
            if attribute {
                let woke = client.stats().io.wakeups != w0;
                if woke { with_wake.push(ns) } else { without_wake.push(ns) }
            }
            assert_eq!(r.len(), 64);
        }
    }
    if std::env::var("MF_DIST").is_ok() {
        for (name, v) in [("raw", &raw_us), ("mf", &mf_us)] {
            let mut v = v.clone();
            v.sort_unstable();
            let q: Vec<String> = [0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995]
                .iter()
                .map(|&q| format!("p{}={:.1}", q * 100.0, v[(v.len() as f64 * q) as usize] as f64 / 1e3))
                .collect();
            println!("{name}: {}", q.join(" "));
        }
    }
    if attribute {
        for (name, v) in [("calls with a reactor visit", &with_wake), ("calls without", &without_wake)] {
            if v.len() > 10 {
                let (a, b, c) = percentiles(v.clone());
                println!(
                    "{name}: {} calls, p50 {:.1} p99 {:.1} p99.9 {:.1}",
                    v.len(),
                    a as f64 / 1e3,
                    b as f64 / 1e3,
                    c as f64 / 1e3
                );
            }
        }
    }
    let (r50, r99, r999) = percentiles(raw_us);
    let (m50, m99, m999) = percentiles(mf_us);
    let us = |ns: u64| ns as f64 / 1e3;
    println!("raw: p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us", us(r50), us(r99), us(r999));
    println!("mf:  p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us", us(m50), us(m99), us(m999));
    println!("ratio: p50 {:.2}x  p99 {:.2}x", m50 as f64 / r50 as f64, m99 as f64 / r99 as f64);
    let io = client.stats().io;
    println!(
        "client: {} writes, {} reads, {} I/O-thread wakeups",
        io.write_syscalls, io.read_syscalls, io.wakeups
    );
}
