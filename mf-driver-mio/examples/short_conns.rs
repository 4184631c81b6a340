//! Short connections (P3's workload): connect, one 64-byte call, close; this
//! driver against raw blocking TCP, interleaved. A quick look, not the
//! benchmark: `cargo run --release -p mf-driver-mio --example short_conns [n]`.

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
            let mut buf = [0u8; 68];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&buf);
            }
        }
    });
    addr
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let raw_addr = raw_server();
    let mut sc = ServerConfig::default();
    sc.workers = 1;
    let server = Server::bind("127.0.0.1:0", sc).unwrap();
    let s2 = server.clone();
    std::thread::spawn(move || s2.serve(|req| req.body).unwrap());
    let addr = server.local_addr();
    let body = vec![7u8; 64];
    let mut framed = 64u32.to_le_bytes().to_vec();
    framed.extend_from_slice(&body);
    let (mut raw_s, mut mf_s) = (0f64, 0f64);
    for _ in 0..4 {
        let t = Instant::now();
        for _ in 0..n / 4 {
            let mut s = TcpStream::connect(raw_addr).unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(&framed).unwrap();
            let mut back = [0u8; 68];
            s.read_exact(&mut back).unwrap();
        }
        raw_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..n / 4 {
            let c = Client::connect(addr, ClientConfig::default()).unwrap();
            assert_eq!(c.call(body.clone()).unwrap().len(), 64);
            c.close().unwrap();
        }
        mf_s += t.elapsed().as_secs_f64();
    }
    let (raw_rate, mf_rate) = (n as f64 / raw_s, n as f64 / mf_s);
    println!("raw: {raw_rate:.0} conn/s  mf: {mf_rate:.0} conn/s  ratio {:.2}x", mf_rate / raw_rate);
}
