//! The blocking client: one session over a sequence of TCP connections.
//!
//! A [`Client`] is an `Arc` around one lock-protected state: the
//! [`mf_core::Client`], the current socket, its transmit buffer, the
//! completion slots of calls and receipts, and the lists of parked threads.
//! Application threads do their own I/O: a `call` queues the request, runs
//! the core's `poll_transmit` and writes the socket itself (one `writev`),
//! so a request leaves without waking any other thread. One background I/O
//! thread per client waits in a mio `Poll` for socket readiness, the core's
//! timers and reconnects; it reads, feeds the core, and unparks exactly the
//! threads whose call, receipt or inbox changed.

use crate::config::{ClientConfig, TcpOptions, os_seed};
use crate::error::Error;
use crate::io::{IoStats, ReadOutcome, Wrote, connect_finished, read_once, start_connect, write_once};
use crate::sync::{Mutex, MutexGuard, lock};
use crate::waiters::{Slots, Until, WaitList, wait_until};
use bytes::Bytes;
use mf_core::{ClientState, CloseReason, Event, FailReason, Failure, Fate, Incoming, Instant, MsgId, ReqId};
use mf_core::{SendError, Stats, TransmitBuf};
use mio::{Events, Interest, Poll, Token, Waker};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const WAKER: Token = Token(0);
/// Bytes read per `read` call.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// Reads per readiness event before yielding to timers and writers.
const READS_PER_EVENT: usize = 16;
/// Output gathered before a `writev`.
const FLUSH_BYTES: usize = 1 << 20;
/// Rounds of transmit/events per pump (each round drains everything ready;
/// more rounds only happen while events keep producing output).
const PUMP_ROUNDS_MAX: usize = 64;
/// How late the I/O thread may run a timer: callers do not wake it for a
/// deadline less than this before its planned wake-up. Also the interval at
/// which it re-checks timers while traffic flows.
const TIMER_SLACK_MS: u64 = 1;

/// A message received from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its channel.
    pub channel: u16,
    /// Its body.
    pub body: Bytes,
}

/// Counters of a client: the session's protocol counters and the driver's
/// system calls.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ClientStats {
    /// The protocol core's counters (messages, resumes, retransmissions, ...).
    pub session: Stats,
    /// System calls and bytes.
    pub io: IoStats,
    /// Why the last connection closed, if one did.
    pub last_close: Option<CloseReason>,
}

struct Conn {
    stream: mio::net::TcpStream,
    token: Token,
    /// Non-blocking connect in progress, to give up at this time.
    connecting: Option<Instant>,
    /// The last write would have blocked: wait for WRITABLE.
    blocked: bool,
    /// Registered in the leader's poller.
    leader_registered: bool,
}

struct Env {
    /// See `ClientConfig::write_batch_us`.
    batch_us: u64,
    /// See `ClientConfig::caller_reads`.
    caller_reads: bool,
    /// The leader's own poller (see [`LeaderPoll`]) and how to wake it.
    leader_registry: mio::Registry,
    leader_waker: Waker,
    registry: mio::Registry,
    waker: Waker,
    addrs: Vec<SocketAddr>,
    tcp: TcpOptions,
    epoch: std::time::Instant,
}

impl Env {
    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
    }
}

struct State {
    core: mf_core::Client,
    conn: Option<Conn>,
    next_token: usize,
    next_addr: usize,
    tx: TransmitBuf,
    rbuf: Vec<u8>,
    calls: Slots<ReqId, Result<Bytes, Failure>>,
    receipts: Slots<MsgId, Result<(), Failure>>,
    /// Threads in `recv`.
    readers: WaitList,
    /// Threads waiting for send-queue room.
    senders: WaitList,
    /// Threads in `close` (waiting for the end).
    closers: WaitList,
    ended: Option<CloseReason>,
    /// `close` was called: refuse new work with `Closed`.
    closing: bool,
    /// When the I/O thread will wake by itself (`Instant::ZERO` while it is
    /// awake and will recompute).
    io_wake_at: Instant,
    /// An application thread did something since the I/O thread last looked.
    active: bool,
    /// The last read filled the buffer: read again without waiting.
    read_more: bool,
    stats: IoStats,
    last_close: Option<CloseReason>,
    /// When output was last written.
    last_write_at: Instant,
    /// Output is being held back for a batch; it must leave by this time.
    flush_at: Option<Instant>,
    /// A caller is reading the socket itself (see [`LeaderPoll`]).
    leading: bool,
    /// The leader has been woken since it started waiting.
    leader_kicked: bool,
    /// The I/O thread's poller watches the socket for READABLE. Cleared
    /// while callers lead; restored when nobody leads (see `io_loop`).
    io_reads: bool,
}

/// Whether a pump writes the socket now or may hold output back briefly so
/// that a burst of one-way messages leaves in one `writev` (P7).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Someone is about to wait for an answer: write now.
    Now,
    /// Write now only if nothing was written in the last `write_batch_us`.
    Batch,
}

pub(crate) struct Shared {
    st: Mutex<State>,
    env: Env,
    /// The I/O thread, started by the first operation that leaves work in
    /// the background (so a connect-call-close client never pays for it).
    io_thread: std::sync::Mutex<IoThread>,
    io_started: std::sync::atomic::AtomicBool,
    leader: std::sync::Mutex<LeaderPoll>,
}

enum IoThread {
    NotStarted(Poll),
    Running(#[allow(dead_code)] JoinHandle<()>),
    Failed,
}

/// The caller that waits for a response reads the socket itself (it is the
/// "leader"), so the response needs no wake-up hop through the I/O thread.
/// The leader waits in this second poller, where the socket is registered
/// for READABLE beside a waker; the I/O thread leaves reading to it while
/// it leads. One leader at a time; other waiters park as usual and are
/// unparked by whoever reads their response.
struct LeaderPoll {
    poll: Poll,
    events: Events,
}

/// Dropped with the last [`Client`] clone: starts a graceful close in the
/// background (queued messages still drain, within `close_timeout_ms`).
struct Handle {
    sh: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut st = lock(&self.sh.st);
        let now = self.sh.env.now();
        st.closing = true;
        st.core.close(now);
        st.pump(&self.sh.env, now, Flush::Now);
        let ended = st.ended.is_some();
        drop(st);
        if !ended {
            // Drain in the background.
            self.sh.ensure_io();
        }
        let _ = self.sh.env.waker.wake();
    }
}

/// A blocking MessageFirst client. Cheap to clone; every clone is the same
/// session, usable from many threads at once.
///
/// ```no_run
/// use mf_driver_mio::{Client, ClientConfig};
/// let client = Client::connect("127.0.0.1:7000", ClientConfig::default())?;
/// let answer = client.call("2+2")?;            // blocks until the response
/// client.send("fire and forget")?;              // blocks only while the queue is full
/// let receipt = client.send("tell me when it lands")?;
/// receipt.wait()?;                              // the server application took it
/// client.close()?;
/// # let _ = answer;
/// # Ok::<(), mf_driver_mio::Error>(())
/// ```
#[derive(Clone)]
pub struct Client {
    h: Arc<Handle>,
}

/// One channel of a client: the same operations, on channel `n`. Messages on
/// one channel arrive in order; channels do not wait for each other.
#[derive(Clone)]
pub struct Channel {
    client: Client,
    channel: u16,
}

/// A call in flight, from [`Client::call_start`]: many can be outstanding
/// from one thread (pipelining). Dropping it cancels the call.
pub struct PendingCall {
    sh: Arc<Shared>,
    id: ReqId,
    done: bool,
}

/// The outcome of one sent message, to wait for or poll (contract C4).
/// Dropping it is fine: the message is still delivered.
pub struct Receipt {
    sh: Arc<Shared>,
    id: MsgId,
}

impl Client {
    /// Connect to `addr` (every resolved address is tried in turn, now and
    /// on reconnects) and start a session. Returns once the TCP connection
    /// is open; the handshake leaves with the first operation's message,
    /// in the same write.
    pub fn connect(addr: impl ToSocketAddrs, config: ClientConfig) -> Result<Client, Error> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address")));
        }
        let seed = match config.seed {
            Some(s) => s,
            None => os_seed()?,
        };
        let core = mf_core::Client::new(config.protocol.clone(), seed)?;
        let connect_timeout = Duration::from_millis(config.protocol.handshake_timeout_ms);
        let poll = Poll::new()?;
        let leader_poll = Poll::new()?;
        let env = Env {
            batch_us: config.write_batch_us,
            caller_reads: config.caller_reads && cfg!(unix),
            leader_registry: leader_poll.registry().try_clone()?,
            leader_waker: Waker::new(leader_poll.registry(), WAKER)?,
            registry: poll.registry().try_clone()?,
            waker: Waker::new(poll.registry(), WAKER)?,
            addrs,
            tcp: config.tcp,
            epoch: std::time::Instant::now(),
        };
        // The first connection is made here, blocking, so a wrong address
        // fails at once instead of after the resume timeout.
        let (stream, next_addr) = first_connect(&env, connect_timeout)?;
        let mut st = State {
            core,
            conn: None,
            next_token: 1,
            next_addr,
            tx: TransmitBuf::new(),
            rbuf: vec![0; READ_BUFFER_BYTES],
            calls: Slots::new(),
            receipts: Slots::new(),
            readers: WaitList::default(),
            senders: WaitList::default(),
            closers: WaitList::default(),
            ended: None,
            closing: false,
            io_wake_at: Instant::ZERO,
            active: true,
            read_more: false,
            stats: IoStats::default(),
            last_close: None,
            last_write_at: Instant::ZERO,
            flush_at: None,
            leading: false,
            leader_kicked: false,
            io_reads: true,
        };
        let token = st.token();
        let mut stream = stream;
        env.registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        st.conn = Some(Conn { stream, token, connecting: None, blocked: false, leader_registered: false });
        st.stats.connections += 1;
        // The HELLO is not written yet: it waits (up to the timer slack) for
        // the first message, so both leave in one write.
        st.core.connected(env.now());
        st.register_leader(&env);
        let sh = Arc::new(Shared {
            st: Mutex::new(st),
            env,
            io_thread: std::sync::Mutex::new(IoThread::NotStarted(poll)),
            io_started: std::sync::atomic::AtomicBool::new(false),
            leader: std::sync::Mutex::new(LeaderPoll { poll: leader_poll, events: Events::with_capacity(4) }),
        });
        Ok(Client { h: Arc::new(Handle { sh }) })
    }

    fn sh(&self) -> &Arc<Shared> {
        &self.h.sh
    }

    /// The same operations on channel `channel`.
    pub fn channel(&self, channel: u16) -> Channel {
        Channel { client: self.clone(), channel }
    }

    /// Call on channel 0 and wait for the response, however long it takes
    /// (through reconnects; a lost session fails it).
    pub fn call(&self, request: impl Into<Bytes>) -> Result<Bytes, Error> {
        self.sh().call(0, request.into(), None)
    }

    /// Call on channel 0 with a deadline: `Error::Deadline` once `timeout` passes.
    pub fn call_timeout(&self, request: impl Into<Bytes>, timeout: Duration) -> Result<Bytes, Error> {
        self.sh().call(0, request.into(), Some(timeout))
    }

    /// Start a call on channel 0 without waiting for its response: many may
    /// be outstanding at once, and their requests leave batched (one
    /// `writev` for a burst). Blocks only while the calls in flight are at
    /// their limit. `timeout` bounds the call from now on.
    ///
    /// ```no_run
    /// # let client = mf_driver_mio::Client::connect("127.0.0.1:7000", Default::default())?;
    /// let pending: Vec<_> = (0..256).map(|i| client.call_start(format!("get {i}"), None)).collect::<Result<_, _>>()?;
    /// for p in pending {
    ///     let _response = p.wait()?;
    /// }
    /// # Ok::<(), mf_driver_mio::Error>(())
    /// ```
    pub fn call_start(
        &self,
        request: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<PendingCall, Error> {
        self.sh().call_start(0, request.into(), timeout)
    }

    /// Send on channel 0; blocks while the send queue is full.
    pub fn send(&self, message: impl Into<Bytes>) -> Result<Receipt, Error> {
        self.sh().send(0, message.into(), Until::Forever)
    }

    /// Send on channel 0, waiting at most `timeout` for queue room; the
    /// message comes back in `Error::Full` if there was none.
    pub fn send_timeout(&self, message: impl Into<Bytes>, timeout: Duration) -> Result<Receipt, Error> {
        self.sh().send(0, message.into(), Until::after(Some(timeout)))
    }

    /// Send on channel 0 without waiting: `Error::Full` hands the message
    /// back if the queue is full.
    pub fn try_send(&self, message: impl Into<Bytes>) -> Result<Receipt, Error> {
        self.sh().send(0, message.into(), Until::Now)
    }

    /// Take the next message from the server (any channel), waiting for one.
    /// After the session ended, `Error::SessionLost` once the inbox is empty.
    pub fn recv(&self) -> Result<Message, Error> {
        self.sh().recv(Until::Forever)
    }

    /// As [`Client::recv`], giving up with `Error::Timeout` after `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message, Error> {
        self.sh().recv(Until::after(Some(timeout)))
    }

    /// Take a message if one is waiting: `Error::Empty` otherwise.
    pub fn try_recv(&self) -> Result<Message, Error> {
        match self.sh().recv(Until::Now) {
            Err(Error::Timeout) => Err(Error::Empty),
            r => r,
        }
    }

    /// Close gracefully: no new work; wait until every sent message has its
    /// receipt and every call its answer (at most `close_timeout_ms`), say
    /// goodbye to the server, and stop the I/O thread. `Ok` if the session
    /// ended by this close; `Error::SessionLost` if it had ended otherwise.
    pub fn close(&self) -> Result<(), Error> {
        self.sh().close()
    }

    /// Where the session stands: connected, reconnecting, or ended (and why).
    pub fn state(&self) -> ClientState {
        lock(&self.sh().st).core.state()
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        let st = lock(&self.sh().st);
        ClientStats { session: st.core.stats().clone(), io: st.stats, last_close: st.last_close }
    }

    /// Queue depths of the session (send queue, calls in flight, inbox, ...).
    pub fn queues(&self) -> mf_core::Queues {
        lock(&self.sh().st).core.queues()
    }

    /// Drop the current TCP connection as if the network had cut it (the
    /// session resumes on a new one). For fault-injection tests and demos.
    pub fn disconnect(&self) {
        let sh = self.sh();
        sh.ensure_io();
        let mut st = lock(&sh.st);
        let now = sh.env.now();
        st.lose_conn(&sh.env, now);
        st.pump(&sh.env, now, Flush::Now);
        st.wake_io_if_needed(&sh.env, now);
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("state", &self.state()).finish()
    }
}

impl Channel {
    /// This channel's number.
    pub fn id(&self) -> u16 {
        self.channel
    }

    /// As [`Client::call`], on this channel.
    pub fn call(&self, request: impl Into<Bytes>) -> Result<Bytes, Error> {
        self.client.sh().call(self.channel, request.into(), None)
    }

    /// As [`Client::call_timeout`], on this channel.
    pub fn call_timeout(&self, request: impl Into<Bytes>, timeout: Duration) -> Result<Bytes, Error> {
        self.client.sh().call(self.channel, request.into(), Some(timeout))
    }

    /// As [`Client::call_start`], on this channel.
    pub fn call_start(
        &self,
        request: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<PendingCall, Error> {
        self.client.sh().call_start(self.channel, request.into(), timeout)
    }

    /// As [`Client::send`], on this channel.
    pub fn send(&self, message: impl Into<Bytes>) -> Result<Receipt, Error> {
        self.client.sh().send(self.channel, message.into(), Until::Forever)
    }

    /// As [`Client::send_timeout`], on this channel.
    pub fn send_timeout(&self, message: impl Into<Bytes>, timeout: Duration) -> Result<Receipt, Error> {
        self.client.sh().send(self.channel, message.into(), Until::after(Some(timeout)))
    }

    /// As [`Client::try_send`], on this channel.
    pub fn try_send(&self, message: impl Into<Bytes>) -> Result<Receipt, Error> {
        self.client.sh().send(self.channel, message.into(), Until::Now)
    }
}

impl PendingCall {
    /// The call's id within the session.
    pub fn id(&self) -> ReqId {
        self.id
    }

    /// Wait for the response (or the call's failure).
    pub fn wait(mut self) -> Result<Bytes, Error> {
        self.sh.wait_call(self.id, Until::Forever, &mut self.done).unwrap_or(Err(Error::Timeout))
    }

    /// Wait at most `timeout`: `Error::Timeout` if the call is still in
    /// flight (it goes on; wait again later).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Bytes, Error> {
        self.sh.wait_call(self.id, Until::after(Some(timeout)), &mut self.done).unwrap_or(Err(Error::Timeout))
    }

    /// The outcome if it has arrived, without waiting. Once taken, later
    /// calls return `None`.
    pub fn try_take(&mut self) -> Option<Result<Bytes, Error>> {
        if self.done {
            return None;
        }
        self.sh.wait_call(self.id, Until::Now, &mut self.done)
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if !self.done {
            let mut st = lock(&self.sh.st);
            st.calls.remove(self.id);
            if st.core.cancel(self.id) {
                let now = self.sh.env.now();
                st.pump(&self.sh.env, now, Flush::Batch);
                st.wake_io_if_needed(&self.sh.env, now);
            }
        }
    }
}

impl std::fmt::Debug for PendingCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCall").field("id", &self.id).finish()
    }
}

impl Receipt {
    /// The message's id within the session.
    pub fn id(&self) -> MsgId {
        self.id
    }

    /// Wait until the server application has taken the message (`Ok`), or
    /// the message failed (`Error::SessionLost` with its fate).
    pub fn wait(self) -> Result<(), Error> {
        self.wait_until(Until::Forever)
    }

    /// As [`Receipt::wait`], giving up with `Error::Timeout` after `timeout`
    /// (the receipt may still come later).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.wait_until(Until::after(Some(timeout)))
    }

    /// The outcome if it is known: `Some(Ok(()))` once delivered,
    /// `Some(Err(failure))` if it failed, `None` while in flight.
    pub fn poll(&self) -> Option<Result<(), Failure>> {
        let st = lock(&self.sh.st);
        st.receipts.peek(self.id).copied()
    }

    fn wait_until(&self, until: Until) -> Result<(), Error> {
        let sh = &self.sh;
        let mut g = lock(&sh.st);
        g.flush_held(&sh.env);
        let (_g, r) = wait_until(
            &sh.st,
            g,
            until,
            |st| {
                st.run_due_timers(&sh.env);
                st.receipts.peek(self.id).copied()
            },
            |st, t| st.receipts.register(self.id, t),
        );
        match r {
            None => Err(Error::Timeout),
            Some(Ok(())) => Ok(()),
            Some(Err(f)) => Err(Error::from_failure(f)),
        }
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        lock(&self.sh.st).receipts.remove(self.id);
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt").field("id", &self.id).finish()
    }
}

fn first_connect(env: &Env, timeout: Duration) -> Result<(mio::net::TcpStream, usize), Error> {
    let mut last = None;
    for (i, addr) in env.addrs.iter().enumerate() {
        let s = socket2::Socket::new(socket2::Domain::for_address(*addr), socket2::Type::STREAM, None)?;
        env.tcp.apply(socket2::SockRef::from(&s))?;
        match s.connect_timeout(&(*addr).into(), timeout) {
            Ok(()) => {
                s.set_nonblocking(true)?;
                return Ok((mio::net::TcpStream::from_std(s.into()), i + 1));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Io(last.unwrap_or_else(|| std::io::Error::other("no address"))))
}

fn lost(reason: CloseReason, fate: Fate) -> Failure {
    Failure { reason: FailReason::SessionLost(reason), fate }
}

impl Shared {
    /// Start the I/O thread if it is not running yet.
    fn ensure_io(self: &Arc<Self>) {
        if self.io_started.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut io = self.io_thread.lock().unwrap_or_else(|p| p.into_inner());
        if let IoThread::NotStarted(_) = &*io {
            let IoThread::NotStarted(poll) = std::mem::replace(&mut *io, IoThread::Failed) else { return };
            let sh = self.clone();
            let spawned = std::thread::Builder::new()
                .name("mf-client-io".into())
                .stack_size(256 << 10)
                .spawn(move || io_loop(sh, poll));
            match spawned {
                Ok(t) => *io = IoThread::Running(t),
                Err(_) => {
                    // No thread: the session cannot run its timers. End it
                    // explicitly rather than let waits hang.
                    drop(io);
                    let mut st = lock(&self.st);
                    let now = self.env.now();
                    st.closing = true;
                    st.core.close(now);
                    st.pump(&self.env, now, Flush::Now);
                }
            }
        }
        self.io_started.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Wait for send-queue room while the core refuses with `Full`.
    fn submit<T>(
        &self,
        mut body: Bytes,
        until: Until,
        mut op: impl FnMut(&mut State, Bytes) -> Result<T, SendError>,
    ) -> Result<(MutexGuard<'_, State>, T), Error> {
        let mut g = lock(&self.st);
        loop {
            if let Some(reason) = g.ended {
                return Err(Error::SessionLost { reason, fate: Fate::NotDelivered, message: Some(body) });
            }
            if g.closing {
                return Err(Error::Closed(body));
            }
            match op(&mut g, body) {
                Ok(t) => return Ok((g, t)),
                Err(SendError::Full(b)) => {
                    body = b;
                    let left = until.remaining();
                    if left == Some(Duration::ZERO) {
                        return Err(Error::Full(body));
                    }
                    g.flush_held(&self.env);
                    g.senders.add(crate::sync::current());
                    drop(g);
                    crate::sync::park(left);
                    g = lock(&self.st);
                }
                Err(e) => return Err(Error::from_send(e, g.ended)),
            }
        }
    }

    fn call(self: &Arc<Self>, channel: u16, body: Bytes, timeout: Option<Duration>) -> Result<Bytes, Error> {
        let mut p = self.call_start_with(channel, body, timeout, Flush::Now)?;
        self.wait_call(p.id, Until::Forever, &mut p.done).unwrap_or(Err(Error::Timeout))
    }

    fn call_start(
        self: &Arc<Self>,
        channel: u16,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<PendingCall, Error> {
        self.call_start_with(channel, body, timeout, Flush::Batch)
    }

    fn call_start_with(
        self: &Arc<Self>,
        channel: u16,
        body: Bytes,
        timeout: Option<Duration>,
        flush: Flush,
    ) -> Result<PendingCall, Error> {
        let deadline = timeout.map(|d| self.env.now() + d);
        let (mut g, id) = self.submit(body, Until::Forever, |st, b| st.core.call(channel, b, deadline))?;
        g.calls.open(id);
        let now = self.env.now();
        g.active = true;
        g.pump(&self.env, now, flush);
        g.wake_io_if_needed(&self.env, now);
        drop(g);
        // Started while the request is in flight, off the response's path.
        self.ensure_io();
        Ok(PendingCall { sh: self.clone(), id, done: false })
    }

    /// Wait for call `id`'s outcome; `None` if `until` passed first.
    fn wait_call(&self, id: ReqId, until: Until, done: &mut bool) -> Option<Result<Bytes, Error>> {
        let env = &self.env;
        let mut g = lock(&self.st);
        g.flush_held(env);
        loop {
            g.run_due_timers(env);
            if let Some(r) = g.calls.take(id) {
                *done = true;
                return Some(r.map_err(Error::from_failure));
            }
            let left = until.remaining();
            if left == Some(Duration::ZERO) {
                return None;
            }
            let conn = g.conn.as_ref().filter(|c| c.leader_registered && c.connecting.is_none());
            if let Some(token) = conn.map(|c| c.token).filter(|_| env.caller_reads && !g.leading) {
                // Lead: wait for the socket (or a deadline) ourselves.
                g.leading = true;
                g.leader_kicked = false;
                g.set_io_reads(env, false);
                let now = env.now();
                let d = g.next_deadline();
                let mut timeout = if d == Instant::NEVER { None } else { Some(d.saturating_since(now)) };
                if let Some(l) = left {
                    timeout = Some(timeout.map_or(l, |t| t.min(l)));
                }
                drop(g);
                {
                    let mut lp = self.leader.lock().unwrap_or_else(|p| p.into_inner());
                    let LeaderPoll { poll, events } = &mut *lp;
                    // An error (EINTR) only means one more round.
                    let _ = poll.poll(events, timeout);
                }
                g = lock(&self.st);
                // Reading to the end under the lock, before giving up the
                // lead, leaves nothing the I/O thread skipped meanwhile.
                g.leading = false;
                g.stats.leader_waits += 1;
                let now = env.now();
                if g.conn.as_ref().is_some_and(|c| c.token == token) {
                    g.read_all(env, now);
                    if g.read_more {
                        let _ = env.waker.wake();
                    }
                }
                g.pump(env, now, Flush::Now);
                if g.calls.has_waiters() || g.receipts.has_waiters() || !g.readers.is_empty() {
                    // Others wait for the socket: the I/O thread reads for them.
                    g.set_io_reads(env, true);
                } else if g.io_wake_at > now.add_millis(TIMER_SLACK_MS) {
                    // It restores its reads at its next wake-up: make that soon.
                    g.io_wake_at = Instant::ZERO;
                    let _ = env.waker.wake();
                }
                continue;
            }
            g.calls.register(id, crate::sync::current());
            drop(g);
            crate::sync::park(left);
            g = lock(&self.st);
        }
    }

    fn send(self: &Arc<Self>, channel: u16, body: Bytes, until: Until) -> Result<Receipt, Error> {
        let (mut g, id) = self.submit(body, until, |st, b| st.core.send(channel, b))?;
        g.receipts.open(id);
        let now = self.env.now();
        g.active = true;
        g.pump(&self.env, now, Flush::Batch);
        g.wake_io_if_needed(&self.env, now);
        drop(g);
        self.ensure_io();
        // A receipt keeps the shared state alive, not the handle: a receipt
        // alone does not keep the session open.
        Ok(Receipt { sh: self.clone(), id })
    }

    fn recv(self: &Arc<Self>, until: Until) -> Result<Message, Error> {
        self.ensure_io();
        let g = lock(&self.st);
        let (_g, r) = wait_until(
            &self.st,
            g,
            until,
            |st| {
                let now = self.env.now();
                if let Some(m) = st.core.recv(now) {
                    // Taking a message may release credit to the server.
                    st.active = true;
                    st.pump(&self.env, now, Flush::Batch);
                    st.wake_io_if_needed(&self.env, now);
                    let (channel, body) = match m {
                        Incoming::Message { channel, body } | Incoming::Request { channel, body, .. } => {
                            (channel, body)
                        }
                    };
                    return Some(Ok(Message { channel, body }));
                }
                if let Some(reason) = st.ended {
                    return Some(Err(Error::SessionLost { reason, fate: Fate::NotDelivered, message: None }));
                }
                st.run_due_timers(&self.env);
                None
            },
            |st, t| st.readers.add(t),
        );
        r.unwrap_or(Err(Error::Timeout))
    }

    fn close(self: &Arc<Self>) -> Result<(), Error> {
        let mut g = lock(&self.st);
        let now = self.env.now();
        g.closing = true;
        g.core.close(now);
        g.pump(&self.env, now, Flush::Now);
        g.wake_io_if_needed(&self.env, now);
        if g.ended.is_none() {
            // Draining takes time (receipts, answers, the close timer).
            drop(g);
            self.ensure_io();
            g = lock(&self.st);
        }
        let close_ms = g.core.config().close_timeout_ms;
        // The core ends the session within close_timeout_ms; the margin only
        // guards against a driver bug turning into a hang.
        let until = Until::after(Some(Duration::from_millis(close_ms.saturating_add(5_000))));
        let (g, r) = wait_until(
            &self.st,
            g,
            until,
            |st| {
                st.run_due_timers(&self.env);
                st.ended
            },
            |st, t| st.closers.add(t),
        );
        drop(g);
        // The I/O thread exits by itself once the session has ended; wake it
        // so it sees that now.
        let _ = self.env.waker.wake();
        match r {
            Some(reason) if reason.code == mf_core::CloseCode::Normal => Ok(()),
            Some(reason) => Err(Error::SessionLost { reason, fate: Fate::Unknown, message: None }),
            None => Err(Error::Timeout),
        }
    }
}

impl State {
    fn token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token = self.next_token.wrapping_add(1).max(1);
        t
    }

    /// The earliest time something must happen without socket input.
    fn next_deadline(&self) -> Instant {
        let mut d = self.core.poll_timeout().unwrap_or(Instant::NEVER);
        if let Some(at) = self.conn.as_ref().and_then(|c| c.connecting) {
            d = d.min(at);
        }
        if let Some(at) = self.flush_at {
            d = d.min(at);
        }
        d
    }

    /// Write output held back for a batch (someone is about to wait).
    fn flush_held(&mut self, env: &Env) {
        if self.flush_at.take().is_some() {
            let now = env.now();
            self.pump(env, now, Flush::Now);
        }
    }

    /// Run the core's timers if any is due (any thread may; the I/O thread
    /// is only the one that waits for them).
    fn run_due_timers(&mut self, env: &Env) {
        let now = env.now();
        if self.next_deadline() <= now {
            self.on_timers(env, now);
            self.pump(env, now, Flush::Now);
        }
    }

    fn on_timers(&mut self, env: &Env, now: Instant) {
        if self.conn.as_ref().and_then(|c| c.connecting).is_some_and(|at| at <= now) {
            self.drop_conn(env);
            self.core.connect_failed(now);
        }
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
    }

    /// After an application thread changed deadlines: wake the I/O thread
    /// only if it would otherwise sleep through one (by more than the slack).
    fn wake_io_if_needed(&mut self, env: &Env, now: Instant) {
        let d = self.next_deadline();
        let late = d.add_millis(TIMER_SLACK_MS) < self.io_wake_at
            || self.flush_at.is_some_and(|f| f < self.io_wake_at);
        if (late && self.io_wake_at != Instant::ZERO) || self.ended.is_some() {
            self.io_wake_at = Instant::ZERO;
            let _ = env.waker.wake();
        }
        let _ = now;
    }

    /// The driver loop contract: drain transmit, then events, until quiet.
    fn pump(&mut self, env: &Env, now: Instant, flush: Flush) {
        let hold = flush == Flush::Batch
            && env.batch_us > 0
            && now.saturating_since(self.last_write_at).as_micros() < env.batch_us as u128;
        if hold {
            // Written within the batch interval: leave the output for the
            // flush already due (or schedule one), so a burst shares one writev.
            if self.flush_at.is_none() {
                self.flush_at = Some(self.last_write_at + Duration::from_micros(env.batch_us));
            }
        } else {
            self.flush_at = None;
        }
        for _ in 0..PUMP_ROUNDS_MAX {
            if !hold {
                self.transmit(env, now);
            }
            let mut n = 0;
            while let Some(e) = self.core.poll_event() {
                n += 1;
                self.on_event(env, now, e);
            }
            if n == 0 {
                break;
            }
        }
        if !self.senders.is_empty() {
            self.senders.wake_all();
        }
    }

    /// Pull output from the core and write it, one `writev` per batch, until
    /// the core has nothing more or the socket is full.
    fn transmit(&mut self, env: &Env, now: Instant) {
        for _ in 0..1024 {
            let Some(c) = self.conn.as_mut() else { return };
            if c.connecting.is_some() || c.blocked {
                return;
            }
            while self.tx.len() < FLUSH_BYTES {
                let before = self.tx.len();
                self.core.poll_transmit(now, &mut self.tx);
                if self.tx.len() == before {
                    break;
                }
            }
            if self.tx.is_empty() {
                return;
            }
            self.last_write_at = now;
            match write_once(&c.stream, &mut self.tx, &mut self.stats) {
                Ok(Wrote::Progress) => {}
                Ok(Wrote::Blocked) => {
                    c.blocked = true;
                    return;
                }
                Err(_) => {
                    self.lose_conn(env, now);
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, env: &Env, now: Instant, e: Event) {
        match e {
            Event::Response { id, body } => self.calls.complete(id, Ok(body)),
            Event::CallFailed { id, failure } => self.calls.complete(id, Err(failure)),
            Event::Delivered(id) => self.receipts.complete(id, Ok(())),
            Event::SendFailed { id, failure } => self.receipts.complete(id, Err(failure)),
            Event::Readable => self.readers.wake_all(),
            Event::ConnectionClosed { reason } => {
                self.last_close = Some(reason);
                // Say why (a CLOSE frame), best effort, then hang up.
                if let Some(c) = self.conn.as_mut().filter(|c| c.connecting.is_none()) {
                    self.core.poll_transmit(now, &mut self.tx);
                    if !self.tx.is_empty() {
                        let _ = write_once(&c.stream, &mut self.tx, &mut self.stats);
                    }
                }
                self.drop_conn(env);
                self.core.connection_lost(now);
            }
            Event::Reconnect => self.reconnect(env, now),
            Event::SessionEnded { reason } => {
                self.ended = Some(reason);
                self.drop_conn(env);
                // The core failed every pending item before this event; these
                // only catch what a future core might not.
                self.calls.complete_all(|| Err(lost(reason, Fate::Unknown)));
                self.receipts.complete_all(|| Err(lost(reason, Fate::Unknown)));
                self.readers.wake_all();
                self.senders.wake_all();
                self.closers.wake_all();
                let _ = env.waker.wake();
            }
            _ => {}
        }
    }

    fn reconnect(&mut self, env: &Env, now: Instant) {
        self.drop_conn(env);
        let addr = env.addrs[self.next_addr % env.addrs.len()];
        self.next_addr = self.next_addr.wrapping_add(1);
        let timeout_ms = self.core.config().handshake_timeout_ms;
        let token = self.token();
        let r = start_connect(addr, &env.tcp).and_then(|mut stream| {
            env.registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
            Ok(stream)
        });
        match r {
            Ok(stream) => {
                self.stats.connections += 1;
                let at = now.add_millis(timeout_ms);
                self.conn = Some(Conn {
                    stream,
                    token,
                    connecting: Some(at),
                    blocked: false,
                    leader_registered: false,
                });
            }
            Err(_) => self.core.connect_failed(now),
        }
    }

    /// Let callers lead on the current (established) connection.
    fn register_leader(&mut self, env: &Env) {
        #[cfg(unix)]
        if let Some(c) = self.conn.as_mut().filter(|c| env.caller_reads && !c.leader_registered) {
            use std::os::fd::AsRawFd;
            let fd = c.stream.as_raw_fd();
            let r = env.leader_registry.register(&mut mio::unix::SourceFd(&fd), c.token, Interest::READABLE);
            c.leader_registered = r.is_ok();
        }
        let _ = env;
    }

    /// Watch (or stop watching) the socket for READABLE in the I/O thread.
    fn set_io_reads(&mut self, env: &Env, on: bool) {
        if self.io_reads == on {
            return;
        }
        let Some(c) = self.conn.as_mut().filter(|c| c.connecting.is_none()) else { return };
        let interest = if on { Interest::READABLE | Interest::WRITABLE } else { Interest::WRITABLE };
        if env.registry.reregister(&mut c.stream, c.token, interest).is_ok() {
            self.io_reads = on;
        }
    }

    /// Wake a leader waiting in its poller (its connection went away, or
    /// the session ended).
    fn kick_leader(&mut self, env: &Env) {
        if self.leading && !self.leader_kicked {
            self.leader_kicked = true;
            let _ = env.leader_waker.wake();
        }
    }

    /// Close the socket and forget its unsent bytes (the core resends what
    /// matters after the next connect).
    fn drop_conn(&mut self, env: &Env) {
        self.io_reads = true;
        if let Some(mut c) = self.conn.take() {
            let _ = env.registry.deregister(&mut c.stream);
            #[cfg(unix)]
            if c.leader_registered {
                use std::os::fd::AsRawFd;
                let fd = c.stream.as_raw_fd();
                let _ = env.leader_registry.deregister(&mut mio::unix::SourceFd(&fd));
            }
            self.kick_leader(env);
        }
        self.tx.clear();
        self.read_more = false;
    }

    /// The transport failed under us (EOF, reset, write error).
    fn lose_conn(&mut self, env: &Env, now: Instant) {
        let connecting = self.conn.as_ref().is_some_and(|c| c.connecting.is_some());
        let had = self.conn.is_some();
        self.drop_conn(env);
        if connecting {
            self.core.connect_failed(now);
        } else if had {
            self.core.connection_lost(now);
        }
    }

    /// Readiness of the current socket.
    fn on_socket(&mut self, env: &Env, now: Instant, readable: bool, writable: bool) {
        let Some(c) = self.conn.as_mut() else { return };
        if c.connecting.is_some() {
            match connect_finished(&c.stream) {
                Ok(true) => {
                    c.connecting = None;
                    self.core.connected(now);
                    self.register_leader(env);
                }
                Ok(false) => return,
                Err(_) => {
                    self.drop_conn(env);
                    self.core.connect_failed(now);
                    return;
                }
            }
        }
        if writable {
            if let Some(c) = self.conn.as_mut() {
                c.blocked = false;
            }
        }
        // While a caller leads, it reads (its poller saw this edge too).
        if readable && !self.leading {
            self.read_all(env, now);
        }
    }

    fn read_all(&mut self, env: &Env, now: Instant) {
        self.read_more = false;
        for _ in 0..READS_PER_EVENT {
            let Some(c) = self.conn.as_mut().filter(|c| c.connecting.is_none()) else { return };
            match read_once(&c.stream, &mut self.rbuf, &mut self.stats) {
                ReadOutcome::Data(n) => {
                    self.core.handle_input(now, &self.rbuf[..n]);
                    if n < self.rbuf.len() {
                        return;
                    }
                }
                ReadOutcome::WouldBlock => return,
                ReadOutcome::Closed => {
                    self.lose_conn(env, now);
                    return;
                }
            }
        }
        self.read_more = true;
    }
}

/// The background thread: waits for readiness and timers, reads, runs the
/// core's timers and reconnects. Exits once the session has ended.
fn io_loop(sh: Arc<Shared>, mut poll: Poll) {
    let mut events = Events::with_capacity(64);
    let env = &sh.env;
    loop {
        let timeout = {
            let mut st = lock(&sh.st);
            if st.ended.is_some() {
                return;
            }
            let now = env.now();
            let mut d = st.next_deadline();
            if st.read_more {
                d = now;
            }
            if st.active {
                // Traffic flows: look again soon (ack delay, the HELLO that
                // waited for a first message) instead of being woken for it.
                d = d.min(now.add_millis(TIMER_SLACK_MS));
                st.active = false;
            }
            st.io_wake_at = d.max(now);
            if d == Instant::NEVER { None } else { Some(d.saturating_since(now)) }
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                // The poller itself failed: nothing can wait for I/O any more.
                let mut st = lock(&sh.st);
                let now = env.now();
                st.closing = true;
                st.core.close(now);
                st.pump(env, now, Flush::Now);
                std::thread::sleep(Duration::from_millis(TIMER_SLACK_MS));
                continue;
            }
        }
        let mut st = lock(&sh.st);
        st.io_wake_at = Instant::ZERO;
        st.stats.wakeups += 1;
        let now = env.now();
        let current = st.conn.as_ref().map(|c| c.token);
        for ev in events.iter() {
            if ev.token() == WAKER || Some(ev.token()) != current {
                continue;
            }
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
            st.on_socket(env, now, readable, writable);
        }
        if !st.leading && !st.io_reads {
            // Nobody leads any more: read again (the re-registration reports
            // data that arrived meanwhile).
            st.set_io_reads(env, true);
        }
        if st.read_more && !st.leading {
            st.read_all(env, now);
        }
        st.on_timers(env, now);
        st.flush_at = None;
        st.pump(env, now, Flush::Now);
    }
}
