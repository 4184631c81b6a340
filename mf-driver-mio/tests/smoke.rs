//! Smoke test: echo calls and a receipt over loopback.
mod common;
use mf_driver_mio::Client;
use std::time::Duration;

#[test]
fn echo_call_and_send() {
    let (server, addr, t) = common::echo_server(2);
    let c = Client::connect(addr, common::client_config(1)).unwrap();
    for i in 0..100u32 {
        let r = c.call(i.to_le_bytes().to_vec()).unwrap();
        assert_eq!(&r[..], &i.to_le_bytes());
    }
    let r = c.send("hi").unwrap();
    r.wait_timeout(Duration::from_secs(5)).unwrap();
    c.close().unwrap();
    server.shutdown();
    t.join().unwrap();
}
