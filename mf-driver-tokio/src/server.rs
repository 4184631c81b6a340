//! The async server: one [`mf_core::Endpoint`] shared by small tasks.
//!
//! - the accept task registers each new connection with the endpoint and
//!   spawns its connection task;
//! - a connection task reads (many frames per read) into the endpoint and
//!   writes what the endpoint queued for it (many frames per `writev`);
//! - the timer task sleeps until the endpoint's next deadline;
//! - the application takes messages and requests with [`Server::recv`] (the
//!   pull API) or hands them to a [`Handler`] with [`Server::serve`].
//!
//! The endpoint sits behind a mutex that is never held across an `.await`.
//! After every input, the holder drains the endpoint's outputs (the core's
//! driver loop): transmit into each dirty connection's buffer (up to a high
//! water mark: the core keeps the rest), events, timer.

use crate::client::{Receipt, os_seed};
use crate::clock::Clock;
use crate::transport::{Listen, Stream};
use bytes::Bytes;
use mf_core::{
    Config, ConfigError, ConnId, Endpoint, Event, Failure, Incoming, MsgId, ReqId, SendError, ServerEvent,
    SessionId, TransmitBuf,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::IoSlice;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore, oneshot};

const READ_BUF_BYTES: usize = 64 << 10;
const WRITE_HIGH_WATER_BYTES: usize = 256 << 10;
const IOV_MAX: usize = 64;
/// A connection being closed gets this long to flush its last bytes.
const CLOSE_FLUSH_MS: u64 = 200;
/// Rounds of (transmit, events) per drain; each round empties both queues
/// unless events marked more connections dirty.
const DRAIN_ROUNDS_MAX: usize = 16;

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
    /// Requests handled at once by [`Server::serve`]. Default 1024.
    pub handlers_max: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { config: Config::default(), seed: None, connections_max: 16_384, handlers_max: 1024 }
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
    notify: Arc<Notify>,
    /// The endpoint closed it: write `buf`, then close the socket.
    closing: bool,
}

struct State {
    ep: Endpoint,
    conns: BTreeMap<ConnId, ConnOut>,
    receipts: BTreeMap<(SessionId, MsgId), ReceiptTx>,
    /// The deadline the timer task sleeps until.
    timer_armed: mf_core::Instant,
    shutting_down: bool,
    stopped: bool,
    connections_max: usize,
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
            (r, drain(&mut st, now))
        };
        self.signal(s);
        r
    }
}

fn fill(ep: &mut Endpoint, now: mf_core::Instant, conn: ConnId, buf: &mut TransmitBuf) -> bool {
    let mut any = false;
    while buf.len() < WRITE_HIGH_WATER_BYTES {
        let before = buf.len();
        ep.poll_transmit(now, conn, buf);
        if buf.len() == before {
            break;
        }
        any = true;
    }
    any
}

/// The core's driver loop for the endpoint: transmit, events, timer.
fn drain(st: &mut State, now: mf_core::Instant) -> Signals {
    let mut s = Signals::default();
    let State { ep, conns, receipts, .. } = st;
    for _ in 0..DRAIN_ROUNDS_MAX {
        let mut more = false;
        while let Some(conn) = ep.poll_dirty() {
            if let Some(c) = conns.get_mut(&conn) {
                if fill(ep, now, conn, &mut c.buf) {
                    s.room = true;
                    c.notify.notify_one();
                }
            }
        }
        while let Some(e) = ep.poll_event() {
            more = true;
            match e {
                ServerEvent::CloseConnection { conn, .. } => match conns.get_mut(&conn) {
                    Some(c) => {
                        fill(ep, now, conn, &mut c.buf);
                        c.closing = true;
                        c.notify.notify_one();
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
    s
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
    /// call fails with `FailReason::Rejected(code)`). Requests are handled
    /// concurrently, up to `ServerOptions::handlers_max` at once.
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
        let ep = Endpoint::new(options.config, seed)?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                ep,
                conns: BTreeMap::new(),
                receipts: BTreeMap::new(),
                timer_armed: mf_core::Instant::NEVER,
                shutting_down: false,
                stopped: false,
                connections_max: options.connections_max.max(1),
            }),
            clock: Clock::new(),
            timer: Notify::new(),
            readable: Notify::new(),
            room: Notify::new(),
            status: Notify::new(),
            accept_stop: Notify::new(),
            handlers_max: options.handlers_max.max(1),
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
        recv(&self.inner).await
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
            tokio::pin!(room);
            room.as_mut().enable();
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

    /// Hand every message and request to `handler` in background tasks.
    /// Use either this or [`Server::recv`], not both.
    pub fn serve<H: Handler>(&self, handler: H) {
        tokio::spawn(serve_task(self.inner.clone(), Arc::new(handler)));
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
                c.notify.notify_one();
            }
        });
        self.inner.signal(Signals { status: true, ..Default::default() });
    }

    async fn stopped(&self) {
        loop {
            let n = self.inner.status.notified();
            tokio::pin!(n);
            n.as_mut().enable();
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
}

async fn recv(inner: &Inner) -> Option<(SessionId, Incoming)> {
    loop {
        let readable = inner.readable.notified();
        tokio::pin!(readable);
        readable.as_mut().enable();
        let (item, stopped) = inner.with(|st, now| (st.ep.recv(now), st.stopped));
        if item.is_some() {
            return item;
        }
        if stopped {
            return None;
        }
        readable.await;
    }
}

async fn serve_task<H: Handler>(inner: Arc<Inner>, handler: Arc<H>) {
    let permits = Arc::new(Semaphore::new(inner.handlers_max));
    while let Some((session, item)) = recv(&inner).await {
        match item {
            Incoming::Message { channel, body } => {
                handler.message(Message { session, channel, body }).await;
            }
            Incoming::Request { id, channel, body } => {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let inner = inner.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let r = handler.request(Request { session, channel, body }).await;
                    inner.with(|st, now| match r {
                        Ok(resp) => {
                            // A refused response (too large) becomes a rejection,
                            // so the call still gets its one outcome.
                            if let Err(e) = st.ep.respond(now, session, id, resp) {
                                tracing::warn!(error = %e, "response refused; rejecting the request");
                                st.ep.reject(now, session, id, u16::MAX);
                            }
                        }
                        Err(code) => {
                            st.ep.reject(now, session, id, code);
                        }
                    });
                    drop(permit);
                });
            }
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
        let notify = Arc::new(Notify::new());
        let conn = inner.with(|st, now| {
            if st.shutting_down {
                return Err(true);
            }
            if st.conns.len() >= st.connections_max {
                return Err(false);
            }
            let conn = st.ep.accept(now);
            st.conns
                .insert(conn, ConnOut { buf: TransmitBuf::new(), notify: notify.clone(), closing: false });
            Ok(conn)
        });
        match conn {
            Ok(conn) => {
                tokio::spawn(conn_task(inner.clone(), conn, stream, notify));
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

async fn conn_task<S: Stream>(inner: Arc<Inner>, conn: ConnId, stream: S, notify: Arc<Notify>) {
    let (mut rd, mut wr) = stream.into_split();
    let mut out = TransmitBuf::new();
    let mut rbuf = vec![0u8; READ_BUF_BYTES];
    let mut closing = false;
    loop {
        if out.is_empty() {
            let gone = inner.with(|st, now| {
                let State { ep, conns, .. } = st;
                let Some(c) = conns.get_mut(&conn) else {
                    return true;
                };
                fill(ep, now, conn, &mut c.buf);
                std::mem::swap(&mut out, &mut c.buf);
                closing = c.closing;
                false
            });
            if gone {
                break;
            }
        }
        if closing {
            let rest = async {
                while !out.is_empty() {
                    let n = wr.write(out.chunk()).await?;
                    if n == 0 {
                        break;
                    }
                    out.advance(n);
                }
                wr.shutdown().await
            };
            let _ = tokio::time::timeout(Duration::from_millis(CLOSE_FLUSH_MS), rest).await;
            break;
        }
        let writing = !out.is_empty();
        let r = tokio::select! {
            biased;
            r = async {
                let mut iov = [IoSlice::new(&[]); IOV_MAX];
                let n = out.io_slices(&mut iov);
                wr.write_vectored(&iov[..n]).await
            }, if writing => match r {
                Ok(n) if n > 0 => {
                    out.advance(n);
                    Ok(())
                }
                _ => Err(()),
            },
            r = rd.read(&mut rbuf) => match r {
                Ok(n) if n > 0 => {
                    inner.with(|st, now| st.ep.handle_input(now, conn, &rbuf[..n]));
                    Ok(())
                }
                _ => Err(()),
            },
            _ = notify.notified() => Ok(()),
        };
        if r.is_err() {
            break;
        }
    }
    inner.with(|st, now| {
        st.conns.remove(&conn);
        st.ep.connection_lost(now, conn);
    });
}
