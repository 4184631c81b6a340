//! A fault-injecting TCP proxy for tests: forwards loopback connections to a
//! target and can cut them at chosen byte offsets, stall them, or reset
//! them all; the target can be switched (a "restarted" server).

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use socket2::SockRef;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Faults applied to the next connections.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Cut each connection after a random number of bytes in 1..=max
    /// (counted in both directions together); 0 disables.
    pub cut_after_bytes_max: u64,
    /// Stall (stop forwarding, keep the sockets open) instead of cutting.
    pub stall_instead: bool,
}

struct Link {
    a: TcpStream,
    b: TcpStream,
    dead: Arc<AtomicBool>,
}

struct Inner {
    target: Mutex<SocketAddr>,
    faults: Mutex<Faults>,
    rng: Mutex<ChaCha8Rng>,
    links: Mutex<Vec<Link>>,
    stop: AtomicBool,
    /// Connections cut by a fault (not by `reset_all`).
    pub cuts: AtomicU64,
    pub accepted: AtomicU64,
}

pub struct Proxy {
    inner: Arc<Inner>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(target: SocketAddr, seed: u64) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let inner = Arc::new(Inner {
            target: Mutex::new(target),
            faults: Mutex::new(Faults::default()),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            links: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            cuts: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let i2 = inner.clone();
        let thread = std::thread::spawn(move || accept_loop(l, i2));
        Proxy { inner, addr, thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_faults(&self, f: Faults) {
        *self.inner.faults.lock().unwrap() = f;
    }

    pub fn set_target(&self, t: SocketAddr) {
        *self.inner.target.lock().unwrap() = t;
    }

    pub fn cuts(&self) -> u64 {
        self.inner.cuts.load(Ordering::Relaxed)
    }

    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Reset every open connection now.
    pub fn reset_all(&self) {
        let links = std::mem::take(&mut *self.inner.links.lock().unwrap());
        for l in links {
            kill(&l.a, &l.b, &l.dead);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.reset_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn kill(a: &TcpStream, b: &TcpStream, dead: &AtomicBool) {
    dead.store(true, Ordering::Relaxed);
    // Linger 0: the close that follows sends a reset.
    let _ = SockRef::from(a).set_linger(Some(Duration::ZERO));
    let _ = SockRef::from(b).set_linger(Some(Duration::ZERO));
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

fn accept_loop(l: TcpListener, inner: Arc<Inner>) {
    while !inner.stop.load(Ordering::Relaxed) {
        let (a, _) = match l.accept() {
            Ok(x) => x,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        inner.accepted.fetch_add(1, Ordering::Relaxed);
        a.set_nonblocking(false).unwrap();
        let target = *inner.target.lock().unwrap();
        let b = match TcpStream::connect(target) {
            Ok(b) => b,
            Err(_) => continue, // drops `a`: the client sees the connection fail
        };
        let _ = a.set_nodelay(true);
        let _ = b.set_nodelay(true);
        let faults = *inner.faults.lock().unwrap();
        let budget = if faults.cut_after_bytes_max > 0 {
            Some(1 + inner.rng.lock().unwrap().next_u64() % faults.cut_after_bytes_max)
        } else {
            None
        };
        let dead = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        inner.links.lock().unwrap().push(Link {
            a: a.try_clone().unwrap(),
            b: b.try_clone().unwrap(),
            dead: dead.clone(),
        });
        for (from, to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
            let (dead, counter, inner) = (dead.clone(), counter.clone(), inner.clone());
            std::thread::spawn(move || pump(from, to, budget, faults.stall_instead, dead, counter, inner));
        }
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    budget: Option<u64>,
    stall: bool,
    dead: Arc<AtomicBool>,
    counter: Arc<AtomicU64>,
    inner: Arc<Inner>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        if dead.load(Ordering::Relaxed) {
            return;
        }
        let mut n = n as u64;
        let mut cut = false;
        if let Some(b) = budget {
            let before = counter.fetch_add(n, Ordering::Relaxed);
            if before + n >= b {
                n = b.saturating_sub(before);
                cut = true;
            }
        }
        if to.write_all(&buf[..n as usize]).is_err() {
            return;
        }
        if cut {
            if dead.swap(true, Ordering::Relaxed) {
                return;
            }
            inner.cuts.fetch_add(1, Ordering::Relaxed);
            if stall {
                // Keep both sockets open and forward nothing more: only the
                // protocol's idle timeout can notice.
                return;
            }
            kill(&from, &to, &dead);
            return;
        }
    }
}
