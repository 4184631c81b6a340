//! Shared pieces of the cross-crate integration tests (in `tests/tests/`):
//! a TCP proxy that can cut every connection through it, and config helpers.

#![deny(missing_docs)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Connections a proxy keeps open at most (each costs two threads).
const PROXY_CONNECTIONS_MAX: usize = 64;

/// A loopback TCP proxy in front of a server. [`CutProxy::cut_all`] shuts
/// down every connection through it in both directions at once, losing
/// whatever bytes were in the proxy: both ends see the connection fail,
/// mid-frame as often as not. The backend can be swapped (a server restart).
pub struct CutProxy {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

struct Inner {
    backend: Mutex<SocketAddr>,
    live: Mutex<Vec<(TcpStream, TcpStream)>>,
    stop: AtomicBool,
    accepted: AtomicU64,
    cuts: AtomicU64,
}

impl CutProxy {
    /// Listen on 127.0.0.1 (a free port) and forward to `backend`.
    pub fn start(backend: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let inner = Arc::new(Inner {
            backend: Mutex::new(backend),
            live: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
        });
        let i = inner.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if i.stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(client) = client else { continue };
                let backend = *i.backend.lock().unwrap();
                let Ok(server) = TcpStream::connect(backend) else { continue };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let mut live = i.live.lock().unwrap();
                live.retain(|(c, _)| c.peer_addr().is_ok());
                if live.len() >= PROXY_CONNECTIONS_MAX {
                    continue;
                }
                i.accepted.fetch_add(1, Ordering::Relaxed);
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
                live.push((c2, s2));
                drop(live);
                pump(&client, &server);
                pump(&server, &client);
            }
        });
        CutProxy { addr, inner }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forward new connections to `backend` from now on.
    pub fn set_backend(&self, backend: SocketAddr) {
        *self.inner.backend.lock().unwrap() = backend;
    }

    /// Cut every connection through the proxy. Returns how many there were.
    pub fn cut_all(&self) -> usize {
        let mut live = self.inner.live.lock().unwrap();
        let n = live.len();
        for (c, s) in live.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
            let _ = s.shutdown(Shutdown::Both);
        }
        self.inner.cuts.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.inner.cuts.load(Ordering::Relaxed)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
        self.cut_all();
    }
}

/// Copy `from` to `to` on a thread until either fails; then shut both.
fn pump(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else { return };
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// Protocol settings for tests through cuts: fast reconnects and timers.
pub fn protocol() -> mf_core::Config {
    mf_core::testing::scenario::fast_config()
}
