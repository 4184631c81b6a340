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

/// Quantile `q` of sorted nanosecond samples, in microseconds.
fn quantile_us(sorted: &[u64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64 / 1e3
}

/// "p50 X p99 Y p99.9 Z" of sorted samples.
fn summary(sorted: &[u64]) -> String {
    let q = |x| quantile_us(sorted, x);
    format!("p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us", q(0.5), q(0.99), q(0.999))
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
    for v in [&mut raw_us, &mut mf_us, &mut with_wake, &mut without_wake] {
        v.sort_unstable();
    }
    if std::env::var("MF_DIST").is_ok() {
        for (name, v) in [("raw", &raw_us), ("mf", &mf_us)] {
            let q: Vec<String> = [0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995]
                .iter()
                .map(|&q| format!("p{}={:.1}", q * 100.0, quantile_us(v, q)))
                .collect();
            println!("{name}: {}", q.join(" "));
        }
    }
    if attribute {
        for (name, v) in [("calls with a reactor visit", &with_wake), ("calls without", &without_wake)] {
            if v.len() > 10 {
                println!("{name}: {} calls, {}", v.len(), summary(v));
            }
        }
    }
    println!("raw: {}", summary(&raw_us));
    println!("mf:  {}", summary(&mf_us));
    let ratio = |q| quantile_us(&mf_us, q) / quantile_us(&raw_us, q);
    println!("ratio: p50 {:.2}x  p99 {:.2}x", ratio(0.5), ratio(0.99));
    let io = client.stats().io;
    println!(
        "client: {} writes, {} reads, {} I/O-thread wakeups",
        io.write_syscalls, io.read_syscalls, io.wakeups
    );
}
