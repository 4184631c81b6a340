//! A client and a server over the simulated network: messages and calls on
//! three channels while the connection is cut every few milliseconds, then a
//! check that every message arrived exactly once and every call was answered.
//!
//! `cargo run --release -p mf-core --example sim_pair [-- SEED]`

use mf_core::testing::scenario::{Fault, Harness, fast_config};
use mf_core::testing::{Dir, NetConfig};

fn main() {
    let seed: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let net = NetConfig { latency_us: 100, jitter_us: 50, chunk_bytes_max: 1000 };
    let mut h = Harness::new(seed, 2, fast_config(), net);
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    for round in 0..2_000u64 {
        for c in 0..2 {
            let ch = (round % 3) as u16;
            let accepted = if round % 2 == 0 {
                h.send(c, ch, 48 + (round as usize * 37) % 2000)
            } else {
                h.call(c, ch, 48, None)
            };
            sent += accepted as u64;
        }
        if round % 50 == 25 {
            // A reset somewhere in the middle of a frame.
            h.fault(Fault::CutAfter((round / 50 % 2) as usize, Dir::Up, round % 97));
        }
        h.consume_server(16);
        for c in 0..2 {
            h.consume_client(c, 16);
        }
        h.step();
    }
    match h.settle(30_000) {
        Ok(s) => {
            println!("seed {seed}: {sent} messages and calls accepted, {} faults injected", h.faults);
            println!(
                "  arrived {} (exactly once each), receipts {}, responses {}, failed {} (not delivered) + {} (unknown)",
                s.arrived, s.receipts, s.responses, s.failed_not_delivered, s.failed_unknown
            );
            for c in 0..2 {
                let st = h.net.client(c).stats();
                println!(
                    "  client {c}: {} resumes, {} frames resent, rtt {} us",
                    st.resumes, st.frames_retransmitted, st.rtt_us
                );
            }
            println!("  simulated {:?} in {:?} of real time; contract held", h.net.now(), started.elapsed());
        }
        Err(v) => {
            eprintln!("seed {seed}: contract violated:\n  {}", v.join("\n  "));
            std::process::exit(1);
        }
    }
}
