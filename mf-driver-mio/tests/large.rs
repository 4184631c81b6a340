//! Whole large messages (C1) through full socket buffers, with and without
//! connection cuts: the write paths that must wait for WRITABLE.

mod common;

use common::proxy::{Faults, Proxy};
use mf_driver_mio::Client;
use std::time::Duration;

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn large_calls_and_messages_arrive_whole() {
    let mut scfg = common::server_config(2);
    scfg.protocol = mf_driver_mio::Config::default();
    scfg.tcp.send_buffer_bytes = Some(32 << 10);
    scfg.tcp.recv_buffer_bytes = Some(32 << 10);
    let server = mf_driver_mio::Server::bind("127.0.0.1:0", scfg).unwrap();
    let addr = server.local_addr();
    let s2 = server.clone();
    let t = std::thread::spawn(move || s2.serve(|req| req.body).unwrap());
    let mut cfg = common::client_config(51);
    cfg.protocol = mf_driver_mio::Config::default();
    // Small socket buffers make every large write block part-way.
    cfg.tcp.send_buffer_bytes = Some(32 << 10);
    cfg.tcp.recv_buffer_bytes = Some(32 << 10);
    let client = Client::connect(addr, cfg).unwrap();
    let r = client.send(body(2 << 20, 7)).unwrap();
    r.wait_timeout(Duration::from_secs(30)).unwrap();
    for (i, len) in [1usize << 20, 4 << 20, 3 * (1 << 20) + 17].into_iter().enumerate() {
        let b = body(len, i as u8);
        let r = client.call(b.clone()).unwrap();
        assert_eq!(r.len(), len);
        assert!(r[..] == b[..], "response {i} corrupted");
    }
    // Small calls on another thread are not stuck behind a large one.
    let c2 = client.clone();
    let small = std::thread::spawn(move || {
        for i in 0..200 {
            assert_eq!(c2.channel(1).call(format!("s{i}")).unwrap(), format!("s{i}").as_bytes());
        }
    });
    let big = client.call(body(8 << 20, 9)).unwrap();
    assert_eq!(big.len(), 8 << 20);
    small.join().unwrap();
    client.close().unwrap();
    server.shutdown();
    t.join().unwrap();
}

#[test]
fn large_calls_survive_cuts() {
    let (server, addr, t) = common::echo_server(2);
    let proxy = Proxy::start(addr, 52);
    proxy.set_faults(Faults { cut_after_bytes_max: 3 << 20, stall_instead: false });
    let mut cfg = common::client_config(52);
    cfg.protocol.resume_timeout_ms = 20_000;
    let client = Client::connect(proxy.addr(), cfg).unwrap();
    for i in 0..8u8 {
        let b = body(700_000 + i as usize * 1000, i);
        let r = client.call_timeout(b.clone(), Duration::from_secs(60)).unwrap();
        assert!(r[..] == b[..], "response {i} corrupted");
    }
    println!("{} cuts, {} resumes", proxy.cuts(), client.stats().session.resumes);
    assert!(proxy.cuts() >= 1);
    client.close().unwrap();
    drop(proxy);
    server.shutdown();
    t.join().unwrap();
}
