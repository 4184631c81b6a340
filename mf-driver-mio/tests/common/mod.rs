//! Shared by the integration tests: fast configs, a server, a fault proxy.
#![allow(dead_code)]

pub mod proxy;

use mf_driver_mio::{ClientConfig, Server, ServerConfig};
use std::net::SocketAddr;

/// Protocol timers short enough for tests (mf-core's fast config).
pub fn protocol() -> mf_driver_mio::Config {
    mf_core::testing::scenario::fast_config()
}

pub fn client_config(seed: u64) -> ClientConfig {
    let mut c = ClientConfig::default();
    c.protocol = protocol();
    c.seed = Some(mf_core::seed_from_u64(seed));
    c
}

pub fn server_config(workers: usize) -> ServerConfig {
    let mut c = ServerConfig::default();
    c.protocol = protocol();
    c.workers = workers;
    c.seed = Some(mf_core::seed_from_u64(0x5e));
    c
}

/// A server on an ephemeral loopback port.
pub fn server(workers: usize) -> Server {
    Server::bind("127.0.0.1:0", server_config(workers)).expect("bind")
}

/// Run `serve` with an echo handler on a background thread.
pub fn echo_server(workers: usize) -> (Server, SocketAddr, std::thread::JoinHandle<()>) {
    let s = server(workers);
    let addr = s.local_addr();
    let s2 = s.clone();
    let t = std::thread::spawn(move || s2.serve(|req| req.body).expect("serve"));
    (s, addr, t)
}
