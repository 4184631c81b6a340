//! 1,000 concurrent connections served, each with its own session.

mod common;

use mf_core::{Event, Instant, TransmitBuf};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Raise the soft RLIMIT_NOFILE (the hard limit is the ceiling).
fn raise_nofile(want: u64) {
    #[cfg(unix)]
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < want as libc::rlim_t {
            r.rlim_cur = (want as libc::rlim_t).min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

#[test]
fn thousand_concurrent_connections_served() {
    const N: usize = 1000;
    raise_nofile(4 * N as u64 + 256);
    // The bare cores below are not driven while they wait (no keep-alive
    // answers), so idle timeouts must outlast the test.
    let mut protocol = common::protocol();
    protocol.keepalive_interval_ms = 20_000;
    protocol.idle_timeout_ms = 60_000;
    protocol.handshake_timeout_ms = 60_000;
    let mut cfg = common::server_config(2);
    cfg.protocol = protocol.clone();
    let server = mf_driver_mio::Server::bind("127.0.0.1:0", cfg).unwrap();
    let addr = server.local_addr();
    let s2 = server.clone();
    let t = std::thread::spawn(move || s2.serve(|req| req.body).unwrap());
    // Each connection is driven by a bare protocol core over a blocking
    // socket: one process, no thread per client.
    let mut conns = Vec::with_capacity(N);
    let now = Instant::ZERO;
    let mut wire = TransmitBuf::new();
    let mut bytes = Vec::new();
    for i in 0..N {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = mf_core::Client::new(protocol.clone(), mf_core::seed_from_u64(i as u64 + 1)).unwrap();
        let id = c.call(0, format!("hello {i}"), None).unwrap();
        c.connected(now);
        c.poll_transmit(now, &mut wire);
        bytes.clear();
        wire.copy_to_vec(&mut bytes);
        s.write_all(&bytes).unwrap();
        conns.push((s, c, id));
    }
    // All open at once: every one holds a session.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.stats().sessions < N {
        assert!(std::time::Instant::now() < deadline, "{:?}", server.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = server.stats();
    assert!(stats.connections >= N, "{stats:?}");
    let mut buf = vec![0u8; 4096];
    for (i, (s, c, id)) in conns.iter_mut().enumerate() {
        let mut answer = None;
        while answer.is_none() {
            let n = s.read(&mut buf).expect("response");
            assert!(n > 0, "connection {i} closed");
            c.handle_input(now, &buf[..n]);
            while let Some(e) = c.poll_event() {
                if let Event::Response { id: got, body } = e {
                    assert_eq!(got, *id);
                    answer = Some(body);
                }
            }
        }
        assert_eq!(answer.unwrap(), format!("hello {i}").as_bytes());
    }
    drop(conns);
    server.shutdown();
    t.join().unwrap();
}
