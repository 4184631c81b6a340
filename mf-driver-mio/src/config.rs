//! Driver settings: the protocol [`Config`] plus TCP socket options and
//! thread counts.

use mf_core::Config;
use socket2::{SockRef, TcpKeepalive};
use std::io;
use std::time::Duration;

/// TCP socket options, applied through socket2 to every socket the driver
/// opens or accepts. The benchmark sweeps these.
///
/// ```
/// let mut tcp = mf_driver_mio::TcpOptions::default();
/// tcp.send_buffer_bytes = Some(1 << 20);
/// tcp.keepalive_ms = Some(30_000);
/// assert!(tcp.nodelay);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpOptions {
    /// `TCP_NODELAY`: no Nagle delay for small messages. Default on.
    ///
    /// Turning it off is a cliff for request/response traffic: a write made
    /// while an earlier small one is unacknowledged waits for the peer's
    /// delayed acknowledgement (up to 40 ms on Linux), so pipelined 64-byte
    /// calls fall to a few percent of their rate (`mf bench sweep`). The
    /// driver batches its own writes (`write_batch_us`), which is what Nagle
    /// would otherwise be for.
    pub nodelay: bool,
    /// `TCP_QUICKACK` (Linux only; ignored elsewhere): set once on each new
    /// socket, so the first acknowledgements are not delayed. Default off.
    pub quickack: bool,
    /// `SO_SNDBUF`; `None` keeps the kernel's default (and autotuning).
    pub send_buffer_bytes: Option<usize>,
    /// `SO_RCVBUF`; `None` keeps the kernel's default (and autotuning).
    pub recv_buffer_bytes: Option<usize>,
    /// TCP keep-alive idle time; `None` disables it. The protocol has its own
    /// keep-alive (`keepalive_interval_ms`), so this is off by default.
    pub keepalive_ms: Option<u64>,
    /// `SO_LINGER`; `None` keeps the default (close returns at once).
    pub linger_ms: Option<u64>,
    /// `SO_REUSEPORT` on listeners (Unix): each server worker binds its own
    /// listener to the same address. Default on; with it off the server runs
    /// one worker.
    pub reuseport: bool,
    /// `TCP_DEFER_ACCEPT` on listeners (Linux only; ignored elsewhere): the
    /// kernel hands a connection to the server only once its first bytes
    /// (a client's HELLO and first request, which leave in one write) have
    /// arrived, or after this long (rounded up to whole seconds). A worker
    /// is then woken once per short connection instead of twice, and reads
    /// the request right after `accept`. A connection that says nothing is
    /// held by the kernel meanwhile, then handed over and closed by the
    /// handshake timeout as before. `None` turns it off. Default 1000 ms.
    pub defer_accept_ms: Option<u64>,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            nodelay: true,
            quickack: false,
            send_buffer_bytes: None,
            recv_buffer_bytes: None,
            keepalive_ms: None,
            linger_ms: None,
            reuseport: true,
            defer_accept_ms: Some(1000),
        }
    }
}

impl TcpOptions {
    /// Apply the per-connection options to a connected (or connecting) socket.
    pub(crate) fn apply(&self, s: SockRef<'_>) -> io::Result<()> {
        s.set_nodelay(self.nodelay)?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if self.quickack {
            s.set_quickack(true)?;
        }
        self.apply_buffers(&s)?;
        if let Some(ms) = self.keepalive_ms {
            s.set_tcp_keepalive(&TcpKeepalive::new().with_time(Duration::from_millis(ms)))?;
        }
        if let Some(ms) = self.linger_ms {
            s.set_linger(Some(Duration::from_millis(ms)))?;
        }
        Ok(())
    }

    /// Buffer sizes (also set on listeners, so accepted sockets inherit them
    /// before the handshake's window is negotiated).
    pub(crate) fn apply_buffers(&self, s: &SockRef<'_>) -> io::Result<()> {
        if let Some(n) = self.send_buffer_bytes {
            s.set_send_buffer_size(n)?;
        }
        if let Some(n) = self.recv_buffer_bytes {
            s.set_recv_buffer_size(n)?;
        }
        Ok(())
    }
}

/// Settings of a [`Client`](crate::Client).
///
/// ```
/// let mut config = mf_driver_mio::ClientConfig::default();
/// config.protocol.resume_timeout_ms = 10_000;
/// config.tcp.nodelay = true;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Protocol limits and timers.
    pub protocol: Config,
    /// Socket options.
    pub tcp: TcpOptions,
    /// Write batching for one-way messages and `call_start`: output queued
    /// within this many microseconds of the previous write is held back and
    /// leaves together with what follows, in one `writev`, at most this much
    /// later. Anything a thread waits on (`call`, `Receipt::wait`,
    /// `PendingCall::wait`, `close`) is written at once. 0 writes every
    /// message at once. Default 200.
    pub write_batch_us: u64,
    /// A thread waiting for its call's response reads the socket itself
    /// when no other thread does, instead of being woken by the reactor
    /// thread (one context switch less per call). Default on.
    pub caller_reads: bool,
    /// Session seed; `None` (the default, and the only sane production
    /// choice) draws it from the operating system. Tests set it to replay.
    pub seed: Option<[u8; 32]>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            protocol: Config::default(),
            tcp: TcpOptions::default(),
            write_batch_us: 200,
            caller_reads: true,
            seed: None,
        }
    }
}

/// Settings of a [`Server`](crate::Server).
///
/// ```
/// let mut config = mf_driver_mio::ServerConfig::default();
/// config.workers = 2;
/// config.protocol.sessions_max = 50_000;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Protocol limits and timers. `sessions_max` and `handshakes_max` are
    /// server-wide: each worker gets an equal share (rounded up).
    pub protocol: Config,
    /// Socket options (listeners and accepted sockets).
    pub tcp: TcpOptions,
    /// Worker event loops; 0 (the default) means one per available core.
    pub workers: usize,
    /// Listen backlog of each worker's listener. Default 4096 (a burst of
    /// connects overflows smaller queues).
    pub backlog: u32,
    /// Bytes each worker reads per `read` call. Default 2 MiB (allocated
    /// zeroed, so only the pages reads touch become resident).
    pub read_buffer_bytes: usize,
    /// Write batching for the pull API (`respond`, `reject`, `send` from
    /// application threads): output queued within this many microseconds of
    /// the previous such write waits for the worker, which writes it with
    /// everything else for that connection in one `writev`. Handlers run by
    /// `serve` batch anyway. 0 writes at once. Default 200.
    pub write_batch_us: u64,
    /// Seed of the server's generators; `None` (the default) draws it from
    /// the operating system.
    pub seed: Option<[u8; 32]>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            protocol: Config::default(),
            tcp: TcpOptions::default(),
            workers: 0,
            backlog: 4096,
            read_buffer_bytes: 2 << 20,
            write_batch_us: 200,
            seed: None,
        }
    }
}

/// Seeds fetched from the operating system per `getrandom` call.
const SEEDS_PER_FILL: usize = 32;

/// Seeds drawn from the OS, not yet handed out (a connect-call-close client
/// would otherwise pay one `getrandom` call per connection).
static SEED_POOL: std::sync::Mutex<([[u8; 32]; SEEDS_PER_FILL], usize)> =
    std::sync::Mutex::new(([[0; 32]; SEEDS_PER_FILL], 0));

/// A seed from the operating system's generator: every byte comes from it,
/// fetched in bulk; each seed is handed out once and wiped from the pool.
pub(crate) fn os_seed() -> io::Result<[u8; 32]> {
    let mut pool = SEED_POOL.lock().unwrap_or_else(|p| p.into_inner());
    let (seeds, left) = &mut *pool;
    if *left == 0 {
        getrandom::fill(seeds.as_flattened_mut())
            .map_err(|e| io::Error::other(format!("OS randomness unavailable: {e}")))?;
        *left = SEEDS_PER_FILL;
    }
    *left -= 1;
    Ok(std::mem::take(&mut seeds[*left]))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Every option lands on the socket.
    #[test]
    fn tcp_options_are_applied() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let o = TcpOptions {
            quickack: true,
            send_buffer_bytes: Some(256 << 10),
            recv_buffer_bytes: Some(128 << 10),
            keepalive_ms: Some(30_000),
            linger_ms: Some(2_000),
            ..TcpOptions::default()
        };
        o.apply(SockRef::from(&s)).unwrap();
        let r = SockRef::from(&s);
        assert!(r.nodelay().unwrap());
        assert!(r.keepalive().unwrap());
        assert_eq!(r.keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(r.linger().unwrap(), Some(Duration::from_secs(2)));
        // The kernel may round buffer sizes up (Linux doubles them).
        assert!(r.send_buffer_size().unwrap() >= 256 << 10);
        assert!(r.recv_buffer_size().unwrap() >= 128 << 10);
        let off = TcpOptions { nodelay: false, ..TcpOptions::default() };
        off.apply(SockRef::from(&s)).unwrap();
        assert!(!SockRef::from(&s).nodelay().unwrap());
    }
}
