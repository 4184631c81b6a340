//! Pipelined calls (P2's workload): 64-byte requests, 256 outstanding, one
//! connection, one client thread; against raw framed-and-batched TCP
//! (u32 length prefix, buffered reads and writes). A quick look, not the
//! benchmark: `cargo run --release -p mf-driver-mio --example pipeline [calls]`.

use mf_driver_mio::{Client, ClientConfig, Server, ServerConfig};
use std::collections::VecDeque;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

fn raw_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let s = s.unwrap();
            s.set_nodelay(true).unwrap();
            std::thread::spawn(move || {
                let mut r = BufReader::with_capacity(64 << 10, s.try_clone().unwrap());
                let mut w = BufWriter::with_capacity(64 << 10, s);
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let mut len = [0u8; 4];
                    if r.read_exact(&mut len).is_err() {
                        return;
                    }
                    let n = u32::from_le_bytes(len) as usize;
                    if r.read_exact(&mut buf[..n]).is_err() {
                        return;
                    }
                    w.write_all(&len).unwrap();
                    w.write_all(&buf[..n]).unwrap();
                    // Answer everything already read in one write.
                    if r.buffer().is_empty() && w.flush().is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Rounds of 256 requests in one write, then their 256 responses.
fn raw_rate(addr: std::net::SocketAddr, calls: usize) -> f64 {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut r = BufReader::with_capacity(64 << 10, s.try_clone().unwrap());
    let mut w = BufWriter::with_capacity(64 << 10, s);
    let mut frame = 64u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&[7u8; 64]);
    let mut back = [0u8; 68];
    let t = Instant::now();
    for _ in 0..calls / 256 {
        for _ in 0..256 {
            w.write_all(&frame).unwrap();
        }
        w.flush().unwrap();
        for _ in 0..256 {
            r.read_exact(&mut back).unwrap();
        }
    }
    (calls / 256 * 256) as f64 / t.elapsed().as_secs_f64()
}

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
    let mf = calls as f64 / secs;
    let raw = raw_rate(raw_server(), calls);
    println!(
        "mf: {mf:.0} calls/s (client {:.3}, server {:.3} writes/call); raw: {raw:.0} calls/s; ratio {:.2}x",
        io.write_syscalls as f64 / calls as f64,
        sio.write_syscalls as f64 / calls as f64,
        mf / raw
    );
}
