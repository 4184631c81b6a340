//! Socket plumbing shared by client and server: batched writes, bounded
//! reads, non-blocking connects, syscall counters.

use crate::config::TcpOptions;
use mf_core::TransmitBuf;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;

/// Slices handed to one `writev`.
const IOV_MAX: usize = 64;

/// Read and write system calls made by a client or a server, and the bytes
/// they moved. `writes / messages` is the P7 figure (<= 0.1 when pipelined).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IoStats {
    /// `read` calls (including those that found nothing).
    pub read_syscalls: u64,
    /// `write`/`writev` calls (including those that would block).
    pub write_syscalls: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Event-loop visits: server, returns from `poll`; client, visits by the reactor thread.
    pub wakeups: u64,
    /// Connections opened (client) or accepted (server).
    pub connections: u64,
    /// Client: waits in which the calling thread read the socket itself.
    pub leader_waits: u64,
}

impl IoStats {
    pub(crate) fn add(&mut self, o: &IoStats) {
        self.read_syscalls += o.read_syscalls;
        self.write_syscalls += o.write_syscalls;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.wakeups += o.wakeups;
        self.connections += o.connections;
        self.leader_waits += o.leader_waits;
    }
}

/// What one `writev` did.
pub(crate) enum Wrote {
    /// Some bytes left; the buffer may still hold more.
    Progress,
    /// The socket is full: wait for WRITABLE.
    Blocked,
}

/// One `writev` of everything `buf` holds (up to `IOV_MAX` slices).
pub(crate) fn write_once(mut w: impl Write, buf: &mut TransmitBuf, stats: &mut IoStats) -> io::Result<Wrote> {
    loop {
        let mut iov = [IoSlice::new(&[]); IOV_MAX];
        let n = buf.io_slices(&mut iov);
        stats.write_syscalls += 1;
        return match w.write_vectored(&iov[..n]) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => {
                stats.bytes_written += k as u64;
                buf.advance(k);
                Ok(Wrote::Progress)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Wrote::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

/// What one `read` found.
pub(crate) enum ReadOutcome {
    /// `n` bytes; if fewer than the buffer holds, the socket is drained.
    Data(usize),
    /// Nothing now.
    WouldBlock,
    /// The peer closed, or the socket failed.
    Closed,
}

pub(crate) fn read_once(mut r: impl Read, buf: &mut [u8], stats: &mut IoStats) -> ReadOutcome {
    loop {
        stats.read_syscalls += 1;
        return match r.read(buf) {
            Ok(0) => ReadOutcome::Closed,
            Ok(n) => {
                stats.bytes_read += n as u64;
                ReadOutcome::Data(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadOutcome::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => ReadOutcome::Closed,
        };
    }
}

/// Start a non-blocking connect to `addr` with `tcp`'s options.
pub(crate) fn start_connect(addr: SocketAddr, tcp: &TcpOptions) -> io::Result<mio::net::TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    tcp.apply(SockRef::from(&s))?;
    s.set_nonblocking(true)?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if in_progress(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(s.into()))
}

fn in_progress(e: &io::Error) -> bool {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        return true;
    }
    // Windows reports a pending connect as WSAEWOULDBLOCK.
    e.kind() == io::ErrorKind::WouldBlock
}

/// A connect that has not finished: `Ok(true)` once connected, `Ok(false)`
/// while pending, an error once it failed.
pub(crate) fn connect_finished(s: &mio::net::TcpStream) -> io::Result<bool> {
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    match s.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// A listener bound to `addr` with `SO_REUSEPORT` (so every worker can bind
/// its own) and a deep backlog.
pub(crate) fn listen(addr: SocketAddr, tcp: &TcpOptions, backlog: u32) -> io::Result<mio::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    if tcp.reuseport {
        s.set_reuse_port(true)?;
    }
    tcp.apply_buffers(&SockRef::from(&s))?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(mio::net::TcpListener::from_std(s.into()))
}
