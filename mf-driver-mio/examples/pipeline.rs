//! Pipelined calls (P2's workload): 64-byte requests, 256 outstanding, one
//! connection, one client thread. A quick look, not the benchmark:
//! `cargo run --release -p mf-driver-mio --example pipeline [calls]`.

use mf_driver_mio::{Client, ClientConfig, Server, ServerConfig};
use std::collections::VecDeque;
use std::time::Instant;

fn main() {
    let calls: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let mut sc = ServerConfig::default();
    sc.workers = 1;
    let server = Server::bind("127.0.0.1:0", sc).unwrap();
    let s2 = server.clone();
    std::thread::spawn(move || s2.serve(|req| req.body).unwrap());
    let client = Client::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let body = bytes::Bytes::from(vec![7u8; 64]);
    let mut window = VecDeque::with_capacity(256);
    let t = Instant::now();
    for _ in 0..calls {
        if window.len() == 256 {
            let p: mf_driver_mio::PendingCall = window.pop_front().unwrap();
            p.wait().unwrap();
        }
        window.push_back(client.call_start(body.clone(), None).unwrap());
    }
    for p in window {
        p.wait().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let io = client.stats().io;
    let sio = server.stats().io;
    println!(
        "{:.0} calls/s; client {:.3} writes/call, server {:.3} writes/call",
        calls as f64 / secs,
        io.write_syscalls as f64 / calls as f64,
        sio.write_syscalls as f64 / calls as f64
    );
}
