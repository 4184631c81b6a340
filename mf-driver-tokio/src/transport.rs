//! The connect/listen abstraction the driver runs on.
//!
//! The driver needs three things from a transport: a way to open a byte
//! stream to the server ([`Connect`]), a way to accept streams
//! ([`Listen`]), and a stream it can split into an independent read half
//! and write half ([`Stream`]). Implemented for tokio's TCP here and for
//! `turmoil::net` behind the `turmoil` feature, so the same driver code runs
//! on real sockets and in deterministic simulation.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

/// Accept backlog of every listener this crate binds: a burst of connects
/// must not overflow it (tokio's default of 128 does).
pub const ACCEPT_BACKLOG: u32 = 4096;

/// A byte stream that splits into halves owned by different futures.
pub trait Stream: Send + 'static {
    /// The read half.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// The write half. Dropping it closes the sending direction.
    type Write: AsyncWrite + Unpin + Send + 'static;
    /// Split into owned halves.
    fn into_split(self) -> (Self::Read, Self::Write);
}

/// Opens connections to one server (the client side).
pub trait Connect: Send + Sync + 'static {
    /// The stream a connection yields.
    type Stream: Stream;
    /// Open a connection. The driver bounds the wait with the protocol's
    /// `handshake_timeout_ms`.
    fn connect(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Accepts connections (the server side).
pub trait Listen: Send + 'static {
    /// The stream a connection yields.
    type Stream: Stream;
    /// Wait for the next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

// --- tokio TCP -----------------------------------------------------------

impl Stream for tokio::net::TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn into_split(self) -> (Self::Read, Self::Write) {
        tokio::net::TcpStream::into_split(self)
    }
}

/// Connects over TCP to a fixed address, with `TCP_NODELAY` set (the driver
/// batches frames itself; Nagle would only add delay).
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use mf_driver_tokio::transport::{Connect, TcpConnector};
/// let stream = TcpConnector::new("127.0.0.1:7000".parse().unwrap()).connect().await?;
/// # drop(stream); Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TcpConnector {
    addr: SocketAddr,
}

impl TcpConnector {
    /// Connect to `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        TcpConnector { addr }
    }

    /// The server address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Connect for TcpConnector {
    type Stream = tokio::net::TcpStream;
    async fn connect(&self) -> io::Result<tokio::net::TcpStream> {
        let s = tokio::net::TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// A TCP listener bound with an accept backlog of [`ACCEPT_BACKLOG`].
/// Accepted streams have `TCP_NODELAY` set.
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
}

impl TcpListener {
    /// Bind `addr` (port 0 picks a free port) with `SO_REUSEADDR` and a
    /// backlog of [`ACCEPT_BACKLOG`].
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(TcpListener { inner: socket.listen(ACCEPT_BACKLOG)? })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Listen for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&mut self) -> io::Result<tokio::net::TcpStream> {
        let (s, _) = self.inner.accept().await?;
        // A failure here (the peer already reset) surfaces on the first read.
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

// --- turmoil -------------------------------------------------------------

#[cfg(feature = "turmoil")]
mod sim {
    use super::*;

    impl Stream for turmoil::net::TcpStream {
        type Read = turmoil::net::tcp::OwnedReadHalf;
        type Write = turmoil::net::tcp::OwnedWriteHalf;
        fn into_split(self) -> (Self::Read, Self::Write) {
            turmoil::net::TcpStream::into_split(self)
        }
    }

    /// Connects to a turmoil host by name and port.
    #[derive(Clone, Debug)]
    pub struct TurmoilConnector {
        host: String,
        port: u16,
    }

    impl TurmoilConnector {
        /// Connect to `host:port` inside the simulation.
        pub fn new(host: impl Into<String>, port: u16) -> Self {
            TurmoilConnector { host: host.into(), port }
        }
    }

    impl Connect for TurmoilConnector {
        type Stream = turmoil::net::TcpStream;
        fn connect(&self) -> impl Future<Output = io::Result<turmoil::net::TcpStream>> + Send {
            let addr = (self.host.clone(), self.port);
            async move { turmoil::net::TcpStream::connect((addr.0.as_str(), addr.1)).await }
        }
    }

    /// A listener inside the simulation.
    pub struct TurmoilListener {
        inner: turmoil::net::TcpListener,
    }

    impl TurmoilListener {
        /// Bind `0.0.0.0:port` on the current simulated host.
        pub async fn bind(port: u16) -> io::Result<Self> {
            let addr = SocketAddr::from(([0, 0, 0, 0], port));
            Ok(TurmoilListener { inner: turmoil::net::TcpListener::bind(addr).await? })
        }
    }

    impl Listen for TurmoilListener {
        type Stream = turmoil::net::TcpStream;
        async fn accept(&mut self) -> io::Result<turmoil::net::TcpStream> {
            Ok(self.inner.accept().await?.0)
        }
    }
}

#[cfg(feature = "turmoil")]
pub use sim::{TurmoilConnector, TurmoilListener};
