//! The blocking server: worker event loops, one per core, each with its own
//! `SO_REUSEPORT` listener, mio `Poll` and [`mf_core::Endpoint`].
//!
//! ## Resuming onto another worker
//!
//! The kernel spreads new connections across the workers' listeners by a
//! hash of their addresses, so a client that reconnects usually lands on a
//! different worker than the one holding its session. Sessions never move;
//! connections do:
//!
//! 1. every worker records `token -> worker` in a shared registry when a
//!    session comes up (`ServerEvent::SessionUp`) and removes it when the
//!    session ends;
//! 2. a new connection's first frame (the 80-byte HELLO) is routed with
//!    [`mf_core::wire::peek_hello`] before any endpoint sees it (the first
//!    read takes whatever is there; a HELLO that arrives in pieces is
//!    completed with exact reads, so a slow sender holds at most 80 bytes);
//! 3. a HELLO that resumes a session owned by another worker is handed to
//!    that worker, socket and bytes read so far, through the worker's
//!    hand-off queue and its mio `Waker`; the owner feeds the bytes to its
//!    endpoint as if it had read them itself. Anything else (a new session,
//!    an unknown token, garbage) goes to the accepting worker's endpoint,
//!    which answers or closes it with a typed reason.

use crate::config::{ServerConfig, TcpOptions, os_seed};
use crate::error::Error;
use crate::io::{IoStats, ReadOutcome, Wrote, listen, read_exact_part, read_once, write_once};
use crate::sync::{AtomicBool, AtomicU64, Mutex, MutexGuard, Ordering, lock};
use crate::waiters::{IdHasher, ReadySignal, Slots, Until, wait_until};
use bytes::Bytes;
use mf_core::wire::{HANDSHAKE_BODY_LEN, HEADER_LEN, peek_hello};
use mf_core::{ConnId, Endpoint, Event, Failure, Incoming, Instant, MsgId, ReqId, ServerEvent, SessionId};
use mf_core::{TransmitBuf, seed_from_u64};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::SockRef;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

const WAKER: Token = Token(0);
const LISTENER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// Bytes of a HELLO frame: read no further before routing a new connection.
const HELLO_FRAME_BYTES: usize = HEADER_LEN + HANDSHAKE_BODY_LEN;
/// Connections accepted per listener event before other work runs.
const ACCEPTS_PER_EVENT: usize = 256;
/// Reads per connection per readiness event.
const READS_PER_EVENT: usize = 8;
/// Output gathered for one connection before a `writev`.
const FLUSH_BYTES: usize = 1 << 20;
/// Inbound items handed to the handler per batch (responses to a batch
/// leave together, one `writev` per connection).
const HANDLER_BATCH_MAX: usize = 256;
/// Connections waiting in one worker's hand-off queue ...
const HANDOFF_QUEUE_MAX: usize = 4096;
/// ... and the bytes they carry (what was read with their HELLO).
const HANDOFF_BYTES_MAX: usize = 16 << 20;
/// Rounds of transmit/events per pump.
const PUMP_ROUNDS_MAX: usize = 64;
/// Timer slack, as in the client: application threads do not wake a worker
/// for a deadline less than this before its planned wake-up.
const TIMER_SLACK_MS: u64 = 1;
/// After `accept` fails (out of file descriptors), wait this long.
const ACCEPT_RETRY_MS: u64 = 10;
/// Reject code sent when the handler gives no response to a request, or the
/// response could not be queued.
pub const REJECT_NO_RESPONSE: u16 = 0xfff0;
/// Reject code sent when the handler panicked on the request.
pub const REJECT_HANDLER_PANICKED: u16 = 0xfff1;

/// A session held by a [`Server`]: which worker owns it, and its id there.
/// Stays valid across the session's reconnects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionRef {
    worker: u32,
    id: SessionId,
}

/// A message or request a client sent, as the server application sees it.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// The session it came from (answer it, or send to it, through this).
    pub session: SessionRef,
    /// Its channel.
    pub channel: u16,
    /// Its body.
    pub body: Bytes,
    id: Option<ReqId>,
}

impl Inbound {
    /// True for a request (it wants a response); false for a one-way message.
    pub fn is_request(&self) -> bool {
        self.id.is_some()
    }

    /// The request's id, for a request.
    pub fn request_id(&self) -> Option<ReqId> {
        self.id
    }
}

/// What a [`Server::serve`] handler answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The response body (ignored for one-way messages).
    Respond(Bytes),
    /// Refuse the request: the call fails with `Error::Rejected(code)`.
    Reject(u16),
    /// Nothing (one-way messages). A request answered with nothing is
    /// rejected with [`REJECT_NO_RESPONSE`], so no caller waits forever.
    Nothing,
}

impl From<Bytes> for Reply {
    fn from(b: Bytes) -> Reply {
        Reply::Respond(b)
    }
}
impl From<Vec<u8>> for Reply {
    fn from(b: Vec<u8>) -> Reply {
        Reply::Respond(b.into())
    }
}
impl From<&'static str> for Reply {
    fn from(b: &'static str) -> Reply {
        Reply::Respond(b.into())
    }
}
impl From<String> for Reply {
    fn from(b: String) -> Reply {
        Reply::Respond(b.into())
    }
}
impl From<()> for Reply {
    fn from(_: ()) -> Reply {
        Reply::Nothing
    }
}
impl<T: Into<Reply>> From<Option<T>> for Reply {
    fn from(o: Option<T>) -> Reply {
        o.map_or(Reply::Nothing, Into::into)
    }
}

type Handler = Arc<dyn Fn(Inbound) -> Reply + Send + Sync>;

/// Counters of a server, summed over its workers.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ServerStats {
    /// System calls and bytes.
    pub io: IoStats,
    /// Sessions alive.
    pub sessions: usize,
    /// Connections open (handshaking, bound or closing).
    pub connections: usize,
    /// Connections handed to another worker to resume their session there.
    pub handoffs: u64,
    /// Connections closed, by close code.
    pub closes: BTreeMap<u16, u64>,
    /// Messages, requests and responses received whole, all sessions.
    pub msgs_received: u64,
    /// Messages accepted by `send` and responses queued, all sessions.
    pub msgs_sent: u64,
}

struct ConnEntry {
    stream: TcpStream,
    conn: ConnId,
    /// `Some` until the first frame has been read and routed.
    hello: Option<Vec<u8>>,
    /// Unsent bytes, kept only while the socket is full.
    tx: TransmitBuf,
    blocked: bool,
    /// A write failed: report the connection lost at the next read pass.
    failed: bool,
}

struct WorkerState {
    ep: Endpoint,
    listener: Option<TcpListener>,
    conns: Vec<Option<ConnEntry>>,
    free: Vec<usize>,
    by_conn: HashMap<ConnId, usize, BuildHasherDefault<IdHasher>>,
    /// Live sessions' tokens (session ids are the endpoint's own: no
    /// keyed hash needed).
    tokens: HashMap<SessionId, mf_core::Token, BuildHasherDefault<IdHasher>>,
    scratch: TransmitBuf,
    rbuf: Vec<u8>,
    /// Connections whose last read filled the buffer.
    read_more: Vec<usize>,
    accept_more: bool,
    accept_retry_at: Instant,
    wake_at: Instant,
    stopping_at: Option<Instant>,
    stats: IoStats,
    handoffs: u64,
    closes: BTreeMap<u16, u64>,
    /// When an application thread (pull API) last wrote, and when output
    /// it left for the worker must leave (see `ServerConfig::write_batch_us`).
    app_write_at: Instant,
    flush_at: Option<Instant>,
    /// The latest time given to the endpoint, by any thread: times never
    /// go backwards, and the worker reads the clock once per wake-up.
    now: Instant,
    /// Counters of ended sessions, so totals survive them.
    msgs_received_ended: u64,
    msgs_sent_ended: u64,
    /// Outcomes of messages sent with [`Server::send`] whose receipt handle
    /// is alive.
    receipts: Slots<(SessionId, MsgId), Result<(), Failure>>,
}

struct Worker {
    idx: usize,
    st: Mutex<WorkerState>,
    waker: Waker,
    registry: mio::Registry,
    handoff: std::sync::Mutex<Vec<(TcpStream, Vec<u8>)>>,
}

struct ServerShared {
    workers: Vec<Arc<Worker>>,
    /// Session token -> the worker that holds the session.
    owners: std::sync::Mutex<HashMap<mf_core::Token, usize>>,
    stopping: AtomicBool,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
    local_addr: SocketAddr,
    tcp: TcpOptions,
    handler: OnceLock<Handler>,
    /// Pull-API readers wait here for any worker's inbox to fill.
    ready: ReadySignal,
    next_worker: AtomicU64,
    epoch: std::time::Instant,
    /// See `ServerConfig::write_batch_us`.
    batch_us: u64,
}

impl ServerShared {
    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
    }
}

struct ServerHandle {
    sh: Arc<ServerShared>,
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.sh.stop_and_join();
    }
}

/// A blocking MessageFirst server. Cheap to clone; dropping the last clone
/// shuts it down gracefully.
///
/// ```no_run
/// use mf_driver_mio::{Server, ServerConfig};
/// let server = Server::bind("127.0.0.1:7000", ServerConfig::default())?;
/// // Echo every request; one-way messages get no reply.
/// server.serve(|req| req.body)?; // returns after `shutdown`
/// # Ok::<(), mf_driver_mio::Error>(())
/// ```
#[derive(Clone)]
pub struct Server {
    h: Arc<ServerHandle>,
}

impl Server {
    /// Bind `addr` (port 0 picks one: see [`Server::local_addr`]) and start
    /// the workers. Until [`Server::serve`] installs a handler, incoming
    /// messages wait for the pull API ([`Server::recv`]).
    pub fn bind(addr: impl ToSocketAddrs, config: ServerConfig) -> Result<Server, Error> {
        config.protocol.validate()?;
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
        let n = match (config.tcp.reuseport, config.workers) {
            (false, _) => 1,
            (true, 0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
            (true, n) => n,
        };
        let mut protocol = config.protocol.clone();
        protocol.sessions_max = config.protocol.sessions_max.div_ceil(n as u32);
        protocol.handshakes_max = config.protocol.handshakes_max.div_ceil(n as u32);
        let seed = match config.seed {
            Some(s) => s,
            None => os_seed()?,
        };
        // The endpoints' start time: a client whose first handshake was cut
        // can then be told safely to create its session afresh.
        let epoch = std::time::Instant::now();
        let mut workers = Vec::with_capacity(n);
        let mut polls = Vec::with_capacity(n);
        let mut bound = addr;
        for idx in 0..n {
            let mut listener = listen(bound, &config.tcp, config.backlog)?;
            if idx == 0 {
                bound = listener.local_addr()?;
            }
            let poll = Poll::new()?;
            poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
            let mut wseed = seed;
            wseed[..8].copy_from_slice(&seed_from_u64(idx as u64)[..8]);
            for (a, b) in wseed.iter_mut().zip(seed.iter()) {
                *a ^= b.rotate_left(3);
            }
            let st = WorkerState {
                ep: Endpoint::new_at(protocol.clone(), wseed, Instant::ZERO)?,
                listener: Some(listener),
                conns: Vec::new(),
                free: Vec::new(),
                by_conn: HashMap::default(),
                tokens: HashMap::default(),
                scratch: TransmitBuf::new(),
                // Never zeroed: only the pages reads touch become resident.
                rbuf: Vec::with_capacity(config.read_buffer_bytes.max(HELLO_FRAME_BYTES)),
                read_more: Vec::new(),
                accept_more: false,
                accept_retry_at: Instant::ZERO,
                wake_at: Instant::ZERO,
                stopping_at: None,
                app_write_at: Instant::ZERO,
                flush_at: None,
                stats: IoStats::default(),
                handoffs: 0,
                closes: BTreeMap::new(),
                now: Instant::ZERO,
                msgs_received_ended: 0,
                msgs_sent_ended: 0,
                receipts: Slots::new(),
            };
            workers.push(Arc::new(Worker {
                idx,
                st: Mutex::new(st),
                waker: Waker::new(poll.registry(), WAKER)?,
                registry: poll.registry().try_clone()?,
                handoff: std::sync::Mutex::new(Vec::new()),
            }));
            polls.push(poll);
        }
        let sh = Arc::new(ServerShared {
            workers,
            owners: std::sync::Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            threads: std::sync::Mutex::new(Vec::new()),
            local_addr: bound,
            tcp: config.tcp.clone(),
            handler: OnceLock::new(),
            ready: ReadySignal::default(),
            next_worker: AtomicU64::new(0),
            epoch,
            batch_us: config.write_batch_us,
        });
        for (idx, poll) in polls.into_iter().enumerate() {
            let s = sh.clone();
            let t = std::thread::Builder::new()
                .name(format!("mf-server-{idx}"))
                .spawn(move || worker_loop(s, idx, poll))?;
            sh.threads.lock().unwrap_or_else(|p| p.into_inner()).push(t);
        }
        Ok(Server { h: Arc::new(ServerHandle { sh }) })
    }

    fn sh(&self) -> &Arc<ServerShared> {
        &self.h.sh
    }

    /// The address the listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.sh().local_addr
    }

    /// Worker event loops running.
    pub fn workers(&self) -> usize {
        self.sh().workers.len()
    }

    /// Run `handler` for every message and request, on the worker threads,
    /// until [`Server::shutdown`] (from another thread or from the handler)
    /// completes. For a request, the handler's [`Reply`] is the response.
    /// The handler runs without any lock held, so it may use this server
    /// (send to sessions, shut down). A handler that holds a `Server` clone
    /// keeps the server alive: stop it with `shutdown`, not by dropping.
    pub fn serve<F, R>(&self, handler: F) -> Result<(), Error>
    where
        F: Fn(Inbound) -> R + Send + Sync + 'static,
        R: Into<Reply>,
    {
        let h: Handler = Arc::new(move |i| handler(i).into());
        if self.sh().handler.set(h).is_err() {
            return Err(Error::Io(std::io::Error::other("serve called twice")));
        }
        for w in &self.sh().workers {
            let _ = w.waker.wake();
        }
        self.sh().join();
        Ok(())
    }

    /// Stop accepting, close every session gracefully (each drains within
    /// `close_timeout_ms`: in-flight work finishes or fails explicitly), and
    /// join the worker threads. Safe to call from a handler.
    pub fn shutdown(&self) {
        self.sh().stop_and_join();
    }

    /// Take the next message or request from any session, waiting for one.
    pub fn recv(&self) -> Result<Inbound, Error> {
        self.sh().recv(Until::Forever)
    }

    /// As [`Server::recv`], giving up with `Error::Timeout` after `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Inbound, Error> {
        self.sh().recv(Until::after(Some(timeout)))
    }

    /// Take a message or request if one is waiting: `Error::Empty` otherwise.
    pub fn try_recv(&self) -> Result<Inbound, Error> {
        match self.sh().recv(Until::Now) {
            Err(Error::Timeout) => Err(Error::Empty),
            r => r,
        }
    }

    /// Answer a request taken with `recv`. `Ok(false)` if it is no longer
    /// open (the client cancelled it or the session ended).
    pub fn respond(&self, request: &Inbound, body: impl Into<Bytes>) -> Result<bool, Error> {
        let Some(id) = request.id else { return Ok(false) };
        let body = body.into();
        self.sh().with_worker(request.session, |st, now| {
            st.ep.respond(now, request.session.id, id, body).map_err(|e| Error::from_send(e, None))
        })
    }

    /// Refuse a request taken with `recv`: the call fails with
    /// `Error::Rejected(code)`. False if it is no longer open.
    pub fn reject(&self, request: &Inbound, code: u16) -> bool {
        let Some(id) = request.id else { return false };
        self.sh().with_worker(request.session, |st, now| st.ep.reject(now, request.session.id, id, code))
    }

    /// Send a one-way message to a session's client. Refused (message
    /// returned) if its queue is full or the session is over. The receipt
    /// tells when the client application has taken it (C4).
    pub fn send(
        &self,
        session: SessionRef,
        channel: u16,
        body: impl Into<Bytes>,
    ) -> Result<ServerReceipt, Error> {
        let body = body.into();
        let id = self.sh().with_worker(session, |st, now| {
            let id = st.ep.send(now, session.id, channel, body)?;
            st.receipts.open((session.id, id));
            Ok(id)
        });
        let id = id.map_err(|e| Error::from_send(e, None))?;
        Ok(ServerReceipt { sh: self.sh().clone(), session, id })
    }

    /// Close one session gracefully.
    pub fn close_session(&self, session: SessionRef) {
        self.sh().with_worker(session, |st, now| {
            let _ = st.ep.close_session(now, session.id);
        });
    }

    /// Queue depths of one session, if it is alive.
    pub fn queues(&self, session: SessionRef) -> Option<mf_core::Queues> {
        let w = self.sh().workers.get(session.worker as usize)?;
        lock(&w.st).ep.queues(session.id)
    }

    /// Counters, summed over the workers.
    pub fn stats(&self) -> ServerStats {
        let mut s = ServerStats::default();
        for w in &self.sh().workers {
            let st = lock(&w.st);
            s.io.add(&st.stats);
            s.sessions += st.ep.session_count();
            s.connections += st.ep.connection_count();
            s.handoffs += st.handoffs;
            for (k, v) in &st.closes {
                *s.closes.entry(*k).or_default() += v;
            }
            s.msgs_received += st.msgs_received_ended;
            s.msgs_sent += st.msgs_sent_ended;
            for sid in st.tokens.keys() {
                if let Some(x) = st.ep.stats(*sid) {
                    s.msgs_received += x.msgs_received;
                    s.msgs_sent += x.msgs_sent;
                }
            }
        }
        s
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local_addr", &self.local_addr()).finish()
    }
}

impl ServerShared {
    fn stop_and_join(&self) {
        self.stopping.store(true, Ordering::Release);
        for w in &self.workers {
            let _ = w.waker.wake();
        }
        self.ready.wake_all();
        self.join();
    }

    fn join(&self) {
        let me = std::thread::current().id();
        loop {
            let t = {
                let mut ts = self.threads.lock().unwrap_or_else(|p| p.into_inner());
                let pos = ts.iter().position(|t| t.thread().id() != me);
                pos.map(|p| ts.swap_remove(p))
            };
            match t {
                Some(t) => {
                    let _ = t.join();
                }
                None => return,
            }
        }
    }

    /// Run `f` on the worker owning `session`, then write what it queued
    /// (from this thread: no hop) and re-arm the worker's timer if needed.
    fn with_worker<R>(&self, session: SessionRef, f: impl FnOnce(&mut WorkerState, Instant) -> R) -> R {
        let w = &self.workers[session.worker as usize];
        let mut st = lock(&w.st);
        let now = st.clock(self);
        let r = f(&mut st, now);
        self.flush_or_hold(w, &mut st, now);
        r
    }

    /// After an application thread (pull API) changed an endpoint: write
    /// now, or, within `write_batch_us` of its last write, leave the output
    /// to the worker, which writes it with everything else for the
    /// connection in one `writev` (application threads answering one request
    /// after another would otherwise write once each).
    fn flush_or_hold(&self, w: &Worker, st: &mut WorkerState, now: Instant) {
        let batch_us = self.batch_us;
        if batch_us > 0 && now.saturating_since(st.app_write_at).as_micros() < batch_us as u128 {
            let at = st.app_write_at + Duration::from_micros(batch_us);
            if st.flush_at.is_none_or(|f| at < f) {
                st.flush_at = Some(at);
            }
            // The worker wakes for its own reasons often while traffic
            // flows; wake it only if it would sleep well past the flush.
            if st.wake_at != Instant::ZERO && at.add_millis(TIMER_SLACK_MS) < st.wake_at {
                st.wake_at = Instant::ZERO;
                let _ = w.waker.wake();
            }
            return;
        }
        let writes = st.stats.write_syscalls;
        self.pump(w, st, now);
        if st.stats.write_syscalls != writes {
            st.app_write_at = now;
        }
        let d = st.ep.poll_timeout().unwrap_or(Instant::NEVER);
        if d.add_millis(TIMER_SLACK_MS) < st.wake_at && st.wake_at != Instant::ZERO {
            st.wake_at = Instant::ZERO;
            let _ = w.waker.wake();
        }
    }

    fn recv(&self, until: Until) -> Result<Inbound, Error> {
        let n = self.workers.len();
        let scan = || {
            let start = self.next_worker.fetch_add(1, Ordering::Relaxed) as usize;
            (0..n).find_map(|k| {
                let w = &self.workers[(start + k) % n];
                let mut st = lock(&w.st);
                let now = st.clock(self);
                let (sid, item) = st.ep.recv(now)?;
                // Taking it may release credit to the client.
                self.flush_or_hold(w, &mut st, now);
                Some(inbound(w.idx, sid, item))
            })
        };
        let stopping = || self.stopping.load(Ordering::Acquire);
        match self.ready.wait(until, scan, stopping) {
            Some(i) => Ok(i),
            None if stopping() => Err(Error::Stopped),
            None => Err(Error::Timeout),
        }
    }

    /// The driver loop contract for an endpoint: transmit for every dirty
    /// connection, then events, until quiet.
    fn pump(&self, w: &Worker, st: &mut WorkerState, now: Instant) {
        for _ in 0..PUMP_ROUNDS_MAX {
            while let Some(conn) = st.ep.poll_dirty() {
                st.flush(conn, now);
            }
            let mut again = false;
            while let Some(e) = st.ep.poll_event() {
                again |= self.on_event(w, st, now, e);
            }
            // Another round only if an event fed the endpoint an input.
            if !again {
                break;
            }
        }
    }

    /// Act on one event; true if that fed the endpoint an input.
    fn on_event(&self, w: &Worker, st: &mut WorkerState, now: Instant, e: ServerEvent) -> bool {
        match e {
            ServerEvent::SessionUp { session, token, .. } => {
                st.tokens.insert(session, token);
                // One worker owns every session: nothing to route.
                if self.workers.len() > 1 {
                    self.owners.lock().unwrap_or_else(|p| p.into_inner()).insert(token, w.idx);
                }
            }
            ServerEvent::CloseConnection { conn, reason } => {
                *st.closes.entry(reason.code.to_u16()).or_default() += 1;
                // Say why (the CLOSE frame), then hang up.
                st.flush(conn, now);
                st.close_conn(conn, now);
                return true;
            }
            ServerEvent::Session { session, event } => match event {
                Event::Readable if self.handler.get().is_none() => self.ready.notify(),
                Event::Delivered(id) => st.receipts.complete((session, id), Ok(())),
                Event::SendFailed { id, failure } => st.receipts.complete((session, id), Err(failure)),
                Event::SessionEnded { .. } => {
                    if let Some(s) = st.ep.stats(session) {
                        st.msgs_received_ended += s.msgs_received;
                        st.msgs_sent_ended += s.msgs_sent;
                    }
                    if let Some(token) = st.tokens.remove(&session).filter(|_| self.workers.len() > 1) {
                        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
                        if owners.get(&token) == Some(&w.idx) {
                            owners.remove(&token);
                        }
                    }
                }
                _ => {}
            },
            _ => {}
        }
        false
    }
}

/// The outcome of a message sent with [`Server::send`], to wait for or poll.
/// Dropping it is fine: the message is still delivered.
pub struct ServerReceipt {
    sh: Arc<ServerShared>,
    session: SessionRef,
    id: MsgId,
}

impl ServerReceipt {
    /// The message's id within its session.
    pub fn id(&self) -> MsgId {
        self.id
    }

    /// Wait until the client application has taken the message (`Ok`), or
    /// the message failed (`Error::SessionLost` with its fate).
    pub fn wait(self) -> Result<(), Error> {
        self.wait_until(Until::Forever)
    }

    /// As [`ServerReceipt::wait`], giving up with `Error::Timeout` after
    /// `timeout` (the receipt may still come later).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.wait_until(Until::after(Some(timeout)))
    }

    /// The outcome if it is known: `Some(Ok(()))` once delivered,
    /// `Some(Err(failure))` if it failed, `None` while in flight.
    pub fn poll(&self) -> Option<Result<(), Failure>> {
        let w = &self.sh.workers[self.session.worker as usize];
        lock(&w.st).receipts.peek((self.session.id, self.id)).copied()
    }

    fn wait_until(&self, until: Until) -> Result<(), Error> {
        let w = &self.sh.workers[self.session.worker as usize];
        let key = (self.session.id, self.id);
        let g = lock(&w.st);
        let (_g, r) = wait_until(
            &w.st,
            g,
            until,
            |st| st.receipts.peek(key).copied(),
            |st, t| st.receipts.register(key, t),
        );
        match r {
            None => Err(Error::Timeout),
            Some(Ok(())) => Ok(()),
            Some(Err(f)) => Err(Error::from_failure(f)),
        }
    }
}

impl Drop for ServerReceipt {
    fn drop(&mut self) {
        let w = &self.sh.workers[self.session.worker as usize];
        lock(&w.st).receipts.remove((self.session.id, self.id));
    }
}

impl std::fmt::Debug for ServerReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerReceipt").field("session", &self.session).field("id", &self.id).finish()
    }
}

fn inbound(worker: usize, sid: SessionId, item: Incoming) -> Inbound {
    let session = SessionRef { worker: worker as u32, id: sid };
    match item {
        Incoming::Message { channel, body } => Inbound { session, channel, body, id: None },
        Incoming::Request { id, channel, body } => Inbound { session, channel, body, id: Some(id) },
    }
}

impl WorkerState {
    /// Read the clock (never behind a time already given to the endpoint).
    fn clock(&mut self, sh: &ServerShared) -> Instant {
        self.now = self.now.max(sh.now());
        self.now
    }

    fn slot(&self, conn: ConnId) -> Option<usize> {
        self.by_conn.get(&conn).copied()
    }

    /// Write everything the endpoint has for `conn`, one `writev` per batch.
    fn flush(&mut self, conn: ConnId, now: Instant) {
        let Some(i) = self.slot(conn) else { return };
        let Some(e) = self.conns[i].as_mut() else { return };
        for _ in 0..1024 {
            if e.blocked {
                return;
            }
            // Bytes go through the worker's scratch buffer; a connection
            // keeps its own only while its socket is full.
            let use_own = !e.tx.is_empty();
            let buf = if use_own { &mut e.tx } else { &mut self.scratch };
            let max = self.ep.config().transmit_bytes_max as usize;
            let mut drained = false;
            while buf.len() < FLUSH_BYTES {
                let before = buf.len();
                self.ep.poll_transmit(now, conn, buf);
                // At most `transmit_bytes_max` per call: less means done.
                if buf.len() - before < max {
                    drained = true;
                    break;
                }
            }
            if buf.is_empty() {
                return;
            }
            match write_once(&e.stream, buf, &mut self.stats) {
                Ok(Wrote::Progress) if drained && buf.is_empty() => return,
                Ok(Wrote::Progress) => {}
                Ok(Wrote::Blocked) => {
                    e.blocked = true;
                    if !use_own {
                        std::mem::swap(&mut e.tx, &mut self.scratch);
                    }
                    return;
                }
                Err(_) => {
                    self.scratch.clear();
                    e.tx.clear();
                    e.blocked = true;
                    e.failed = true;
                    // Reported as lost after the pump (the endpoint may still
                    // name this connection in events being drained).
                    self.read_more.push(i);
                    return;
                }
            }
        }
    }

    /// Close `conn`'s socket. Closing the descriptor (the stream is its only
    /// owner) also removes it from the poller and sends FIN after what was
    /// written: no `epoll_ctl` or `shutdown` call needed.
    fn close_conn(&mut self, conn: ConnId, now: Instant) {
        if let Some(i) = self.by_conn.remove(&conn) {
            if self.conns[i].take().is_some() {
                self.free.push(i);
            }
        }
        self.ep.connection_lost(now, conn);
    }

    /// Take a new connection in; `watch`: register it with the poller now
    /// (otherwise the caller calls [`WorkerState::watch`] later).
    fn add_conn(
        &mut self,
        registry: &mio::Registry,
        mut stream: TcpStream,
        now: Instant,
        watch: bool,
    ) -> Option<usize> {
        let i = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if watch
            && registry
                .register(&mut stream, Token(FIRST_CONN + i), Interest::READABLE | Interest::WRITABLE)
                .is_err()
        {
            self.free.push(i);
            return None;
        }
        let conn = self.ep.accept(now);
        self.by_conn.insert(conn, i);
        self.conns[i] = Some(ConnEntry {
            stream,
            conn,
            hello: Some(Vec::new()),
            tx: TransmitBuf::new(),
            blocked: false,
            failed: false,
        });
        self.stats.connections += 1;
        Some(i)
    }

    /// Register connection slot `i` (if still open) with the poller.
    fn watch(&mut self, registry: &mio::Registry, i: usize, now: Instant) {
        let Some(e) = self.conns.get_mut(i).and_then(|e| e.as_mut()) else { return };
        let token = Token(FIRST_CONN + i);
        if registry.register(&mut e.stream, token, Interest::READABLE | Interest::WRITABLE).is_err() {
            let conn = e.conn;
            self.close_conn(conn, now);
        }
    }
}

/// Read from connection slot `i` until drained (bounded), feeding the
/// endpoint; route a new connection by its HELLO first.
fn read_conn(sh: &ServerShared, w: &Worker, st: &mut WorkerState, i: usize, now: Instant) {
    for _ in 0..READS_PER_EVENT {
        let WorkerState { conns, rbuf, stats, ep, .. } = &mut *st;
        let Some(e) = conns.get_mut(i).and_then(|e| e.as_mut()) else { return };
        if e.failed {
            let conn = e.conn;
            st.close_conn(conn, now);
            return;
        }
        // A HELLO that arrived in pieces is completed with exact reads, so
        // a slow sender holds at most one frame here; otherwise read all.
        let first = e.hello.as_ref().is_some_and(|h| h.is_empty());
        let (r, want) = match e.hello.as_mut() {
            Some(h) if !h.is_empty() => {
                let want = HELLO_FRAME_BYTES.saturating_sub(h.len());
                let mut part = [0u8; HELLO_FRAME_BYTES];
                let r = read_exact_part(&e.stream, &mut part[..want], stats);
                if let ReadOutcome::Data(n) = r {
                    h.extend_from_slice(&part[..n]);
                }
                (r, want)
            }
            _ => (read_once(&e.stream, rbuf, stats), rbuf.capacity()),
        };
        match r {
            ReadOutcome::Data(n) => {
                let conn = e.conn;
                if let Some(h) = e.hello.as_mut() {
                    let data: &[u8] = if first { &rbuf[..n] } else { h };
                    let route = match peek_hello(data) {
                        Ok(None) => {
                            if first {
                                h.extend_from_slice(&rbuf[..n]);
                            }
                            continue;
                        }
                        Ok(Some(hello)) if hello.resume && sh.workers.len() > 1 => {
                            sh.owners.lock().unwrap_or_else(|p| p.into_inner()).get(&hello.token).copied()
                        }
                        Ok(Some(_)) | Err(_) => None,
                    };
                    if let Some(owner) = route.filter(|&o| o != w.idx) {
                        if first {
                            h.extend_from_slice(&rbuf[..n]);
                        }
                        hand_off(sh, w, st, i, owner, now);
                        return;
                    }
                    // Ours (or garbage, which our endpoint closes with a reason).
                    let bytes = e.hello.take().unwrap_or_default();
                    if first {
                        ep.handle_input(now, conn, &rbuf[..n]);
                        if n < want {
                            return;
                        }
                    } else {
                        ep.handle_input(now, conn, &bytes);
                    }
                    continue;
                }
                ep.handle_input(now, conn, &rbuf[..n]);
                if n < want {
                    return;
                }
            }
            ReadOutcome::WouldBlock => return,
            ReadOutcome::Closed => {
                let conn = e.conn;
                st.close_conn(conn, now);
                return;
            }
        }
    }
    st.read_more.push(i);
}

/// Give connection slot `i` (its HELLO resumes a session `owner` holds) to
/// the owner, with the bytes read so far.
fn hand_off(sh: &ServerShared, w: &Worker, st: &mut WorkerState, i: usize, owner: usize, now: Instant) {
    let Some(mut e) = st.conns[i].take() else { return };
    st.free.push(i);
    st.by_conn.remove(&e.conn);
    let _ = w.registry.deregister(&mut e.stream);
    // Our endpoint forgets it: it never saw a byte of it.
    st.ep.connection_lost(now, e.conn);
    let target = &sh.workers[owner];
    let bytes = e.hello.take().unwrap_or_default();
    let mut q = target.handoff.lock().unwrap_or_else(|p| p.into_inner());
    let queued: usize = q.iter().map(|(_, b)| b.len()).sum();
    if q.len() < HANDOFF_QUEUE_MAX && queued + bytes.len() <= HANDOFF_BYTES_MAX {
        q.push((e.stream, bytes));
        st.handoffs += 1;
        drop(q);
        let _ = target.waker.wake();
    }
    // Otherwise the stream drops here: the client sees a reset and retries.
}

/// Adopt connections other workers handed over.
fn adopt(sh: &ServerShared, w: &Worker, st: &mut WorkerState, now: Instant) {
    let batch = std::mem::take(&mut *w.handoff.lock().unwrap_or_else(|p| p.into_inner()));
    for (stream, bytes) in batch {
        let Some(i) = st.add_conn(&w.registry, stream, now, true) else { continue };
        let Some(e) = st.conns[i].as_mut() else { continue };
        e.hello = None;
        let conn = e.conn;
        st.ep.handle_input(now, conn, &bytes);
        // The readiness edge went to the other worker: read now.
        read_conn(sh, w, st, i, now);
    }
}

fn accept_all(sh: &ServerShared, w: &Worker, st: &mut WorkerState, now: Instant) {
    st.accept_more = false;
    for _ in 0..ACCEPTS_PER_EVENT {
        let Some(l) = st.listener.as_ref() else { return };
        match l.accept() {
            Ok((stream, _)) => {
                if sh.tcp.apply(SockRef::from(&stream)).is_err() {
                    continue;
                }
                // A client's HELLO and first request usually arrive with its
                // connect: read them before watching the socket, so they
                // need no readiness round (registering afterwards reports
                // only what arrives later).
                if let Some(i) = st.add_conn(&w.registry, stream, now, false) {
                    read_conn(sh, w, st, i, now);
                    st.watch(&w.registry, i, now);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
            Err(_) => {
                // Out of descriptors (or memory): back off, keep serving.
                st.accept_retry_at = now.add_millis(ACCEPT_RETRY_MS);
                return;
            }
        }
    }
    st.accept_more = true;
}

/// Run the handler over what the endpoint has received, in batches, with
/// the worker's lock released while it runs; true if it pumped (it does
/// after every batch).
fn run_handler<'a>(
    sh: &ServerShared,
    w: &'a Worker,
    mut st: MutexGuard<'a, WorkerState>,
    handler: &Handler,
    batch: &mut Vec<Inbound>,
    replies: &mut Vec<(SessionRef, Option<ReqId>, Reply)>,
) -> (MutexGuard<'a, WorkerState>, bool) {
    let mut pumped = false;
    for _ in 0..64 {
        // The time of the wake-up, or of the last batch's answers: one
        // clock read per batch.
        let now = st.now;
        let mut drained = false;
        while batch.len() < HANDLER_BATCH_MAX {
            match st.ep.recv(now) {
                Some((sid, item)) => batch.push(inbound(w.idx, sid, item)),
                None => {
                    drained = true;
                    break;
                }
            }
        }
        if batch.is_empty() {
            break;
        }
        drop(st);
        for item in batch.drain(..) {
            let (session, id) = (item.session, item.id);
            // A panicking handler fails its request, not the worker (and
            // with it every session the worker holds).
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(item)))
                .unwrap_or(Reply::Reject(REJECT_HANDLER_PANICKED));
            replies.push((session, id, r));
        }
        st = lock(&w.st);
        let now = st.clock(sh);
        for (session, id, reply) in replies.drain(..) {
            let Some(id) = id else { continue };
            match reply {
                Reply::Respond(body) => {
                    if let Err(_refused) = st.ep.respond(now, session.id, id, body) {
                        st.ep.reject(now, session.id, id, REJECT_NO_RESPONSE);
                    }
                }
                Reply::Reject(code) => {
                    st.ep.reject(now, session.id, id, code);
                }
                Reply::Nothing => {
                    st.ep.reject(now, session.id, id, REJECT_NO_RESPONSE);
                }
            }
        }
        sh.pump(w, &mut st, now);
        pumped = true;
        // Only this thread feeds the endpoint input (the handler ran
        // without the lock, but took nothing in): drained stays drained.
        if drained {
            break;
        }
    }
    (st, pumped)
}

fn worker_loop(sh: Arc<ServerShared>, idx: usize, mut poll: Poll) {
    let w = sh.workers[idx].clone();
    let mut events = Events::with_capacity(1024);
    let mut batch = Vec::new();
    let mut replies = Vec::new();
    loop {
        let timeout = {
            let mut st = lock(&w.st);
            // The latest time given to the endpoint (read after the last
            // wake-up or batch): its next deadline is measured from it.
            let now = st.now;
            if sh.stopping.load(Ordering::Acquire) && st.stopping_at.is_none() {
                // Stop accepting; close every session gracefully.
                if let Some(mut l) = st.listener.take() {
                    let _ = w.registry.deregister(&mut l);
                }
                let close_ms = st.ep.config().close_timeout_ms;
                st.stopping_at = Some(now.add_millis(close_ms.saturating_add(500)));
                st.ep.shutdown(now);
                sh.pump(&w, &mut st, now);
            }
            if let Some(at) = st.stopping_at {
                if st.ep.is_shut_down() || now >= at {
                    let conns: Vec<ConnId> = st.by_conn.keys().copied().collect();
                    for c in conns {
                        st.close_conn(c, now);
                    }
                    // Sessions still alive at the deadline end with the
                    // process: their receipts fail, nobody waits forever.
                    let code = mf_core::CloseCode::Shutdown;
                    let reason =
                        mf_core::FailReason::SessionLost(mf_core::CloseReason { code, by_peer: false });
                    st.receipts.complete_all(|| Err(Failure { reason, fate: mf_core::Fate::Unknown }));
                    return;
                }
            }
            let mut d = st.ep.poll_timeout().unwrap_or(Instant::NEVER);
            if let Some(at) = st.stopping_at {
                d = d.min(at);
            }
            if let Some(at) = st.flush_at {
                d = d.min(at);
            }
            if !st.read_more.is_empty() || st.accept_more {
                d = now;
            }
            if st.accept_retry_at > now {
                d = d.min(st.accept_retry_at);
            }
            st.wake_at = d.max(now);
            if d == Instant::NEVER { None } else { Some(d.saturating_since(now)) }
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                std::thread::sleep(Duration::from_millis(ACCEPT_RETRY_MS));
            }
            continue;
        }
        let mut st = lock(&w.st);
        st.wake_at = Instant::ZERO;
        st.stats.wakeups += 1;
        let now = st.clock(&sh);
        adopt(&sh, &w, &mut st, now);
        let mut accept = st.accept_more || (st.accept_retry_at != Instant::ZERO && st.accept_retry_at <= now);
        let retry: Vec<usize> = std::mem::take(&mut st.read_more);
        for ev in events.iter() {
            match ev.token() {
                WAKER => {}
                LISTENER => accept = true,
                Token(t) => {
                    let i = t - FIRST_CONN;
                    if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                        if let Some(e) = st.conns.get_mut(i).and_then(|e| e.as_mut()) {
                            if e.blocked && !e.tx.is_empty() {
                                e.blocked = false;
                                let conn = e.conn;
                                st.flush(conn, now);
                            }
                        }
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        read_conn(&sh, &w, &mut st, i, now);
                    }
                }
            }
        }
        for i in retry {
            read_conn(&sh, &w, &mut st, i, now);
        }
        if accept && st.accept_retry_at <= now {
            st.accept_retry_at = Instant::ZERO;
            accept_all(&sh, &w, &mut st, now);
        }
        if st.ep.poll_timeout().is_some_and(|t| t <= now) {
            st.ep.handle_timeout(now);
        }
        st.flush_at = None;
        // With a handler, what the input asks for (acknowledgements, a
        // WELCOME) leaves with the answers to it, in one write: the pump
        // after each handler batch drains everything.
        let mut pumped = false;
        if let Some(h) = sh.handler.get() {
            (st, pumped) = run_handler(&sh, &w, st, h, &mut batch, &mut replies);
        }
        if !pumped {
            sh.pump(&w, &mut st, now);
        }
        drop(st);
    }
}
