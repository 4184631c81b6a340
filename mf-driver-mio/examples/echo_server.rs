//! An echo server: every request is answered with its own body; one-way
//! messages are counted and acknowledged by their receipt.
//!
//! `cargo run --release -p mf-driver-mio --example echo_server -- 127.0.0.1:7000`

use mf_driver_mio::{Server, ServerConfig};
use std::sync::atomic::{AtomicU64, Ordering};

fn main() -> Result<(), mf_driver_mio::Error> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7000".into());
    let server = Server::bind(addr.as_str(), ServerConfig::default())?;
    println!("echo server on {} with {} workers", server.local_addr(), server.workers());
    let messages = AtomicU64::new(0);
    server.serve(move |req| {
        if !req.is_request() {
            let n = messages.fetch_add(1, Ordering::Relaxed) + 1;
            if n % 10_000 == 0 {
                println!("{n} one-way messages");
            }
        }
        req.body
    })
}
