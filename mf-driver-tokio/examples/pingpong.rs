//! Quick look at the cost of a call: ping-pong (or a pipeline) over
//! loopback, client and server each on a current-thread runtime of its own
//! thread, against the same workload on raw tokio TCP (u32 length prefix).
//!
//! ```sh
//! cargo run --release -p mf-driver-tokio --example pingpong -- mf 100000
//! cargo run --release -p mf-driver-tokio --example pingpong -- raw 100000
//! cargo run --release -p mf-driver-tokio --example pingpong -- mf 1000000 256   # pipelined
//! cargo run --release -p mf-driver-tokio --example pingpong -- mf 1000 1 1048576 # 1 MiB calls
//! cargo run --release -p mf-driver-tokio --example pingpong -- short 5000         # start, call, close
//! ```
//!
//! Prints calls per second and, for `mf`, the client's and the server's
//! I/O per call. The `mf bench` command of mf-cli is the real benchmark;
//! this is for profiling one driver (`perf record`, `valgrind --tool=callgrind`).

use bytes::Bytes;
use mf_driver_tokio::transport::{TcpConnector, TcpListener};
use mf_driver_tokio::{Client, ClientOptions, IoStats, Request, Server, ServerOptions};
use std::collections::VecDeque;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn per_call(io: &IoStats, calls: u64) -> String {
    let c = calls.max(1) as f64;
    format!(
        "reads {:.2} ({:.2} inline, +{:.2} pending), writes {:.3} ({:.3} inline), wakeups {:.2}",
        io.read_syscalls as f64 / c,
        io.inline_reads as f64 / c,
        io.read_would_block as f64 / c,
        io.write_syscalls as f64 / c,
        io.inline_writes as f64 / c,
        io.wakeups as f64 / c,
    )
}

fn mf(calls: u64, depth: usize, size: usize) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (io_tx, io_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        runtime().block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            addr_tx.send(l.local_addr().expect("addr")).expect("send");
            let server = Server::start(l, ServerOptions::default()).expect("server");
            server.serve(|req: Request| async move { Ok(req.body) });
            let _ = stop_rx.await;
            let _ = io_tx.send(server.io_stats());
            server.shutdown().await;
        })
    });
    let addr = addr_rx.recv().expect("addr");
    let rt = runtime();
    let (elapsed, cio) = rt.block_on(async {
        let c = Client::connect(TcpConnector::new(addr), ClientOptions::default()).await.expect("connect");
        let body = Bytes::from(vec![7u8; size]);
        let t = Instant::now();
        if depth <= 1 {
            for _ in 0..calls {
                let r = c.call(0, body.clone()).await.expect("call");
                assert_eq!(r.len(), size);
            }
        } else {
            let mut pending = VecDeque::new();
            let (mut started, mut done) = (0, 0);
            while done < calls {
                while started < calls && pending.len() < depth {
                    pending.push_back(c.try_call(0, body.clone(), None).expect("try_call"));
                    started += 1;
                }
                let r = pending.pop_front().expect("pending").await.expect("call");
                assert_eq!(r.len(), size);
                done += 1;
            }
        }
        let elapsed = t.elapsed();
        let io = c.io_stats();
        c.close().await;
        (elapsed, io)
    });
    let _ = stop_tx.send(());
    let sio = io_rx.recv().expect("server io");
    server.join().expect("server thread");
    println!(
        "mf: {calls} calls (depth {depth}) in {elapsed:?}: {:.0} calls/s",
        calls as f64 / elapsed.as_secs_f64()
    );
    println!("  client per call: {}", per_call(&cio, calls));
    println!("  server per call: {}", per_call(&sio, calls));
}

/// Short connections: `start` (or `connect`), one call, `close`.
fn short(conns: u64, wait_connected: bool) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        runtime().block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            addr_tx.send(l.local_addr().expect("addr")).expect("send");
            let server = Server::start(l, ServerOptions::default()).expect("server");
            server.serve(|req: Request| async move { Ok(req.body) });
            let _ = stop_rx.await;
            server.shutdown().await;
        })
    });
    let addr = addr_rx.recv().expect("addr");
    let (elapsed, writes) = runtime().block_on(async {
        let body = Bytes::from(vec![7u8; 64]);
        let (t, mut writes) = (Instant::now(), 0);
        for _ in 0..conns {
            let c = if wait_connected {
                Client::connect(TcpConnector::new(addr), ClientOptions::default()).await.expect("connect")
            } else {
                Client::start(TcpConnector::new(addr), ClientOptions::default()).expect("start")
            };
            assert_eq!(c.call(0, body.clone()).await.expect("call").len(), 64);
            c.close().await;
            writes += c.io_stats().write_syscalls;
        }
        (t.elapsed(), writes)
    });
    let _ = stop_tx.send(());
    server.join().expect("server thread");
    let how = if wait_connected { "connect" } else { "start" };
    println!(
        "short ({how}): {conns} connections in {elapsed:?}: {:.0} connections/s, {:.2} client writes each",
        conns as f64 / elapsed.as_secs_f64(),
        writes as f64 / conns as f64
    );
}

fn raw(calls: u64) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        runtime().block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addr_tx.send(l.local_addr().expect("addr")).expect("send");
            let (mut s, _) = l.accept().await.expect("accept");
            s.set_nodelay(true).expect("nodelay");
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let Ok(len) = s.read_u32().await else { return };
                let len = len as usize;
                if s.read_exact(&mut buf[..len]).await.is_err() {
                    return;
                }
                let mut out = Vec::with_capacity(4 + len);
                out.extend_from_slice(&(len as u32).to_be_bytes());
                out.extend_from_slice(&buf[..len]);
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        })
    });
    let addr = addr_rx.recv().expect("addr");
    let elapsed = runtime().block_on(async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let mut frame = (64u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&[7u8; 64]);
        let mut buf = [0u8; 64];
        let t = Instant::now();
        for _ in 0..calls {
            s.write_all(&frame).await.expect("write");
            let len = s.read_u32().await.expect("read") as usize;
            s.read_exact(&mut buf[..len]).await.expect("read");
        }
        t.elapsed()
    });
    server.join().expect("server thread");
    println!("raw: {calls} calls in {elapsed:?}: {:.0} calls/s", calls as f64 / elapsed.as_secs_f64());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let calls = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let depth = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let size = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(64);
    match args.get(1).map(String::as_str) {
        Some("raw") => raw(calls),
        Some("short") => short(calls, false),
        Some("short-connect") => short(calls, true),
        _ => mf(calls, depth, size),
    }
}
