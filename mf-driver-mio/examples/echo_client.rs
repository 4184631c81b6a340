//! An echo client: calls, a burst of pipelined calls, and one-way messages
//! with receipts, against `echo_server`.
//!
//! `cargo run --release -p mf-driver-mio --example echo_client -- 127.0.0.1:7000`

use mf_driver_mio::{Client, ClientConfig};
use std::time::{Duration, Instant};

fn main() -> Result<(), mf_driver_mio::Error> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7000".into());
    let client = Client::connect(addr.as_str(), ClientConfig::default())?;

    // One call: blocks until the whole response is back.
    let answer = client.call("hello")?;
    println!("call -> {:?}", String::from_utf8_lossy(&answer));

    // A call with a deadline.
    let answer = client.call_timeout("quick", Duration::from_millis(500))?;
    println!("call_timeout -> {:?}", String::from_utf8_lossy(&answer));

    // 1000 calls in flight from one thread.
    let t = Instant::now();
    let pending: Vec<_> =
        (0..1000).map(|i| client.call_start(format!("#{i}"), None)).collect::<Result<_, _>>()?;
    for p in pending {
        p.wait()?;
    }
    println!("1000 pipelined calls in {:?}", t.elapsed());

    // One-way messages; the last receipt says the server application took it.
    let mut last = None;
    for i in 0..10_000 {
        last = Some(client.send(format!("message {i}"))?);
    }
    if let Some(r) = last {
        r.wait()?;
    }
    let stats = client.stats();
    println!(
        "sent {} messages and calls in {} write calls ({:.3} per message)",
        stats.session.msgs_sent,
        stats.io.write_syscalls,
        stats.io.write_syscalls as f64 / stats.session.msgs_sent as f64
    );
    client.close()
}
