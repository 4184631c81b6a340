//! P6: an idle session costs at most 512 bytes of core state; a busy one
//! stays within the bounds its configuration documents.

use bytes::Bytes;
use mf_core::testing::scenario::fast_config;
use mf_core::testing::{NetConfig, SimNet};
use std::time::Duration;

const IDLE_SESSION_BYTES_MAX: usize = 512;

#[test]
fn an_idle_session_costs_at_most_512_bytes() {
    let mut net = SimNet::new(1, fast_config(), NetConfig::default());
    let c = net.add_client(fast_config());
    net.connect(c);
    // Traffic first, so any buffers that grew have had the chance to shrink.
    for i in 0..60u32 {
        net.client(c).send((i % 4) as u16, Bytes::from(vec![1u8; 3000])).unwrap();
        net.client(c).call(1, Bytes::from(vec![2u8; 100]), None).unwrap();
    }
    let mut taken = 0;
    net.run_until(1_000_000, |net| {
        let now = net.now();
        while let Some((s, m)) = net.server_recv() {
            taken += 1;
            if let mf_core::Incoming::Request { id, .. } = m {
                net.server.respond(now, s, id, "r").unwrap();
            }
        }
        taken == 120
    });
    // Idle: a few keepalive intervals with nothing to do.
    net.run_for(Duration::from_millis(500), 100_000);
    let client_bytes = net.client(c).memory_bytes();
    let sid = net.session_of(c).unwrap();
    let server_bytes = net.server.session_memory_bytes(sid).unwrap();
    eprintln!("idle session: client {client_bytes} B, server {server_bytes} B");
    assert!(client_bytes <= IDLE_SESSION_BYTES_MAX, "client side: {client_bytes} B");
    assert!(server_bytes <= IDLE_SESSION_BYTES_MAX, "server side: {server_bytes} B");
}
