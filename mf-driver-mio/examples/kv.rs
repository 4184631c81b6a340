//! A small key-value store over MessageFirst: `GET key`, `PUT key value`,
//! `DEL key` as requests; a missing key is a rejected call (code 404).
//!
//! `cargo run --release -p mf-driver-mio --example kv` runs a server and a
//! demo client in one process; `-- serve 127.0.0.1:7001` runs only the server.

use bytes::Bytes;
use mf_driver_mio::{Client, ClientConfig, Error, Reply, Server, ServerConfig};
use std::collections::HashMap;
use std::sync::Mutex;

const NOT_FOUND: u16 = 404;
const BAD_REQUEST: u16 = 400;

/// Shards keep workers from contending on one lock.
struct Store {
    shards: Vec<Mutex<HashMap<Bytes, Bytes>>>,
}

impl Store {
    fn new(n: usize) -> Store {
        Store { shards: (0..n).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    fn shard(&self, key: &[u8]) -> &Mutex<HashMap<Bytes, Bytes>> {
        let h =
            key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        &self.shards[h as usize % self.shards.len()]
    }

    fn handle(&self, req: &Bytes) -> Reply {
        let mut parts = req.splitn(3, |&b| b == b' ');
        let (op, key) = (parts.next(), parts.next());
        let Some(key) = key.map(|k| req.slice_ref(k)) else { return Reply::Reject(BAD_REQUEST) };
        let mut shard = self.shard(&key).lock().unwrap();
        match op {
            Some(b"GET") => shard.get(&key).cloned().map_or(Reply::Reject(NOT_FOUND), Reply::Respond),
            Some(b"PUT") => {
                let value = parts.next().map(|v| req.slice_ref(v)).unwrap_or_default();
                shard.insert(key, value);
                Reply::Respond(Bytes::from_static(b"OK"))
            }
            Some(b"DEL") => shard.remove(&key).map_or(Reply::Reject(NOT_FOUND), |_| "OK".into()),
            _ => Reply::Reject(BAD_REQUEST),
        }
    }
}

fn serve(server: &Server) -> Result<(), Error> {
    let store = Store::new(64);
    server.serve(move |req| if req.is_request() { store.handle(&req.body) } else { Reply::Nothing })
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        let addr = args.get(1).map_or("127.0.0.1:7001", String::as_str);
        let server = Server::bind(addr, ServerConfig::default())?;
        println!("kv server on {}", server.local_addr());
        return serve(&server);
    }
    let server = Server::bind("127.0.0.1:0", ServerConfig::default())?;
    let s = server.clone();
    let serving = std::thread::spawn(move || serve(&s));

    let kv = Client::connect(server.local_addr(), ClientConfig::default())?;
    kv.call("PUT color blue")?;
    println!("GET color -> {:?}", kv.call("GET color")?);
    kv.call("DEL color")?;
    match kv.call("GET color") {
        Err(Error::Rejected(NOT_FOUND)) => println!("GET color -> not found"),
        other => println!("GET color -> {other:?}"),
    }
    // Load it from a few threads sharing one client.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let kv = kv.clone();
            std::thread::spawn(move || -> Result<(), Error> {
                for i in 0..1000 {
                    kv.call(format!("PUT k{t}-{i} v{i}"))?;
                    assert_eq!(kv.call(format!("GET k{t}-{i}"))?, format!("v{i}").as_bytes());
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread")?;
    }
    println!("8000 calls from 4 threads: ok ({:?})", kv.stats().session.msgs_sent);
    kv.close()?;
    server.shutdown();
    serving.join().expect("server thread")
}
