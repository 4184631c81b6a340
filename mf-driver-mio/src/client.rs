//! The blocking client: one session over a sequence of TCP connections.
//!
//! A [`Client`] is an `Arc` around one lock-protected state: the
//! [`mf_core::Client`], the current socket, its transmit buffer, the
//! completion slots of calls and receipts, and the lists of parked threads.
//! Application threads do their own I/O: a `call` queues the request, runs
//! the core's `poll_transmit` and writes the socket itself (one `writev`),
//! so a request leaves without waking any other thread, and the thread that
//! waits for the response reads it itself. The process-wide
//! [reactor](crate::reactor) thread waits for socket readiness, the core's
//! timers and reconnects of every client; it reads when no caller does,
//! feeds the core, and unparks exactly the threads whose call, receipt or
//! inbox changed.

use crate::config::{ClientConfig, TcpOptions, os_seed};
use crate::error::Error;
use crate::io::{IoStats, ReadOutcome, Wrote, connect_blocking, connect_finished, read_now, read_once};
use crate::io::{read_waiting, set_blocking, start_connect, wait_readable, with_read_buf, write_once};
use crate::reactor::{self, Reactor};
use crate::sync::{Mutex, MutexGuard, lock};
use crate::waiters::{Slots, Until, WaitList, wait_until};
use bytes::Bytes;
use mf_core::{ClientState, CloseReason, Event, FailReason, Failure, Fate, Incoming, Instant, MsgId, ReqId};
use mf_core::{SendError, Stats, TransmitBuf};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Reads per readiness event before yielding to timers and writers.
const READS_PER_EVENT: usize = 16;
/// Output gathered before a `writev`.
const FLUSH_BYTES: usize = 1 << 20;
/// Rounds of transmit/events per pump (each round drains everything ready;
/// more rounds only happen while events keep producing output).
const PUMP_ROUNDS_MAX: usize = 64;
/// While application threads are active, the reactor visits a client this
/// often (the core's acknowledgement delay is 1 ms by default), so callers
/// need not wake it for each such deadline; once a whole tick passed
/// without them, it watches the socket for reads again.
const TICK_MS: u64 = 1;
/// A leader with a deadline (a timed wait, or a call with a deadline)
/// re-checks its state at least this often, whatever happens to its socket.
const LEADER_SLICE_MS: u64 = 50;

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
    /// Shared with a leader reading it, so the descriptor stays open (and
    /// is not reused) until the leader is done with it. In blocking mode
    /// once connected: a leader waits in `recv` itself; every other read
    /// and write passes `MSG_DONTWAIT`.
    stream: Arc<TcpStream>,
    token: Token,
    /// Non-blocking connect in progress, to give up at this time.
    connecting: Option<Instant>,
    /// The last write would have blocked: wait for WRITABLE.
    blocked: bool,
    /// What the reactor's poller watches for now (`None`: not registered).
    /// Only what is needed: READABLE unless a caller leads, WRITABLE only
    /// while connecting or blocked, so no readiness edge wakes it for nothing.
    interest: Option<Interest>,
}

struct Env {
    /// See `ClientConfig::write_batch_us`.
    batch_us: u64,
    /// See `ClientConfig::caller_reads`.
    caller_reads: bool,
    reactor: Arc<Reactor>,
    /// This client's slot in the reactor.
    slot: usize,
    addrs: Vec<SocketAddr>,
    tcp: TcpOptions,
    // The reactor's view of this client, readable without its lock (a
    // visit to a busy client whose deadlines are not due takes no lock).
    /// An application thread did something since the reactor's last timer
    /// visit.
    busy: AtomicBool,
    /// When something must happen without socket input (µs): the core's
    /// next timer, a pending connect's or batch's deadline, a read to
    /// resume. Written under the lock.
    due_us: AtomicU64,
    /// When the reactor will visit next (µs; `u64::MAX`: not scheduled).
    scheduled_us: AtomicU64,
    /// Visits by the reactor thread, with or without the lock.
    visits: AtomicU64,
}

impl Env {
    fn now(&self) -> Instant {
        self.reactor.now()
    }

    /// Mark the client busy (application threads are using it).
    fn touch(&self) {
        self.busy.store(true, Ordering::Relaxed);
    }

    /// Ask the reactor to visit at `at` unless it already will by then.
    ///
    /// `due_us` and `scheduled_us` are written and read in sequentially
    /// consistent order: a thread that publishes a new deadline and then
    /// finds a visit already planned, and a reactor visit that forgets its
    /// plan and then reads the deadline, cannot both miss each other. (A
    /// miss would only delay that deadline to the next tick.)
    fn schedule(&self, at: Instant, precise: bool) {
        let at_us = at.as_micros();
        if at_us < self.scheduled_us.load(Ordering::SeqCst) {
            self.scheduled_us.fetch_min(at_us, Ordering::SeqCst);
            self.reactor.schedule(self.slot, at, precise);
        }
    }
}

/// The next tick after `now`: ticks fall on a shared grid, so the reactor
/// visits every busy client in one wake-up per tick.
fn next_tick(now: Instant) -> Instant {
    let tick_us = TICK_MS * 1000;
    Instant::from_micros((now.as_micros() / tick_us + 1) * tick_us)
}

struct State {
    core: mf_core::Client,
    conn: Option<Conn>,
    next_seq: u32,
    next_addr: usize,
    tx: TransmitBuf,
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
    /// The reactor keeps this client alive for a background close (its
    /// handles are gone): tell it when the session ends.
    held: bool,
    /// The last read filled the buffer: read again without waiting.
    read_more: bool,
    stats: IoStats,
    last_close: Option<CloseReason>,
    /// When output was last written.
    last_write_at: Instant,
    /// Output is being held back for a batch; it must leave by this time.
    flush_at: Option<Instant>,
    /// A caller is reading the socket itself (see `Shared::wait_call`).
    leading: bool,
    /// The reactor watches the socket for READABLE. Cleared while callers
    /// lead; restored once a whole tick passed without application
    /// activity, or at once when a leader stops while others wait. Off on
    /// the first connection until then, so a connect-call-close client
    /// never registers its socket at all.
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
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.env.reactor.remove(self.env.slot);
    }
}

/// Dropped with the last [`Client`] clone: starts a graceful close in the
/// background (queued messages still drain, within `close_timeout_ms`).
struct Handle {
    sh: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut st = lock(&self.sh.st);
        if st.ended.is_some() {
            // Closed already (the usual end of a connect-call-close client).
            return;
        }
        let now = self.sh.env.now();
        st.closing = true;
        st.core.close(now);
        st.pump(&self.sh.env, now, Flush::Now);
        // Drain in the background: the reactor keeps the session alive
        // until it has ended (within close_timeout_ms).
        st.schedule(&self.sh.env, now);
        if st.ended.is_none() {
            st.held = true;
            self.sh.env.reactor.hold(self.sh.env.slot, self.sh.clone());
        }
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
    /// The call has a deadline (the reactor may fail it without socket input).
    timed: bool,
    /// The client's write count when the request was queued: if it moved
    /// on, the request has been written, and waiting needs no flush.
    queued_at_write: u64,
}

/// The outcome of one sent message, to wait for or poll (contract C4).
/// Dropping it is fine: the message is still delivered.
pub struct Receipt {
    sh: Arc<Shared>,
    id: MsgId,
    /// As for [`PendingCall`].
    queued_at_write: u64,
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
        // The first connection is made here, blocking, so a wrong address
        // fails at once instead of after the resume timeout.
        let (stream, next_addr) = first_connect(&addrs, &config.tcp, connect_timeout)?;
        let reactor = reactor::get()?;
        let st = State {
            core,
            conn: None,
            next_seq: 0,
            next_addr,
            tx: TransmitBuf::new(),
            calls: Slots::new(),
            receipts: Slots::new(),
            readers: WaitList::default(),
            senders: WaitList::default(),
            closers: WaitList::default(),
            ended: None,
            closing: false,
            held: false,
            read_more: false,
            stats: IoStats::default(),
            last_close: None,
            last_write_at: Instant::ZERO,
            flush_at: None,
            leading: false,
            io_reads: false,
        };
        let sh = Arc::new_cyclic(|weak| {
            let slot = reactor.add(weak.clone());
            let env = Env {
                batch_us: config.write_batch_us,
                caller_reads: config.caller_reads,
                reactor,
                slot,
                addrs,
                tcp: config.tcp,
                busy: AtomicBool::new(true),
                due_us: AtomicU64::new(u64::MAX),
                scheduled_us: AtomicU64::new(u64::MAX),
                visits: AtomicU64::new(0),
            };
            Shared { st: Mutex::new(st), env }
        });
        {
            let env = &sh.env;
            let mut st = lock(&sh.st);
            let token = st.token(env);
            let stream = Arc::new(stream);
            // Not registered with the reactor yet (see `State::io_reads`).
            st.conn = Some(Conn { stream, token, connecting: None, blocked: false, interest: None });
            st.stats.connections += 1;
            // The HELLO is not written yet: it leaves with the first
            // message, in one write (or at the reactor's first visit).
            let now = env.now();
            st.core.connected(now);
            st.schedule(env, now);
        }
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
    /// goodbye to the server. `Ok` if the session
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
        let mut io = st.stats;
        io.wakeups = self.sh().env.visits.load(Ordering::Relaxed);
        ClientStats { session: st.core.stats().clone(), io, last_close: st.last_close }
    }

    /// Queue depths of the session (send queue, calls in flight, inbox, ...).
    pub fn queues(&self) -> mf_core::Queues {
        lock(&self.sh().st).core.queues()
    }

    /// Drop the current TCP connection as if the network had cut it (the
    /// session resumes on a new one). For fault-injection tests and demos.
    pub fn disconnect(&self) {
        let sh = self.sh();
        let mut st = lock(&sh.st);
        let now = sh.env.now();
        st.lose_conn(&sh.env, now);
        st.pump(&sh.env, now, Flush::Now);
        st.schedule(&sh.env, now);
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
        self.sh
            .wait_call(self.id, self.queued_at_write, Until::Forever, self.timed, &mut self.done)
            .unwrap_or(Err(Error::Timeout))
    }

    /// Wait at most `timeout`: `Error::Timeout` if the call is still in
    /// flight (it goes on; wait again later).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Bytes, Error> {
        self.sh
            .wait_call(self.id, self.queued_at_write, Until::after(Some(timeout)), self.timed, &mut self.done)
            .unwrap_or(Err(Error::Timeout))
    }

    /// The outcome if it has arrived, without waiting. Once taken, later
    /// calls return `None`.
    pub fn try_take(&mut self) -> Option<Result<Bytes, Error>> {
        if self.done {
            return None;
        }
        self.sh.wait_call(self.id, self.queued_at_write, Until::Now, self.timed, &mut self.done)
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
                st.schedule(&self.sh.env, now);
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
        g.flush_held(&sh.env, self.queued_at_write);
        let (_g, r) = wait_until(
            &sh.st,
            g,
            until,
            |st| {
                st.run_due_timers(&sh.env);
                st.receipts.peek(self.id).copied()
            },
            |st, t| {
                st.receipts.register(self.id, t);
                st.need_reads(&sh.env);
            },
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

fn first_connect(
    addrs: &[SocketAddr],
    tcp: &TcpOptions,
    timeout: Duration,
) -> Result<(TcpStream, usize), Error> {
    let mut last = None;
    for (i, addr) in addrs.iter().enumerate() {
        match connect_blocking(*addr, tcp, timeout) {
            Ok(s) => return Ok((s, i + 1)),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Io(last.unwrap_or_else(|| std::io::Error::other("no address"))))
}

fn lost(reason: CloseReason, fate: Fate) -> Failure {
    Failure { reason: FailReason::SessionLost(reason), fate }
}

impl Shared {
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
                    g.flush_held(&self.env, u64::MAX);
                    g.senders.add(crate::sync::current());
                    g.need_reads(&self.env);
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
        self.wait_call(p.id, p.queued_at_write, Until::Forever, p.timed, &mut p.done)
            .unwrap_or(Err(Error::Timeout))
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
        let env = &self.env;
        let deadline = timeout.map(|d| env.now() + d);
        let (mut g, id) = self.submit(body, Until::Forever, |st, b| st.core.call(channel, b, deadline))?;
        g.calls.open(id);
        env.touch();
        // Read before the pump: a write it makes includes this request.
        let queued_at_write = g.stats.write_syscalls;
        // A request joining a batch that already waits for its flush needs
        // no clock read, no write and no new visit (`core.call` raises no
        // events; the flush drains them). Anything else runs the pump.
        let joins_batch = flush == Flush::Batch && g.flush_at.is_some() && deadline.is_none();
        if !joins_batch {
            let now = env.now();
            g.pump(env, now, flush);
            g.schedule(env, now);
        }
        drop(g);
        Ok(PendingCall { sh: self.clone(), id, done: false, timed: deadline.is_some(), queued_at_write })
    }

    /// Wait for call `id`'s outcome; `None` if `until` passed first.
    /// `timed`: the call has a deadline of its own.
    fn wait_call(
        &self,
        id: ReqId,
        queued_at_write: u64,
        until: Until,
        timed: bool,
        done: &mut bool,
    ) -> Option<Result<Bytes, Error>> {
        let env = &self.env;
        let mut g = lock(&self.st);
        g.flush_held(env, queued_at_write);
        let mut waited = false;
        loop {
            // Pipelined calls usually find their answer already here.
            if let Some(r) = g.calls.take(id) {
                *done = true;
                return Some(r.map_err(Error::from_failure));
            }
            if waited {
                // The reactor runs the core's timers; a thread back from a
                // wait runs those already due, in case the reactor is late.
                g.run_due_timers(env);
                if let Some(r) = g.calls.take(id) {
                    *done = true;
                    return Some(r.map_err(Error::from_failure));
                }
            }
            let left = until.remaining();
            if left == Some(Duration::ZERO) {
                return None;
            }
            waited = true;
            let conn = g.conn.as_ref().filter(|c| c.connecting.is_none());
            let lead = conn.map(|c| (c.token, c.stream.clone())).filter(|_| env.caller_reads && !g.leading);
            if let Some((token, stream)) = lead {
                g = self.lead(g, token, &stream, left, timed);
                continue;
            }
            g.calls.register(id, crate::sync::current());
            g.need_reads(env);
            drop(g);
            crate::sync::park(left);
            g = lock(&self.st);
        }
    }

    /// Read the socket ourselves until something arrives ("leader"), so a
    /// response wakes the thread that waits for it, with no other thread
    /// involved. An untimed wait is one blocking `recv` (as raw blocking TCP
    /// does); nothing but socket input can end it early, because every
    /// other end of the wait shuts the socket down (a lost connection, the
    /// session's end, `disconnect`). A wait with a deadline (`left`, or
    /// the call's own) polls, at most until that deadline, the next core
    /// timer and one leader slice, then reads without blocking.
    fn lead<'a>(
        &'a self,
        mut g: MutexGuard<'a, State>,
        token: Token,
        stream: &TcpStream,
        left: Option<Duration>,
        timed: bool,
    ) -> MutexGuard<'a, State> {
        let env = &self.env;
        g.leading = true;
        g.set_io_reads(env, false);
        let poll_for = if left.is_none() && !timed {
            None
        } else {
            let now = env.now();
            let d = g.next_deadline();
            let mut t = Duration::from_millis(LEADER_SLICE_MS);
            if d != Instant::NEVER {
                t = t.min(d.saturating_since(now));
            }
            Some(left.map_or(t, |l| t.min(l)))
        };
        drop(g);
        with_read_buf(|buf| {
            let r = match poll_for {
                None => Some(read_waiting(stream, buf)),
                Some(t) => wait_readable(stream, t).then(|| read_now(stream, buf)),
            };
            let mut g = lock(&self.st);
            g.leading = false;
            g.stats.leader_waits += 1;
            if let Some(r) = &r {
                g.stats.count_read(r);
            }
            let now = env.now();
            // Bytes of a connection dropped meanwhile are not this session's
            // any more (the core resends what matters on the next one).
            if g.conn.as_ref().is_some_and(|c| c.token == token) {
                match r {
                    Some(ReadOutcome::Data(n)) => {
                        g.core.handle_input(now, &buf[..n]);
                        if n == buf.capacity() {
                            g.read_all(env, now, buf);
                        }
                    }
                    Some(ReadOutcome::Closed) => g.lose_conn(env, now),
                    Some(ReadOutcome::WouldBlock) | None => {}
                }
            }
            g.pump(env, now, Flush::Now);
            if g.calls.has_waiters()
                || g.receipts.has_waiters()
                || !g.readers.is_empty()
                || !g.closers.is_empty()
                || !g.senders.is_empty()
            {
                // Others wait for the socket: the reactor reads for them.
                g.set_io_reads(env, true);
            }
            // Otherwise the reactor restores its reads once callers are idle.
            env.touch();
            g.schedule(env, now);
            g
        })
    }

    fn send(self: &Arc<Self>, channel: u16, body: Bytes, until: Until) -> Result<Receipt, Error> {
        let (mut g, id) = self.submit(body, until, |st, b| st.core.send(channel, b))?;
        g.receipts.open(id);
        let now = self.env.now();
        self.env.touch();
        let queued_at_write = g.stats.write_syscalls;
        g.pump(&self.env, now, Flush::Batch);
        g.schedule(&self.env, now);
        drop(g);
        // A receipt keeps the shared state alive, not the handle: a receipt
        // alone does not keep the session open.
        Ok(Receipt { sh: self.clone(), id, queued_at_write })
    }

    fn recv(self: &Arc<Self>, until: Until) -> Result<Message, Error> {
        let g = lock(&self.st);
        let (_g, r) = wait_until(
            &self.st,
            g,
            until,
            |st| {
                let now = self.env.now();
                if let Some(m) = st.core.recv(now) {
                    // Taking a message may release credit to the server.
                    self.env.touch();
                    st.pump(&self.env, now, Flush::Batch);
                    st.schedule(&self.env, now);
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
            |st, t| {
                st.readers.add(t);
                st.need_reads(&self.env);
            },
        );
        r.unwrap_or(Err(Error::Timeout))
    }

    fn close(self: &Arc<Self>) -> Result<(), Error> {
        let mut g = lock(&self.st);
        let now = self.env.now();
        g.closing = true;
        // Blocked senders get their message back (`Closed`).
        g.senders.wake_all();
        g.core.close(now);
        g.pump(&self.env, now, Flush::Now);
        g.schedule(&self.env, now);
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
            |st, t| {
                st.closers.add(t);
                st.need_reads(&self.env);
            },
        );
        drop(g);
        match r {
            Some(reason) if reason.code == mf_core::CloseCode::Normal => Ok(()),
            Some(reason) => Err(Error::SessionLost { reason, fate: Fate::Unknown, message: None }),
            None => Err(Error::Timeout),
        }
    }
}

impl State {
    fn token(&mut self, env: &Env) -> Token {
        self.next_seq = self.next_seq.wrapping_add(1);
        reactor::token(env.slot, self.next_seq)
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

    /// Write output held back for a batch, unless a write was made since
    /// the awaited item was queued (then that item has left already; the
    /// rest of the batch keeps waiting for its flush).
    fn flush_held(&mut self, env: &Env, queued_at_write: u64) {
        if self.stats.write_syscalls > queued_at_write && queued_at_write != u64::MAX {
            return;
        }
        if self.flush_at.take().is_some() {
            let now = env.now();
            self.pump(env, now, Flush::Now);
            self.schedule(env, now);
        }
    }

    /// Run the core's timers if any is due (any thread may; the reactor
    /// is only the one that waits for them).
    fn run_due_timers(&mut self, env: &Env) {
        let now = env.now();
        if self.next_deadline() <= now {
            self.on_timers(env, now);
            self.pump(env, now, Flush::Now);
            self.schedule(env, now);
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

    /// Ask the reactor to visit when something is next due: a core timer, a
    /// pending connect's deadline, a batch's flush; within a tick while
    /// application threads are active or while nobody watches the socket
    /// for reads.
    fn schedule(&mut self, env: &Env, now: Instant) {
        let tick = env.busy.load(Ordering::Relaxed);
        self.schedule_with(env, now, tick);
    }

    fn schedule_with(&mut self, env: &Env, now: Instant, tick: bool) {
        if self.ended.is_some() {
            return;
        }
        let mut due = self.next_deadline();
        if self.read_more {
            due = now;
        }
        env.due_us.store(due.as_micros(), Ordering::SeqCst);
        let mut at = due;
        if tick || (!self.io_reads && !self.leading) {
            at = at.min(next_tick(now));
        }
        // A batch's flush is due on time; the core's timers tolerate slack.
        let precise = self.flush_at == Some(at);
        env.schedule(at, precise);
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
            let mut again = false;
            while let Some(e) = self.core.poll_event() {
                again |= self.on_event(env, now, e);
            }
            // Another round only if an event fed the core (a connection
            // closed or opened): completions and wake-ups make no output.
            if !again {
                break;
            }
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
            let max = self.core.config().transmit_bytes_max as usize;
            let mut drained = false;
            while self.tx.len() < FLUSH_BYTES {
                let before = self.tx.len();
                self.core.poll_transmit(now, &mut self.tx);
                // At most `transmit_bytes_max` per call, so less means the
                // core has nothing more now: no second call to find that out.
                if self.tx.len() - before < max {
                    drained = true;
                    break;
                }
            }
            if self.tx.is_empty() {
                return;
            }
            self.last_write_at = now;
            match write_once(&*c.stream, &mut self.tx, &mut self.stats) {
                Ok(Wrote::Progress) if drained && self.tx.is_empty() => return,
                Ok(Wrote::Progress) => {}
                Ok(Wrote::Blocked) => {
                    c.blocked = true;
                    if self.sync_interest(env).is_err() {
                        self.lose_conn(env, now);
                    }
                    return;
                }
                Err(_) => {
                    self.lose_conn(env, now);
                    return;
                }
            }
        }
    }

    /// Act on one event; true if that fed the core an input (it may have
    /// output now).
    fn on_event(&mut self, env: &Env, now: Instant, e: Event) -> bool {
        match e {
            Event::Response { id, body } => self.calls.complete(id, Ok(body)),
            Event::CallFailed { id, failure } => self.calls.complete(id, Err(failure)),
            Event::Delivered(id) => self.receipts.complete(id, Ok(())),
            Event::SendFailed { id, failure } => self.receipts.complete(id, Err(failure)),
            Event::Readable => self.readers.wake_all(),
            // Once per refusal episode: the refused senders try again.
            Event::SendRoom => self.senders.wake_all(),
            Event::ConnectionClosed { reason } => {
                self.last_close = Some(reason);
                // Say why (a CLOSE frame), best effort, then hang up.
                if let Some(c) = self.conn.as_mut().filter(|c| c.connecting.is_none()) {
                    self.core.poll_transmit(now, &mut self.tx);
                    if !self.tx.is_empty() {
                        let _ = write_once(&*c.stream, &mut self.tx, &mut self.stats);
                    }
                }
                self.drop_conn(env);
                self.core.connection_lost(now);
                return true;
            }
            Event::Reconnect => {
                self.reconnect(env, now);
                return true;
            }
            Event::SessionEnded { reason } => {
                self.ended = Some(reason);
                if self.held {
                    // One more visit lets the reactor release the client it
                    // keeps alive for this background close.
                    env.reactor.schedule(env.slot, Instant::ZERO, false);
                }
                self.drop_conn(env);
                // The core failed every pending item before this event; these
                // only catch what a future core might not.
                self.calls.complete_all(|| Err(lost(reason, Fate::Unknown)));
                self.receipts.complete_all(|| Err(lost(reason, Fate::Unknown)));
                self.readers.wake_all();
                self.senders.wake_all();
                self.closers.wake_all();
            }
            _ => {}
        }
        false
    }

    fn reconnect(&mut self, env: &Env, now: Instant) {
        self.drop_conn(env);
        let addr = env.addrs[self.next_addr % env.addrs.len()];
        self.next_addr = self.next_addr.wrapping_add(1);
        let timeout_ms = self.core.config().handshake_timeout_ms;
        let token = self.token(env);
        match start_connect(addr, &env.tcp) {
            Ok(stream) => {
                self.stats.connections += 1;
                let at = now.add_millis(timeout_ms);
                let stream = Arc::new(stream);
                // A reconnect is watched from the start (it needs WRITABLE anyway).
                self.io_reads = true;
                self.conn =
                    Some(Conn { stream, token, connecting: Some(at), blocked: false, interest: None });
                if self.sync_interest(env).is_err() {
                    self.drop_conn(env);
                    self.core.connect_failed(now);
                }
            }
            Err(_) => self.core.connect_failed(now),
        }
    }

    /// A thread is about to wait for something only socket input brings,
    /// without reading the socket itself: unless a leader reads, the reactor
    /// must (at once, not at its next idle tick).
    fn need_reads(&mut self, env: &Env) {
        if !self.leading && !self.io_reads {
            self.set_io_reads(env, true);
        }
    }

    /// Watch (or stop watching) the socket for READABLE in the reactor.
    fn set_io_reads(&mut self, env: &Env, on: bool) {
        if self.io_reads != on {
            self.io_reads = on;
            if self.sync_interest(env).is_err() {
                let now = env.now();
                self.lose_conn(env, now);
            }
        }
    }

    /// Make the reactor's registration match what the connection needs.
    fn sync_interest(&mut self, env: &Env) -> std::io::Result<()> {
        let io_reads = self.io_reads;
        let Some(c) = self.conn.as_mut() else { return Ok(()) };
        let want = match (c.connecting.is_some() || c.blocked, io_reads) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::WRITABLE),
            (false, true) => Some(Interest::READABLE),
            (false, false) => None,
        };
        if want == c.interest {
            return Ok(());
        }
        let fd = c.stream.as_raw_fd();
        let registry = env.reactor.registry();
        match (c.interest, want) {
            (None, Some(i)) => registry.register(&mut SourceFd(&fd), c.token, i)?,
            (Some(_), Some(i)) => registry.reregister(&mut SourceFd(&fd), c.token, i)?,
            (Some(_), None) => registry.deregister(&mut SourceFd(&fd))?,
            (None, None) => {}
        }
        c.interest = want;
        Ok(())
    }

    /// Close the socket and forget its unsent bytes (the core resends what
    /// matters after the next connect).
    fn drop_conn(&mut self, env: &Env) {
        if let Some(c) = self.conn.take() {
            if c.interest.is_some() {
                let _ = env.reactor.registry().deregister(&mut SourceFd(&c.stream.as_raw_fd()));
            }
            if self.leading {
                // Ends the leader's wait on this socket at once.
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
            }
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
                    // Blocking mode from now on: a leader waits in `recv`.
                    if set_blocking(&c.stream).is_err() {
                        self.lose_conn(env, now);
                        return;
                    }
                    self.core.connected(now);
                    if self.sync_interest(env).is_err() {
                        self.lose_conn(env, now);
                        return;
                    }
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
            if let Some(c) = self.conn.as_mut().filter(|c| c.blocked) {
                c.blocked = false;
                if self.sync_interest(env).is_err() {
                    self.lose_conn(env, now);
                    return;
                }
            }
        }
        // While a caller leads, it reads.
        if readable && !self.leading {
            with_read_buf(|buf| self.read_all(env, now, buf));
        }
    }

    /// Read until the socket is drained (bounded), feeding the core.
    fn read_all(&mut self, env: &Env, now: Instant, buf: &mut Vec<u8>) {
        self.read_more = false;
        for _ in 0..READS_PER_EVENT {
            let Some(c) = self.conn.as_mut().filter(|c| c.connecting.is_none()) else { return };
            match read_once(&*c.stream, buf, &mut self.stats) {
                ReadOutcome::Data(n) => {
                    self.core.handle_input(now, &buf[..n]);
                    if n < buf.capacity() {
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

impl Shared {
    /// The reactor's visit: socket readiness (`ev`) or a due timer (`None`).
    /// True once the session has ended.
    pub(crate) fn visit(&self, ev: Option<(Token, bool, bool)>) -> bool {
        let env = &self.env;
        env.visits.fetch_add(1, Ordering::Relaxed);
        let mut tick = false;
        if ev.is_none() {
            // The reactor consumed its entry for this client.
            env.scheduled_us.store(u64::MAX, Ordering::SeqCst);
            // Application threads were busy during the last tick: keep
            // ticking. Unless something is due, that needs no lock (the
            // threads at work are not held up by the reactor).
            tick = env.busy.swap(false, Ordering::AcqRel);
            if tick {
                let now = env.now();
                let due = env.due_us.load(Ordering::SeqCst);
                if now.as_micros() < due {
                    env.schedule(next_tick(now).min(Instant::from_micros(due)), false);
                    return false;
                }
            }
        }
        let mut st = lock(&self.st);
        let now = env.now();
        match ev {
            Some((token, readable, writable)) if st.conn.as_ref().is_some_and(|c| c.token == token) => {
                st.on_socket(env, now, readable, writable);
            }
            Some(_) => {}
            // After a whole tick without application threads, nobody leads
            // any more: read again (the registration reports data that
            // arrived meanwhile).
            None if !tick && !st.leading && !st.io_reads => st.set_io_reads(env, true),
            None => {}
        }
        if st.read_more && !st.leading {
            with_read_buf(|buf| st.read_all(env, now, buf));
        }
        st.on_timers(env, now);
        st.pump(env, now, Flush::Now);
        st.schedule_with(env, now, tick);
        st.ended.is_some()
    }
}
