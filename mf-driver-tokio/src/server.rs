//! The async server: one [`mf_core::Endpoint`] shared by small tasks.
//!
//! - the accept task registers each new connection with the endpoint and
//!   spawns its connection task;
//! - a connection task reads (many frames per read) into the endpoint and
//!   writes what the endpoint queued for it (many frames per `writev`). When
//!   a [`Handler`] is installed it also serves: it takes the requests that
//!   are ready (a batch per lock acquisition), polls each handler future
//!   once in place (spawning a task only for one that is still pending),
//!   answers the batch under one lock and writes the answers in one write;
//! - the serve task runs one-way messages through the handler in arrival
//!   order, and takes over serving whenever a connection task stopped at a
//!   limit;
//! - the timer task sleeps until the endpoint's next deadline;
//! - or the application takes messages and requests with [`Server::recv`]
//!   (the pull API).
//!
//! The endpoint sits behind a mutex that is never held across an `.await`,
//! a socket call or a handler. After every input, the holder drains the
//! endpoint's outputs (the core's driver loop): transmit into each dirty
//! connection's buffer (up to a high water mark: the core keeps the rest),
//! events, timer.

use crate::client::{Batching, Receipt, os_seed};
use crate::clock::Clock;
use crate::io_stats::IoStats;
use crate::transport::{Listen, Stream};
use bytes::Bytes;
use mf_core::{
    Config, ConfigError, ConnId, Endpoint, Event, Failure, Incoming, MsgId, ReqId, SendError, ServerEvent,
    SessionId, TransmitBuf,
};
use std::collections::{BTreeMap, VecDeque};
use std::future::{Future, poll_fn};
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, oneshot};

const WRITE_HIGH_WATER_BYTES: usize = 256 << 10;
const IOV_MAX: usize = 64;
/// A connection being closed gets this long to flush its last bytes.
const CLOSE_FLUSH_MS: u64 = 200;
/// Rounds of (transmit, events) per drain; each round empties both queues
/// unless events marked more connections dirty.
const DRAIN_ROUNDS_MAX: usize = 16;
/// Items a serving task takes per lock acquisition.
const SERVE_BATCH_MAX: usize = 64;
/// One-way messages taken and waiting for the handler, at most.
const MESSAGES_QUEUED_MAX: usize = 1024;
/// Rounds of (read, serve, write) per connection-task turn before it
/// yields to other tasks.
const ROUNDS_PER_TURN: usize = 16;
/// Writes per flush before the connection task yields.
const WRITES_PER_FLUSH: usize = 16;

/// How a [`Server`] is set up.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Protocol limits and timers (`sessions_max`, `handshakes_max`, ...).
    pub config: Config,
    /// Seed for the endpoint's generator. `None` (the default) draws it from
    /// the operating system.
    pub seed: Option<[u8; 32]>,
    /// Open connections at most; more are accepted and closed at once.
    /// Default 16 384.
    pub connections_max: usize,
    /// Handler futures still pending after their first poll, at most, for
    /// [`Server::serve`] (a handler that answers at once never counts).
    /// Default 1024.
    pub handlers_max: usize,
    /// Write batching per connection:
    ///
    /// - `None` (the default): a connection's output leaves at its task's
    ///   next turn: the answers to every request of one read go in one
    ///   write, and answers given through the pull API ([`Server::respond`])
    ///   meanwhile join them.
    /// - `Some(0)`: no batching for [`Server::serve`]: each answer is written
    ///   on its own, one write per response (the pull API writes at the
    ///   connection task's next turn, as with `None`).
    /// - `Some(us)`: output queued within `us` microseconds of the
    ///   connection's previous write waits until then.
    pub write_batch_us: Option<u64>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            config: Config::default(),
            seed: None,
            connections_max: 16_384,
            handlers_max: 1024,
            write_batch_us: None,
        }
    }
}

impl ServerOptions {
    /// Options with `config` and OS randomness.
    pub fn new(config: Config) -> Self {
        ServerOptions { config, ..Default::default() }
    }

    /// Use `seed` instead of OS randomness (tests and simulation).
    pub fn with_seed(mut self, seed: [u8; 32]) -> Self {
        self.seed = Some(seed);
        self
    }
}

type ReceiptTx = oneshot::Sender<Result<(), Failure>>;

struct ConnOut {
    /// Bytes the endpoint queued for this connection, not yet taken by its task.
    buf: TransmitBuf,
    /// The connection task's waker, and whether it was woken since its turn.
    waker: Option<Waker>,
    woken: bool,
    /// The endpoint closed it: write `buf`, then close the socket.
    closing: bool,
    /// The core may hold more output than `buf` took (it was full).
    more: bool,
}

impl ConnOut {
    fn wake(&mut self) {
        if !self.woken {
            if let Some(w) = &self.waker {
                w.wake_by_ref();
                self.woken = true;
            }
        }
    }
}

struct State {
    ep: Endpoint,
    conns: BTreeMap<ConnId, ConnOut>,
    receipts: BTreeMap<(SessionId, MsgId), ReceiptTx>,
    /// One-way messages taken for the handler, in arrival order.
    messages: VecDeque<Message>,
    /// The deadline the timer task sleeps until.
    timer_armed: mf_core::Instant,
    shutting_down: bool,
    stopped: bool,
    connections_max: usize,
    io: IoStats,
}

struct Inner {
    state: Mutex<State>,
    clock: Clock,
    timer: Notify,
    readable: Notify,
    room: Notify,
    status: Notify,
    accept_stop: Notify,
    handlers_max: usize,
    batching: Batching,
    /// Handler futures running in tasks of their own.
    handlers_running: AtomicUsize,
    /// Set by [`Server::serve`].
    dispatch: OnceLock<Arc<dyn Dispatch>>,
}

/// What a drain asks the caller to signal once the lock is released.
#[derive(Default)]
struct Signals {
    readable: bool,
    room: bool,
    timer: bool,
    status: bool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("mf-driver-tokio server state poisoned")
    }

    fn signal(&self, s: Signals) {
        if s.readable {
            self.readable.notify_waiters();
        }
        if s.room {
            self.room.notify_waiters();
        }
        if s.timer {
            self.timer.notify_one();
        }
        if s.status {
            self.status.notify_waiters();
            self.readable.notify_waiters();
            self.room.notify_waiters();
            self.accept_stop.notify_one();
        }
    }

    /// Run `f` on the state, then drain the endpoint and signal.
    fn with<R>(&self, f: impl FnOnce(&mut State, mf_core::Instant) -> R) -> R {
        let (r, s) = {
            let mut st = self.lock();
            let now = self.clock.now();
            let r = f(&mut st, now);
            (r, drain(&mut st, now, None))
        };
        self.signal(s);
        r
    }

    /// Room for more served work: pending handlers and queued messages
    /// under their limits.
    fn may_serve(&self, st: &State) -> bool {
        self.handlers_running.load(Ordering::Relaxed) < self.handlers_max
            && st.messages.len() < MESSAGES_QUEUED_MAX
    }
}

/// Pull `conn`'s output into its buffer, up to the high-water mark; what
/// the core still holds then is flagged in `more`, for the connection task
/// to pull once the buffer is written. True if anything came.
fn fill(ep: &mut Endpoint, now: mf_core::Instant, conn: ConnId, c: &mut ConnOut) -> bool {
    let mut any = false;
    c.more = false;
    loop {
        if c.buf.len() >= WRITE_HIGH_WATER_BYTES {
            c.more = true;
            return any;
        }
        let before = c.buf.len();
        ep.poll_transmit(now, conn, &mut c.buf);
        if c.buf.len() == before {
            return any;
        }
        any = true;
    }
}

/// The core's driver loop for the endpoint: transmit, events, timer.
/// Connections with new output are woken, except `me` (the caller, which
/// takes its own output itself).
fn drain(st: &mut State, now: mf_core::Instant, me: Option<ConnId>) -> Signals {
    drain_deferring(st, now, me, false, false).0
}

/// [`drain`], optionally leaving `me`'s transmit to the caller, which is
/// about to answer requests and fills its buffer once afterwards (one pull
/// for both; `fill_me` is that later call). Returns whether `me` was left
/// dirty.
fn drain_deferring(
    st: &mut State,
    now: mf_core::Instant,
    me: Option<ConnId>,
    defer_me: bool,
    mut fill_me: bool,
) -> (Signals, bool) {
    let mut s = Signals::default();
    let mut me_dirty = false;
    let State { ep, conns, receipts, .. } = st;
    for _ in 0..DRAIN_ROUNDS_MAX {
        let mut more = false;
        while let Some(conn) = ep.poll_dirty() {
            if defer_me && Some(conn) == me {
                me_dirty = true;
                continue;
            }
            if Some(conn) == me {
                fill_me = false;
            }
            if let Some(c) = conns.get_mut(&conn) {
                if fill(ep, now, conn, c) {
                    s.room = true;
                    if Some(conn) != me {
                        c.wake();
                    }
                }
            }
        }
        if let Some(conn) = me.filter(|_| fill_me) {
            fill_me = false;
            if let Some(c) = conns.get_mut(&conn) {
                fill(ep, now, conn, c);
            }
        }
        while let Some(e) = ep.poll_event() {
            more = true;
            match e {
                ServerEvent::CloseConnection { conn, .. } => match conns.get_mut(&conn) {
                    Some(c) => {
                        fill(ep, now, conn, c);
                        c.closing = true;
                        c.wake();
                    }
                    None => ep.connection_lost(now, conn),
                },
                ServerEvent::Session { session, event } => match event {
                    Event::Readable => s.readable = true,
                    Event::Delivered(id) => {
                        if let Some(tx) = receipts.remove(&(session, id)) {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Event::SendFailed { id, failure } => {
                        if let Some(tx) = receipts.remove(&(session, id)) {
                            let _ = tx.send(Err(failure));
                        }
                    }
                    Event::SessionEnded { .. } => s.room = true,
                    _ => {}
                },
                _ => {}
            }
        }
        if !more {
            break;
        }
    }
    let next = st.ep.poll_timeout().unwrap_or(mf_core::Instant::NEVER);
    if next < st.timer_armed {
        st.timer_armed = next;
        s.timer = true;
    }
    if st.shutting_down && !st.stopped && st.ep.is_shut_down() {
        st.stopped = true;
        s.status = true;
    }
    (s, me_dirty)
}

/// Answer a request with a handler's result. A refused response (too
/// large) becomes a rejection, so the call still gets its one outcome.
fn answer(st: &mut State, now: mf_core::Instant, session: SessionId, id: ReqId, r: Result<Bytes, u16>) {
    match r {
        Ok(resp) => {
            if let Err(e) = st.ep.respond(now, session, id, resp) {
                tracing::warn!(error = %e, "response refused; rejecting the request");
                st.ep.reject(now, session, id, u16::MAX);
            }
        }
        Err(code) => {
            st.ep.reject(now, session, id, code);
        }
    }
}

/// Why [`take_items`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taken {
    /// Nothing more is ready.
    All,
    /// The batch is full; the taker goes on in its next round.
    Batch,
    /// Pending handlers or queued messages are at their limit; whoever
    /// frees room signals `readable`.
    Limit,
}

/// Take up to `max` ready items for the handler: requests into `requests`,
/// one-way messages onto the state's message queue (the serve task runs
/// them in order). Returns why it stopped, and whether messages were queued.
fn take_items(
    inner: &Inner,
    st: &mut State,
    now: mf_core::Instant,
    requests: &mut Vec<(SessionId, ReqId, Request)>,
    max: usize,
) -> (Taken, bool) {
    let mut queued = false;
    for _ in 0..max {
        if !inner.may_serve(st) {
            return (Taken::Limit, queued);
        }
        match st.ep.recv(now) {
            Some((session, Incoming::Request { id, channel, body })) => {
                requests.push((session, id, Request { session, channel, body }));
            }
            Some((session, Incoming::Message { channel, body })) => {
                st.messages.push_back(Message { session, channel, body });
                queued = true;
            }
            None => return (Taken::All, queued),
        }
    }
    (Taken::Batch, queued)
}

/// A request handed to a [`Handler`].
#[derive(Clone, Debug)]
pub struct Request {
    /// The client session it came from.
    pub session: SessionId,
    /// Its channel.
    pub channel: u16,
    /// Its body.
    pub body: Bytes,
}

/// A one-way message handed to a [`Handler`].
#[derive(Clone, Debug)]
pub struct Message {
    /// The client session it came from.
    pub session: SessionId,
    /// Its channel.
    pub channel: u16,
    /// Its body.
    pub body: Bytes,
}

/// Application logic for [`Server::serve`]. A closure
/// `Fn(Request) -> impl Future<Output = Result<Bytes, u16>>` is a handler that
/// answers requests and ignores one-way messages.
pub trait Handler: Send + Sync + 'static {
    /// Answer a request: `Ok(response)`, or `Err(code)` to reject it (the
    /// call fails with `FailReason::Rejected(code)`).
    ///
    /// The future is first polled in the task that read the request; one
    /// that completes at once costs no task of its own (an echo or a
    /// key-value lookup). One still pending runs in its own task; up to
    /// `ServerOptions::handlers_max` do so at once.
    fn request(&self, req: Request) -> impl Future<Output = Result<Bytes, u16>> + Send;

    /// Take a one-way message. Messages are handled one at a time, in
    /// arrival order (so per-channel order holds for the application).
    fn message(&self, msg: Message) -> impl Future<Output = ()> + Send {
        let _ = msg;
        async {}
    }
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, u16>> + Send,
{
    fn request(&self, req: Request) -> impl Future<Output = Result<Bytes, u16>> + Send {
        self(req)
    }
}

// --- running handler futures ---------------------------------------------------

/// Makes a [`Lane`] per serving task, so connection tasks (which do not know
/// the handler's type) can run it.
trait Dispatch: Send + Sync {
    fn lane(&self) -> Box<dyn Lane>;
}

/// Runs one task's handler futures.
trait Lane: Send {
    /// Start the handler for a request; its answer if it completed on the
    /// first poll. Otherwise it runs on in a task of its own, which answers.
    fn request(
        &mut self,
        inner: &Arc<Inner>,
        session: SessionId,
        id: ReqId,
        req: Request,
    ) -> Option<Result<Bytes, u16>>;
}

struct ServeDispatch<H> {
    handler: Arc<H>,
}

impl<H: Handler> Dispatch for ServeDispatch<H> {
    fn lane(&self) -> Box<dyn Lane> {
        Box::new(HandlerLane { handler: self.handler.clone(), make: request_future::<H>, slot: None })
    }
}

/// The handler's future for one request, owning what it borrows.
async fn request_future<H: Handler>(handler: Arc<H>, req: Request) -> Result<Bytes, u16> {
    handler.request(req).await
}

struct HandlerLane<H, F> {
    handler: Arc<H>,
    make: fn(Arc<H>, Request) -> F,
    /// Pinned room for one future, reused by every request whose handler
    /// completes at once: serving allocates nothing per request.
    slot: Option<Pin<Box<Option<F>>>>,
}

impl<H, F> Lane for HandlerLane<H, F>
where
    H: Handler,
    F: Future<Output = Result<Bytes, u16>> + Send + 'static,
{
    fn request(
        &mut self,
        inner: &Arc<Inner>,
        session: SessionId,
        id: ReqId,
        req: Request,
    ) -> Option<Result<Bytes, u16>> {
        let mut slot = self.slot.take().unwrap_or_else(|| Box::pin(None));
        slot.set(Some((self.make)(self.handler.clone(), req)));
        // A no-op waker: a future still pending is polled again at once by
        // its own task, which registers the real one.
        let first = match slot.as_mut().as_pin_mut() {
            Some(f) => f.poll(&mut Context::from_waker(Waker::noop())),
            None => unreachable!("the slot was just filled"),
        };
        match first {
            Poll::Ready(r) => {
                slot.set(None);
                self.slot = Some(slot);
                Some(r)
            }
            Poll::Pending => {
                inner.handlers_running.fetch_add(1, Ordering::Relaxed);
                let inner = inner.clone();
                tokio::spawn(async move {
                    let r = poll_fn(|cx| match slot.as_mut().as_pin_mut() {
                        Some(f) => f.poll(cx),
                        None => unreachable!("the slot holds the pending future"),
                    })
                    .await;
                    drop(slot);
                    let was = inner.handlers_running.fetch_sub(1, Ordering::Relaxed);
                    inner.with(|st, now| answer(st, now, session, id, r));
                    if was >= inner.handlers_max {
                        // Serving may have stopped at the limit: resume it.
                        inner.readable.notify_waiters();
                    }
                });
                None
            }
        }
    }
}

/// Dropped with the last [`Server`] handle: shuts the server down.
struct HandleGuard {
    inner: Arc<Inner>,
}

impl Drop for HandleGuard {
    fn drop(&mut self) {
        begin_shutdown(&self.inner);
    }
}

fn begin_shutdown(inner: &Inner) {
    inner.with(|st, now| {
        if !st.shutting_down {
            st.shutting_down = true;
            st.ep.shutdown(now);
        }
    });
    inner.accept_stop.notify_one();
}

/// An async MessageFirst server.
///
/// Cloning is cheap; every clone is the same server. Dropping the last
/// clone shuts it down in the background. See the [crate docs](crate) for a
/// complete example.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
    _guard: Arc<HandleGuard>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("Server").field("endpoint", &st.ep).finish()
    }
}

impl Server {
    /// Start accepting on `listener`. Must be called inside a tokio runtime.
    pub fn start<L: Listen>(listener: L, options: ServerOptions) -> Result<Server, ConfigError> {
        let seed = options.seed.unwrap_or_else(os_seed);
        // The clock below starts now: the endpoint knows its start (see Endpoint::new_at).
        let ep = Endpoint::new_at(options.config, seed, mf_core::Instant::ZERO)?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                ep,
                conns: BTreeMap::new(),
                receipts: BTreeMap::new(),
                messages: VecDeque::new(),
                timer_armed: mf_core::Instant::NEVER,
                shutting_down: false,
                stopped: false,
                connections_max: options.connections_max.max(1),
                io: IoStats::default(),
            }),
            clock: Clock::new(),
            timer: Notify::new(),
            readable: Notify::new(),
            room: Notify::new(),
            status: Notify::new(),
            accept_stop: Notify::new(),
            handlers_max: options.handlers_max.max(1),
            batching: Batching::new(options.write_batch_us),
            handlers_running: AtomicUsize::new(0),
            dispatch: OnceLock::new(),
        });
        tokio::spawn(accept_task(inner.clone(), listener));
        tokio::spawn(timer_task(inner.clone()));
        let guard = Arc::new(HandleGuard { inner: inner.clone() });
        Ok(Server { inner, _guard: guard })
    }

    /// Take the next message or request from any session (round robin),
    /// waiting for one. `None` once the server has shut down.
    ///
    /// Taking an item is what sends a message's receipt.
    ///
    /// Cancel safety: safe; an item is taken only in the poll that returns it.
    pub async fn recv(&self) -> Option<(SessionId, Incoming)> {
        loop {
            let readable = self.inner.readable.notified();
            let (item, stopped) = self.inner.with(|st, now| (st.ep.recv(now), st.stopped));
            if item.is_some() {
                return item;
            }
            if stopped {
                return None;
            }
            readable.await;
        }
    }

    /// Take an item if one is waiting. Never waits.
    pub fn try_recv(&self) -> Option<(SessionId, Incoming)> {
        self.inner.with(|st, now| st.ep.recv(now))
    }

    /// Answer a request. `Ok(false)` if it is no longer open (the client
    /// cancelled it or its session ended); the response is dropped.
    pub fn respond(&self, session: SessionId, req: ReqId, body: impl Into<Bytes>) -> Result<bool, SendError> {
        let body = body.into();
        self.inner.with(|st, now| st.ep.respond(now, session, req, body))
    }

    /// Reject a request with an application `code`. False if it is no longer open.
    pub fn reject(&self, session: SessionId, req: ReqId, code: u16) -> bool {
        self.inner.with(|st, now| st.ep.reject(now, session, req, code))
    }

    /// Send a one-way message to a session's client if there is room now
    /// (else the message comes back in [`SendError::Full`]).
    pub fn try_send(
        &self,
        session: SessionId,
        channel: u16,
        body: impl Into<Bytes>,
    ) -> Result<Receipt, SendError> {
        let body = body.into();
        self.inner.with(|st, now| {
            let id = st.ep.send(now, session, channel, body)?;
            let (tx, rx) = oneshot::channel();
            st.receipts.insert((session, id), tx);
            Ok(Receipt::new(id, rx))
        })
    }

    /// [`Server::try_send`] that waits while the session's send queue is full.
    ///
    /// Cancel safety: safe; if dropped, the message was not queued.
    pub async fn send(
        &self,
        session: SessionId,
        channel: u16,
        body: impl Into<Bytes>,
    ) -> Result<Receipt, SendError> {
        let mut body = body.into();
        loop {
            let room = self.inner.room.notified();
            match self.try_send(session, channel, body) {
                Err(SendError::Full(b)) => body = b,
                r => return r,
            }
            if self.inner.lock().stopped {
                return Err(SendError::Closed(body));
            }
            room.await;
        }
    }

    /// Close one session gracefully.
    pub fn close_session(&self, session: SessionId) -> Result<(), mf_core::ApiMisuse> {
        self.inner.with(|st, now| st.ep.close_session(now, session))
    }

    /// Hand every message and request to `handler`. Use either this or
    /// [`Server::recv`], not both.
    ///
    /// Requests are served by the connection tasks themselves (see
    /// [`Handler::request`]); one-way messages by one task, in order.
    ///
    /// # Panics
    ///
    /// If a handler is installed already.
    pub fn serve<H: Handler>(&self, handler: H) {
        let handler = Arc::new(handler);
        let dispatch: Arc<dyn Dispatch> = Arc::new(ServeDispatch { handler: handler.clone() });
        assert!(self.inner.dispatch.set(dispatch).is_ok(), "Server::serve called twice");
        tokio::spawn(serve_task(self.inner.clone(), handler));
        // Items that arrived before the handler was installed.
        self.inner.readable.notify_waiters();
    }

    /// Stop accepting, close every session gracefully (each drains within
    /// `close_timeout_ms`), and wait until all are closed. Items still in
    /// sessions' inboxes must be taken (or the wait ends after the close
    /// timeout plus a second).
    ///
    /// Cancel safety: safe; the shutdown proceeds in the background.
    pub async fn shutdown(&self) {
        begin_shutdown(&self.inner);
        let close_ms = self.inner.lock().ep.config().close_timeout_ms;
        let _ = tokio::time::timeout(Duration::from_millis(close_ms + 1000), self.stopped()).await;
        self.inner.with(|st, _| {
            st.stopped = true;
            for c in st.conns.values_mut() {
                c.closing = true;
                c.wake();
            }
        });
        self.inner.signal(Signals { status: true, ..Default::default() });
    }

    async fn stopped(&self) {
        loop {
            let n = self.inner.status.notified();
            if self.inner.lock().stopped {
                return;
            }
            n.await;
        }
    }

    /// Sessions alive.
    pub fn session_count(&self) -> usize {
        self.inner.lock().ep.session_count()
    }

    /// Connections open.
    pub fn connection_count(&self) -> usize {
        self.inner.lock().conns.len()
    }

    /// The session a token names, if this server holds it.
    pub fn session_by_token(&self, token: &mf_core::Token) -> Option<SessionId> {
        self.inner.lock().ep.session_by_token(token)
    }

    /// A session's counters.
    pub fn stats(&self, session: SessionId) -> Option<mf_core::Stats> {
        self.inner.lock().ep.stats(session).cloned()
    }

    /// Reads, writes, bytes and wake-ups of all connections so far.
    pub fn io_stats(&self) -> IoStats {
        self.inner.lock().io
    }
}

/// Runs one-way messages through the handler in arrival order, and serves
/// requests that the connection tasks left (they stop at the limits).
async fn serve_task<H: Handler>(inner: Arc<Inner>, handler: Arc<H>) {
    let mut lane = ServeDispatch { handler: handler.clone() }.lane();
    let mut requests = Vec::new();
    let mut answers = Vec::new();
    let mut messages = VecDeque::new();
    loop {
        let readable = inner.readable.notified();
        let stopped = {
            let mut st = inner.lock();
            let now = inner.clock.now();
            std::mem::swap(&mut messages, &mut st.messages);
            take_items(&inner, &mut st, now, &mut requests, SERVE_BATCH_MAX);
            messages.append(&mut st.messages);
            let s = drain(&mut st, now, None);
            let stopped = st.stopped;
            drop(st);
            inner.signal(s);
            stopped
        };
        let idle = requests.is_empty() && messages.is_empty();
        for (session, id, req) in requests.drain(..) {
            if let Some(r) = lane.request(&inner, session, id, req) {
                answers.push((session, id, r));
            }
        }
        if !answers.is_empty() {
            inner.with(|st, now| {
                for (session, id, r) in answers.drain(..) {
                    answer(st, now, session, id, r);
                }
            });
        }
        while let Some(m) = messages.pop_front() {
            handler.message(m).await;
        }
        if idle {
            if stopped {
                return;
            }
            readable.await;
        }
    }
}

async fn accept_task<L: Listen>(inner: Arc<Inner>, mut listener: L) {
    loop {
        let r = tokio::select! {
            biased;
            _ = inner.accept_stop.notified() => return,
            r = listener.accept() => r,
        };
        let stream = match r {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let conn = inner.with(|st, now| {
            if st.shutting_down {
                return Err(true);
            }
            if st.conns.len() >= st.connections_max {
                return Err(false);
            }
            let conn = st.ep.accept(now);
            st.conns.insert(
                conn,
                ConnOut { buf: TransmitBuf::new(), waker: None, woken: false, closing: false, more: false },
            );
            st.io.connections += 1;
            Ok(conn)
        });
        match conn {
            Ok(conn) => {
                tokio::spawn(conn_task(inner.clone(), conn, stream));
            }
            Err(true) => return,
            Err(false) => drop(stream),
        }
    }
}

async fn timer_task(inner: Arc<Inner>) {
    loop {
        let notified = inner.timer.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (deadline, stopped) = inner.with(|st, now| {
            if st.ep.poll_timeout().is_some_and(|t| t <= now) {
                st.ep.handle_timeout(now);
            }
            (st.ep.poll_timeout().unwrap_or(mf_core::Instant::NEVER), st.stopped)
        });
        if stopped {
            return;
        }
        inner.lock().timer_armed = deadline;
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(inner.clock.to_tokio(deadline)) => {}
            _ = notified => {}
        }
    }
}

/// How a connection task's loop ended.
enum End {
    /// The endpoint closed the connection: flush, then close.
    Closing,
    /// The socket failed or the peer closed it.
    Lost,
}

/// One connection: its socket halves (owned: only this task reads and
/// writes them, outside the lock) and its serving state.
struct ConnTask<R, W> {
    inner: Arc<Inner>,
    conn: ConnId,
    rd: R,
    wr: W,
    /// Output taken from the state, being written.
    out: TransmitBuf,
    /// The state's buffer for this connection may hold more.
    more_out: bool,
    rbuf: Box<[u8]>,
    lane: Option<Box<dyn Lane>>,
    requests: Vec<(SessionId, ReqId, Request)>,
    answers: Vec<(SessionId, ReqId, Result<Bytes, u16>)>,
    io: IoStats,
    last_write: mf_core::Instant,
    hold: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ConnTask<R, W> {
    /// Register this task's waker, note its counters, and take its output
    /// if the previous is written. True if the endpoint is closing it.
    fn sync_out(&mut self, st: &mut State, cx: &mut Context<'_>, now: mf_core::Instant) -> Option<bool> {
        let State { ep, conns, io, .. } = st;
        io.add(&self.io);
        self.io = IoStats::default();
        let c = conns.get_mut(&self.conn)?;
        c.woken = false;
        if !c.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            c.waker = Some(cx.waker().clone());
        }
        if self.out.is_empty() {
            if c.buf.is_empty() && c.more {
                fill(ep, now, self.conn, c);
            }
            std::mem::swap(&mut self.out, &mut c.buf);
        }
        self.more_out = !c.buf.is_empty() || c.more;
        Some(c.closing)
    }

    /// Write `out` until it is empty or the socket is full.
    fn write_out(&mut self, cx: &mut Context<'_>, now: mf_core::Instant) -> Result<(), ()> {
        for _ in 0..WRITES_PER_FLUSH {
            if self.out.is_empty() {
                return Ok(());
            }
            let mut iov = [IoSlice::new(&[]); IOV_MAX];
            let n = self.out.io_slices(&mut iov);
            match Pin::new(&mut self.wr).poll_write_vectored(cx, &iov[..n]) {
                Poll::Ready(Ok(k)) if k > 0 => {
                    self.out.advance(k);
                    self.io.write_syscalls += 1;
                    self.io.bytes_written += k as u64;
                    self.last_write = now;
                }
                Poll::Ready(_) => {
                    self.io.write_syscalls += 1;
                    return Err(());
                }
                Poll::Pending => {
                    self.io.write_would_block += 1;
                    return Ok(());
                }
            }
        }
        // Budget spent with more to write: come back after other tasks.
        cx.waker().wake_by_ref();
        Ok(())
    }

    /// Output must wait (`Batching::Hold`): arm the hold timer. True if held.
    fn held(&mut self, cx: &mut Context<'_>, now: mf_core::Instant) -> bool {
        let Batching::Hold { us } = self.inner.batching else { return false };
        let until = self.last_write + Duration::from_micros(us);
        if now >= until {
            return false;
        }
        let at = self.inner.clock.to_tokio(until);
        let sleep = self.hold.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        sleep.as_mut().reset(at);
        if sleep.as_mut().poll(cx).is_ready() {
            return false;
        }
        true
    }

    /// One turn: (read, take, serve, answer, write) rounds until nothing
    /// makes progress.
    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let inner = self.inner.clone();
        self.io.wakeups += 1;
        let batch_max = if inner.batching == Batching::Off { 1 } else { SERVE_BATCH_MAX };
        // One clock read per turn: a turn takes microseconds.
        let now = inner.clock.now();
        // The first round always looks at the state (others may have queued
        // output and woken this task); later ones only when there is new
        // input or work left over.
        let mut look = true;
        for _ in 0..ROUNDS_PER_TURN {
            let mut again = false;
            // Input, outside the lock.
            let mut got = 0;
            let mut rb = ReadBuf::new(&mut self.rbuf);
            match Pin::new(&mut self.rd).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    got = rb.filled().len();
                    self.io.read_syscalls += 1;
                    self.io.bytes_read += got as u64;
                    again = true;
                }
                Poll::Ready(_) => {
                    self.io.read_syscalls += 1;
                    return Poll::Ready(End::Lost);
                }
                Poll::Pending => self.io.read_would_block += 1,
            }
            if got == 0 && !look {
                return Poll::Pending;
            }
            look = false;
            // Feed the endpoint, take what there is to serve, collect output.
            let mut st = inner.lock();
            if got > 0 {
                st.ep.handle_input(now, self.conn, &self.rbuf[..got]);
                crate::read_buf::grow_if_filled(&mut self.rbuf, got);
            }
            let serving = self.lane.is_some() || inner.dispatch.get().is_some();
            let (mut taken, mut queued) = (Taken::All, false);
            if serving {
                (taken, queued) = take_items(&inner, &mut st, now, &mut self.requests, batch_max);
            }
            let defer = !self.requests.is_empty();
            let (mut s, me_dirty) = drain_deferring(&mut st, now, Some(self.conn), defer, false);
            if serving && taken != Taken::Limit && !queued {
                // This task takes everything ready itself (now, or in its next
                // round): nobody else need look.
                s.readable = false;
            }
            let Some(closing) = self.sync_out(&mut st, cx, now) else {
                drop(st);
                inner.signal(s);
                return Poll::Ready(End::Lost);
            };
            drop(st);
            inner.signal(s);
            if taken == Taken::Batch {
                again = true;
                look = true;
            }
            // Serve, outside the lock; answer the batch under one lock.
            if !self.requests.is_empty() {
                if self.lane.is_none() {
                    self.lane = inner.dispatch.get().map(|d| d.lane());
                }
                if let Some(lane) = self.lane.as_mut() {
                    for (session, id, req) in self.requests.drain(..) {
                        if let Some(r) = lane.request(&inner, session, id, req) {
                            self.answers.push((session, id, r));
                        }
                    }
                }
                if !self.answers.is_empty() || me_dirty {
                    let mut st = inner.lock();
                    for (session, id, r) in self.answers.drain(..) {
                        answer(&mut st, now, session, id, r);
                    }
                    let (s, _) = drain_deferring(&mut st, now, Some(self.conn), false, me_dirty);
                    let gone = self.sync_out(&mut st, cx, now).is_none();
                    drop(st);
                    inner.signal(s);
                    if gone {
                        return Poll::Ready(End::Lost);
                    }
                }
            }
            // Output.
            if closing {
                return Poll::Ready(End::Closing);
            }
            if !self.out.is_empty() && !self.held(cx, now) {
                if self.write_out(cx, now).is_err() {
                    return Poll::Ready(End::Lost);
                }
                if self.out.is_empty() && self.more_out {
                    again = true;
                    look = true;
                }
            }
            if !again {
                return Poll::Pending;
            }
        }
        // More to do: come back after other tasks had a turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

async fn conn_task<S: Stream>(inner: Arc<Inner>, conn: ConnId, stream: S) {
    let (rd, wr) = stream.into_split();
    let mut t = ConnTask {
        inner: inner.clone(),
        conn,
        rd,
        wr,
        out: TransmitBuf::new(),
        more_out: false,
        rbuf: crate::read_buf::new(),
        lane: None,
        requests: Vec::new(),
        answers: Vec::new(),
        io: IoStats::default(),
        last_write: mf_core::Instant::ZERO,
        hold: None,
    };
    let end = poll_fn(|cx| t.poll_turn(cx)).await;
    if let End::Closing = end {
        let rest = async {
            loop {
                if t.out.is_empty() {
                    let mut st = inner.lock();
                    let now = inner.clock.now();
                    let State { ep, conns, .. } = &mut *st;
                    match conns.get_mut(&conn) {
                        Some(c) if !c.buf.is_empty() || c.more => {
                            if c.buf.is_empty() {
                                fill(ep, now, conn, c);
                            }
                            std::mem::swap(&mut t.out, &mut c.buf);
                            if t.out.is_empty() {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
                while !t.out.is_empty() {
                    let n = t.wr.write(t.out.chunk()).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    t.out.advance(n);
                }
            }
            t.wr.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_millis(CLOSE_FLUSH_MS), rest).await;
    }
    inner.with(|st, now| {
        st.io.add(&t.io);
        st.conns.remove(&conn);
        st.ep.connection_lost(now, conn);
    });
}
