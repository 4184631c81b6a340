//! Socket plumbing shared by client and server: batched writes, bounded
//! reads, connects, per-thread read buffers, syscall counters.

use crate::config::TcpOptions;
use mf_core::TransmitBuf;
use rustix::buffer::spare_capacity;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendAncillaryBuffer, SendFlags, recv, sendmsg};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::io::{self, IoSlice};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

/// Slices handed to one `writev` (each 64 KiB fragment of a large body is
/// two: its header and its body, by reference).
const IOV_MAX: usize = 64;
/// Slices tried first.
const IOV_SHORT: usize = 8;

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

/// One `sendmsg` of everything `buf` holds (up to `IOV_MAX` slices; large
/// bodies go by reference). Never blocks, whatever the socket's mode
/// (`MSG_DONTWAIT`), and never raises SIGPIPE (`MSG_NOSIGNAL`).
pub(crate) fn write_once(fd: impl AsFd, buf: &mut TransmitBuf, stats: &mut IoStats) -> io::Result<Wrote> {
    // Small output (one buffer, or a few large bodies) fills a short array;
    // only a full one is redone with the long array (fewer stores per call).
    let mut short = [IoSlice::new(&[]); IOV_SHORT];
    let n = buf.io_slices(&mut short);
    let sent = if n < IOV_SHORT {
        send_slices(&fd, &short[..n], stats)
    } else {
        let mut long = [IoSlice::new(&[]); IOV_MAX];
        let n = buf.io_slices(&mut long);
        send_slices(&fd, &long[..n], stats)
    };
    match sent {
        Ok(0) => Err(io::ErrorKind::WriteZero.into()),
        Ok(k) => {
            stats.bytes_written += k as u64;
            buf.advance(k);
            Ok(Wrote::Progress)
        }
        Err(Errno::AGAIN) => Ok(Wrote::Blocked),
        Err(e) => Err(e.into()),
    }
}

fn send_slices(fd: &impl AsFd, iov: &[IoSlice<'_>], stats: &mut IoStats) -> Result<usize, Errno> {
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    loop {
        stats.write_syscalls += 1;
        match sendmsg(fd, iov, &mut SendAncillaryBuffer::default(), flags) {
            Err(Errno::INTR) => continue,
            r => return r,
        }
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

/// One `recv` that never blocks, whatever the socket's mode
/// (`MSG_DONTWAIT`), into `buf`'s spare capacity (`buf` is cleared first
/// and holds what was read). The buffer is never zeroed: only the pages
/// reads touch become resident.
pub(crate) fn read_once(fd: impl AsFd, buf: &mut Vec<u8>, stats: &mut IoStats) -> ReadOutcome {
    let r = recv_vec(&fd, buf, RecvFlags::DONTWAIT);
    stats.count_read(&r);
    r
}

/// As [`read_once`], not counted (see [`read_waiting`]).
pub(crate) fn read_now(fd: impl AsFd, buf: &mut Vec<u8>) -> ReadOutcome {
    recv_vec(&fd, buf, RecvFlags::DONTWAIT)
}

/// One `recv` with the socket's own mode: on a client's connected socket
/// (blocking mode) it waits for data. Not counted: the caller counts it
/// with [`IoStats::count_read`] once it holds the stats' lock again.
pub(crate) fn read_waiting(fd: impl AsFd, buf: &mut Vec<u8>) -> ReadOutcome {
    recv_vec(&fd, buf, RecvFlags::empty())
}

/// At most `buf.len()` bytes without blocking (a HELLO completed in pieces).
pub(crate) fn read_exact_part(fd: impl AsFd, buf: &mut [u8], stats: &mut IoStats) -> ReadOutcome {
    let r = loop {
        break match recv(&fd, &mut *buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => ReadOutcome::Closed,
            Ok((n, _)) => ReadOutcome::Data(n),
            Err(Errno::AGAIN) => ReadOutcome::WouldBlock,
            Err(Errno::INTR) => continue,
            Err(_) => ReadOutcome::Closed,
        };
    };
    stats.count_read(&r);
    r
}

fn recv_vec(fd: &impl AsFd, buf: &mut Vec<u8>, flags: RecvFlags) -> ReadOutcome {
    buf.clear();
    loop {
        return match recv(fd, spare_capacity(buf), flags) {
            Ok((0, _)) => ReadOutcome::Closed,
            Ok((n, _)) => ReadOutcome::Data(n),
            Err(Errno::AGAIN) => ReadOutcome::WouldBlock,
            Err(Errno::INTR) => continue,
            Err(_) => ReadOutcome::Closed,
        };
    }
}

impl IoStats {
    /// Count one read that found `r`.
    pub(crate) fn count_read(&mut self, r: &ReadOutcome) {
        self.read_syscalls += 1;
        if let ReadOutcome::Data(n) = r {
            self.bytes_read += *n as u64;
        }
    }
}

/// Start a non-blocking connect to `addr` with `tcp`'s options (the
/// socket is in non-blocking mode until [`set_blocking`]).
pub(crate) fn start_connect(addr: SocketAddr, tcp: &TcpOptions) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    tcp.apply(SockRef::from(&s))?;
    s.set_nonblocking(true)?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if in_progress(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

/// Connect to `addr` with `tcp`'s options, waiting at most `timeout`; the
/// socket stays in blocking mode. On loopback this is three system calls
/// (socket, options, connect), as for a plain blocking connect: the bound
/// is `SO_SNDTIMEO`, which Linux applies to `connect` (every later write
/// is `MSG_DONTWAIT`, so it bounds nothing else).
pub(crate) fn connect_blocking(
    addr: SocketAddr,
    tcp: &TcpOptions,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    tcp.apply(SockRef::from(&s))?;
    s.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let until = std::time::Instant::now() + timeout;
    match s.connect(&addr.into()) {
        Ok(()) => return Ok(s.into()),
        // Interrupted: the connect goes on in the background; wait for it.
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) if in_progress(&e) => return Err(io::ErrorKind::TimedOut.into()),
        Err(e) => return Err(e),
    }
    let s: TcpStream = s.into();
    loop {
        if connect_finished(&s)? {
            return Ok(s);
        }
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let ts = Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos() as _ };
        let mut fds = [PollFd::new(&s, PollFlags::OUT)];
        match poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Put a connected socket in blocking mode (its reader may then wait in
/// `recv` itself; every other call passes `MSG_DONTWAIT`).
pub(crate) fn set_blocking(s: &TcpStream) -> io::Result<()> {
    s.set_nonblocking(false)
}

fn in_progress(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock
}

/// A connect that has not finished: `Ok(true)` once connected, `Ok(false)`
/// while pending, an error once it failed.
pub(crate) fn connect_finished(s: &TcpStream) -> io::Result<bool> {
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    match s.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// Wait until `s` is readable (or hung up), at most `timeout`. False if
/// the time ran out with nothing to read.
pub(crate) fn wait_readable(s: &TcpStream, timeout: Duration) -> bool {
    let ts = Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: timeout.subsec_nanos() as _ };
    let mut fds = [PollFd::new(s, PollFlags::IN)];
    // EINTR or an error only means one more round of the caller's loop.
    !matches!(poll(&mut fds, Some(&ts)), Ok(0))
}

/// Bytes of each thread's read buffer. Reads go into the buffer of the
/// thread that makes them (the reactor's, or an application thread's while
/// it leads), not into one per client: a thousand idle clients hold no read
/// buffers, and a large message arrives in few `recv` calls. The buffer is
/// never zeroed, so only the pages reads touch become resident. Larger
/// than a 1 MiB message with its frame headers, so such a message arrives
/// whole in one read and no fragment is split between reads (the core
/// copies a split fragment once more).
pub(crate) const READ_BUFFER_BYTES: usize = 2 << 20;

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` with this thread's read buffer (empty, with spare capacity).
/// Not re-entrant: a nested use gets a buffer of its own, never a panic.
pub(crate) fn with_read_buf<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    READ_BUF.with(|b| match b.try_borrow_mut() {
        Ok(mut b) => {
            if b.capacity() == 0 {
                *b = Vec::with_capacity(READ_BUFFER_BYTES);
            }
            f(&mut b)
        }
        Err(_) => f(&mut Vec::with_capacity(READ_BUFFER_BYTES)),
    })
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
    if let Some(ms) = tcp.defer_accept_ms {
        set_defer_accept(&s, ms)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(mio::net::TcpListener::from_std(s.into()))
}

/// `TCP_DEFER_ACCEPT` (see `TcpOptions::defer_accept_ms`), in whole seconds.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_defer_accept(s: &Socket, ms: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs: libc::c_int = ms.div_ceil(1000).min(libc::c_int::MAX as u64) as libc::c_int;
    // SAFETY: `s` is an open socket for the duration of the call, and the
    // option value is a `c_int` that lives across it, with its exact size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_defer_accept(_: &Socket, _: u64) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, not(loom), any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn defer_accept_secs(l: &mio::net::TcpListener) -> libc::c_int {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a live socket, and a `c_int` out-parameter with its size.
        let r = unsafe {
            libc::getsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0);
        v
    }

    /// Listeners defer accepting until a client's first bytes by default,
    /// and not at all when asked not to.
    #[test]
    fn listeners_defer_accept_by_default() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let on = listen(addr, &TcpOptions::default(), 16).unwrap();
        assert!(defer_accept_secs(&on) > 0);
        let off = listen(addr, &TcpOptions { defer_accept_ms: None, ..TcpOptions::default() }, 16).unwrap();
        assert_eq!(defer_accept_secs(&off), 0);
    }
}
