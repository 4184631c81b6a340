//! Sockets with the bench's knobs applied, and a tokio transport that counts
//! its system calls exactly.
//!
//! `mf-driver-tokio` is generic over [`Connect`]/[`Listen`]; the bench plugs
//! in [`CountingConnector`] and [`CountingListener`] so that mf-tokio and
//! raw-tokio get the same socket options and the same syscall accounting.
//! Each read or write is one `poll_*_ready` followed by one `try_*` call, so
//! every system call made (including those that find the socket not ready)
//! is counted once.

use crate::bench::harness::IoCounters;
use mf_driver_tokio::transport::{Connect, Listen, Stream};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::io::{self, IoSlice, Read};
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Listen backlog of every bench listener (as C8 asks of the product).
pub const BACKLOG: i32 = 4096;

/// The TCP knobs the bench turns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Knobs {
    /// `TCP_NODELAY`.
    pub nodelay: bool,
    /// `TCP_QUICKACK`, set once on each new socket (Linux).
    pub quickack: bool,
    /// `SO_SNDBUF`; `None` keeps the kernel's default and autotuning.
    pub send_buffer_bytes: Option<usize>,
    /// `SO_RCVBUF`; `None` keeps the kernel's default and autotuning.
    pub recv_buffer_bytes: Option<usize>,
    /// Write batching: the drivers' `write_batch_us` (0 when off), a buffered
    /// writer that flushes once per burst (raw systems). Off: one write per
    /// message.
    pub batching: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            nodelay: true,
            quickack: false,
            send_buffer_bytes: None,
            recv_buffer_bytes: None,
            batching: true,
        }
    }
}

impl Knobs {
    /// Buffer sizes (before connect or listen, so the window scale fits).
    pub fn apply_buffers(&self, s: &SockRef<'_>) -> io::Result<()> {
        if let Some(n) = self.send_buffer_bytes {
            s.set_send_buffer_size(n)?;
        }
        if let Some(n) = self.recv_buffer_bytes {
            s.set_recv_buffer_size(n)?;
        }
        Ok(())
    }

    /// Per-connection options, on a connected socket.
    pub fn apply_conn(&self, s: &SockRef<'_>) -> io::Result<()> {
        s.set_nodelay(self.nodelay)?;
        #[cfg(target_os = "linux")]
        if self.quickack {
            s.set_quickack(true)?;
        }
        Ok(())
    }

    /// The same options for mf-driver-mio.
    pub fn mio_tcp(&self) -> mf_driver_mio::TcpOptions {
        let mut t = mf_driver_mio::TcpOptions::default();
        t.nodelay = self.nodelay;
        t.quickack = self.quickack;
        t.send_buffer_bytes = self.send_buffer_bytes;
        t.recv_buffer_bytes = self.recv_buffer_bytes;
        // One worker per server in the bench: no second listener needed.
        t.reuseport = false;
        t
    }
}

/// A listening socket with the knobs' buffers and a deep backlog.
pub fn listen(addr: SocketAddr, knobs: &Knobs) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    knobs.apply_buffers(&SockRef::from(&s))?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// A blocking connected socket with the knobs applied.
pub fn connect_std(addr: SocketAddr, knobs: &Knobs) -> io::Result<std::net::TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    knobs.apply_buffers(&SockRef::from(&s))?;
    s.connect_timeout(&addr.into(), Duration::from_secs(10))?;
    knobs.apply_conn(&SockRef::from(&s))?;
    // A lost reply must end the run, not hang it.
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s.into())
}

/// Opens counted connections to one address.
#[derive(Clone)]
pub struct CountingConnector {
    addr: SocketAddr,
    knobs: Knobs,
    counters: Arc<IoCounters>,
}

impl CountingConnector {
    /// Connect to `addr` with `knobs`, counting into `counters`.
    pub fn new(addr: SocketAddr, knobs: Knobs, counters: Arc<IoCounters>) -> Self {
        CountingConnector { addr, knobs, counters }
    }
}

impl Connect for CountingConnector {
    type Stream = CountingStream;
    async fn connect(&self) -> io::Result<CountingStream> {
        let sock = match self.addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        self.knobs.apply_buffers(&SockRef::from(&sock))?;
        let s = sock.connect(self.addr).await?;
        self.knobs.apply_conn(&SockRef::from(&s))?;
        Ok(CountingStream { inner: Arc::new(s), counters: self.counters.clone() })
    }
}

/// Accepts counted connections.
pub struct CountingListener {
    inner: tokio::net::TcpListener,
    knobs: Knobs,
    counters: Arc<IoCounters>,
}

impl CountingListener {
    /// Bind `addr` (inside a tokio runtime).
    pub fn bind(addr: SocketAddr, knobs: Knobs, counters: Arc<IoCounters>) -> io::Result<Self> {
        let l = listen(addr, &knobs)?;
        l.set_nonblocking(true)?;
        Ok(CountingListener { inner: tokio::net::TcpListener::from_std(l)?, knobs, counters })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Accept one connection (also for the raw-tokio server).
    pub async fn accept_counted(&self) -> io::Result<CountingStream> {
        let (s, _) = self.inner.accept().await?;
        // A peer that already reset fails on its first read instead.
        let _ = self.knobs.apply_conn(&SockRef::from(&s));
        Ok(CountingStream { inner: Arc::new(s), counters: self.counters.clone() })
    }
}

impl Listen for CountingListener {
    type Stream = CountingStream;
    async fn accept(&mut self) -> io::Result<CountingStream> {
        self.accept_counted().await
    }
}

/// A TCP stream whose every read and write system call is counted.
pub struct CountingStream {
    inner: Arc<tokio::net::TcpStream>,
    counters: Arc<IoCounters>,
}

impl Stream for CountingStream {
    type Read = CountingRead;
    type Write = CountingWrite;
    fn into_split(self) -> (CountingRead, CountingWrite) {
        (
            CountingRead { inner: self.inner.clone(), counters: self.counters.clone() },
            CountingWrite { inner: self.inner, counters: self.counters },
        )
    }
}

/// The read half of a [`CountingStream`].
pub struct CountingRead {
    inner: Arc<tokio::net::TcpStream>,
    counters: Arc<IoCounters>,
}

/// The write half of a [`CountingStream`]; dropping it shuts down the
/// sending direction (as tokio's own write half does).
pub struct CountingWrite {
    inner: Arc<tokio::net::TcpStream>,
    counters: Arc<IoCounters>,
}

impl AsyncRead for CountingRead {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.inner.poll_read_ready(cx))?;
            self.counters.read();
            // As tokio's own `TcpStream::poll_read` does on epoll: a read
            // that returns less than the buffer has drained the socket, so
            // the readiness seen before it is cleared and the next poll
            // waits for epoll instead of making a `recv` that would return
            // EAGAIN. The read reports a short count as WouldBlock to
            // `try_io`, which clears exactly the readiness event it saw
            // before the read (a newer event is kept: no lost wake-up).
            let b = buf.initialize_unfilled();
            let len = b.len();
            let mut short = 0;
            let r = self.inner.try_io(Interest::READABLE, || {
                let n = (&*SockRef::from(&*self.inner)).read(b)?;
                if 0 < n && n < len {
                    short = n;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match r {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => {
                    buf.advance(short);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for CountingWrite {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            self.counters.wrote();
            match self.inner.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            self.counters.wrote();
            match self.inner.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(SockRef::from(&*self.inner).shutdown(Shutdown::Write))
    }
}

impl Drop for CountingWrite {
    fn drop(&mut self) {
        // The peer may be gone already; nothing to do about it here.
        let _ = SockRef::from(&*self.inner).shutdown(Shutdown::Write);
    }
}
