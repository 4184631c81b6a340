//! The async client: a handle over a session, driven by one task.
//!
//! The driver task owns the connection; the handles and the task share the
//! core [`mf_core::Client`] behind a mutex that is never held across an
//! `.await`. Handles call the core directly (so `try_send` and `try_recv`
//! are synchronous and exact), then wake the task, which follows the core's
//! driver loop: write what `poll_transmit` gives, act on events, re-arm the
//! timer.

use crate::clock::Clock;
use crate::error::{CallError, ConnectError, ReceiptError};
use crate::transport::{Connect, Stream};
use bytes::Bytes;
use mf_core::{
    ClientState, CloseReason, Config, Event, Failure, Incoming, MsgId, ReqId, SendError, TransmitBuf,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};

/// Bytes the driver reads per `read` call.
const READ_BUF_BYTES: usize = 64 << 10;
/// The driver stops pulling from the core once this many bytes wait for the
/// socket (the core keeps the rest queued, so memory stays bounded).
const WRITE_HIGH_WATER_BYTES: usize = 256 << 10;
/// Slices per `writev`.
const IOV_MAX: usize = 64;
/// How long a connection that the core closed gets to flush its CLOSE frame.
const CLOSE_FLUSH_MS: u64 = 200;

/// How a [`Client`] is set up.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Protocol limits and timers.
    pub config: Config,
    /// Seed for the session token and jitter. `None` (the default) draws it
    /// from the operating system; simulations pass a seed so runs replay.
    pub seed: Option<[u8; 32]>,
}

impl ClientOptions {
    /// Options with `config` and an OS-random seed.
    pub fn new(config: Config) -> Self {
        ClientOptions { config, seed: None }
    }

    /// Use `seed` instead of OS randomness (tests and simulation only: the
    /// session token derives from it).
    pub fn with_seed(mut self, seed: [u8; 32]) -> Self {
        self.seed = Some(seed);
        self
    }
}

pub(crate) fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    // Without OS randomness the token would be guessable (C8): refuse to run.
    getrandom::fill(&mut seed).expect("the operating system's random source failed");
    seed
}

type ReceiptTx = oneshot::Sender<Result<(), Failure>>;
type CallTx = oneshot::Sender<Result<Bytes, CallError>>;

/// State shared by the handles and the driver task.
struct State {
    core: mf_core::Client,
    /// Waiters for receipts, by message.
    receipts: BTreeMap<MsgId, ReceiptTx>,
    /// Waiters for responses, by call.
    calls: BTreeMap<ReqId, CallTx>,
    /// `Connected` events seen (first connect and every resume).
    connects: u64,
    /// Set once the session is over.
    ended: Option<CloseReason>,
    /// The driver task has stopped (session over, or the runtime shut down).
    driver_stopped: bool,
    /// Every handle is gone: close the session.
    handles_dropped: bool,
}

struct Inner {
    state: Mutex<State>,
    clock: Clock,
    /// Wakes the driver: the core has new work.
    driver: Notify,
    /// Wakes senders and callers waiting for queue room.
    room: Notify,
    /// Wakes receivers: the inbox has something, or the session ended.
    readable: Notify,
    /// Wakes waiters for a state change (connected, ended).
    status: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the core in an unknown state;
        // carrying on would risk the contract, so propagate it.
        self.state.lock().expect("mf-driver-tokio client state poisoned")
    }
}

/// Dropped with the last [`Client`] clone: closes the session gracefully.
struct HandleGuard {
    inner: Arc<Inner>,
}

impl Drop for HandleGuard {
    fn drop(&mut self) {
        if let Ok(mut st) = self.inner.state.lock() {
            st.handles_dropped = true;
        }
        self.inner.driver.notify_one();
    }
}

/// An async MessageFirst client: one session to one server, resumed
/// transparently through connection loss.
///
/// Cloning is cheap and every clone drives the same session. When the last
/// clone is dropped the session closes gracefully in the background.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use mf_driver_tokio::{Client, ClientOptions, Server, ServerOptions};
/// use mf_driver_tokio::transport::{TcpConnector, TcpListener};
///
/// let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
/// let addr = listener.local_addr().unwrap();
/// let server = Server::start(listener, ServerOptions::default()).unwrap();
/// server.serve(|req: mf_driver_tokio::Request| async move {
///     let mut answer = b"re: ".to_vec();
///     answer.extend_from_slice(&req.body);
///     Ok(bytes::Bytes::from(answer))
/// });
///
/// let client = Client::connect(TcpConnector::new(addr), ClientOptions::default()).await.unwrap();
/// let answer = client.call(0, "hello").await.unwrap();
/// assert_eq!(&answer[..], b"re: hello");
/// client.close().await;
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _guard: Arc<HandleGuard>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("Client").field("state", &st.core.state()).finish()
    }
}

/// Resolves when message's receipt comes back (the server application took
/// it), or with its one failure.
///
/// Dropping a `Receipt` only stops the waiting; the message is unaffected.
#[derive(Debug)]
pub struct Receipt {
    id: MsgId,
    rx: oneshot::Receiver<Result<(), Failure>>,
}

impl Receipt {
    pub(crate) fn new(id: MsgId, rx: oneshot::Receiver<Result<(), Failure>>) -> Self {
        Receipt { id, rx }
    }

    /// The message's id.
    pub fn id(&self) -> MsgId {
        self.id
    }

    /// The outcome if it is known yet (non-blocking poll).
    pub fn try_outcome(&mut self) -> Option<Result<(), ReceiptError>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r.map_err(ReceiptError::Failed)),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(ReceiptError::Stopped)),
        }
    }
}

impl Future for Receipt {
    type Output = Result<(), ReceiptError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| match r {
            Ok(r) => r.map_err(ReceiptError::Failed),
            Err(_) => Err(ReceiptError::Stopped),
        })
    }
}

/// Cancels its call in the core if dropped before the outcome arrived.
struct CallGuard<'a> {
    inner: &'a Inner,
    id: ReqId,
    armed: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(mut st) = self.inner.state.lock() {
            st.calls.remove(&self.id);
            // CallFailed(Cancelled) follows in the core; the waiter is gone so
            // the driver discards it. A CANCEL goes to the server if the
            // request left: the server application sees it at most once.
            st.core.cancel(self.id);
        }
        self.inner.driver.notify_one();
    }
}

impl Client {
    /// Start a session and wait until its first connection is established.
    ///
    /// Failed connection attempts are retried with the core's backoff for up
    /// to `resume_timeout_ms`; after that (or if the server refuses the
    /// session) this returns [`ConnectError::SessionLost`].
    ///
    /// Cancel safety: dropping the future drops the new session (it closes
    /// in the background); nothing had been sent.
    pub async fn connect<C: Connect>(connector: C, options: ClientOptions) -> Result<Client, ConnectError> {
        let client = Client::start(connector, options)?;
        client.wait_connected().await?;
        Ok(client)
    }

    /// Start a session without waiting for the connection. Messages and calls
    /// are accepted at once; the first ones leave in the same write as the
    /// handshake. Must be called inside a tokio runtime.
    pub fn start<C: Connect>(connector: C, options: ClientOptions) -> Result<Client, ConnectError> {
        let seed = options.seed.unwrap_or_else(os_seed);
        let core = mf_core::Client::new(options.config, seed).map_err(ConnectError::Config)?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                core,
                receipts: BTreeMap::new(),
                calls: BTreeMap::new(),
                connects: 0,
                ended: None,
                driver_stopped: false,
                handles_dropped: false,
            }),
            clock: Clock::new(),
            driver: Notify::new(),
            room: Notify::new(),
            readable: Notify::new(),
            status: Notify::new(),
        });
        tokio::spawn(drive(inner.clone(), Arc::new(connector)));
        let guard = Arc::new(HandleGuard { inner: inner.clone() });
        Ok(Client { inner, _guard: guard })
    }

    /// Wait until the session has a live, handshaken connection. Returns at
    /// once if it has one.
    ///
    /// Cancel safety: safe; it only waits.
    pub async fn wait_connected(&self) -> Result<(), ConnectError> {
        loop {
            let notified = self.inner.status.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.inner.lock();
                if let Some(reason) = st.ended {
                    return Err(ConnectError::SessionLost(reason));
                }
                if st.core.state() == ClientState::Connected {
                    return Ok(());
                }
                if st.driver_stopped {
                    return Err(ConnectError::Stopped);
                }
            }
            notified.await;
        }
    }

    // --- sending ------------------------------------------------------------

    /// Queue a one-way message, waiting while the send queue is full.
    /// Returns a [`Receipt`] for its outcome.
    ///
    /// Errors hand the message back: [`SendError::TooLarge`], or
    /// [`SendError::Closed`] once the session is closing or over.
    ///
    /// Cancel safety: safe. If the future is dropped before it completes,
    /// the message was not queued and will not be sent.
    pub async fn send(&self, channel: u16, body: impl Into<Bytes>) -> Result<Receipt, SendError> {
        let mut body = body.into();
        loop {
            let room = self.inner.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(channel, body) {
                Err(SendError::Full(b)) => body = b,
                r => return r,
            }
            room.await;
        }
    }

    /// [`Client::send`] that gives up after `timeout`, handing the message
    /// back in [`SendError::Full`].
    ///
    /// Cancel safety: safe, as [`Client::send`].
    pub async fn send_timeout(
        &self,
        channel: u16,
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Receipt, SendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut body = body.into();
        loop {
            let room = self.inner.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(channel, body) {
                Err(SendError::Full(b)) => body = b,
                r => return r,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(SendError::Full(body));
            }
        }
    }

    /// Queue a one-way message if there is room now; otherwise hand it back
    /// in [`SendError::Full`]. Never waits.
    pub fn try_send(&self, channel: u16, body: impl Into<Bytes>) -> Result<Receipt, SendError> {
        let mut st = self.inner.lock();
        if st.driver_stopped && st.ended.is_none() {
            return Err(SendError::Closed(body.into()));
        }
        let id = st.core.send(channel, body)?;
        let (tx, rx) = oneshot::channel();
        st.receipts.insert(id, tx);
        drop(st);
        self.inner.driver.notify_one();
        Ok(Receipt { id, rx })
    }

    // --- calls ----------------------------------------------------------------

    /// Call: send a request on `channel` and wait for its response, with no
    /// deadline (the session's own failures still end it).
    ///
    /// Cancel safety: dropping the future cancels the call. If the request
    /// had not left, it never will; if it had, a CANCEL follows it and a
    /// response that still arrives is discarded. The server application sees
    /// the request at most once either way.
    pub async fn call(&self, channel: u16, body: impl Into<Bytes>) -> Result<Bytes, CallError> {
        self.call_inner(channel, body.into(), None).await
    }

    /// [`Client::call`] with a deadline `timeout` from now, enforced by the
    /// core (the call fails with `FailReason::Deadline`, and the server is
    /// told to drop it).
    ///
    /// Cancel safety: as [`Client::call`].
    pub async fn call_timeout(
        &self,
        channel: u16,
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, CallError> {
        self.call_inner(channel, body.into(), Some(timeout)).await
    }

    /// Start a call if there is room now (else [`SendError::Full`] hands the
    /// request back) and return a future for its response.
    ///
    /// Cancel safety: dropping the returned [`PendingCall`] cancels the call,
    /// as for [`Client::call`].
    pub fn try_call(
        &self,
        channel: u16,
        body: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<PendingCall, SendError> {
        let (id, rx) = self.start_call(channel, body.into(), timeout)?;
        Ok(PendingCall { client: self.clone(), id, rx, done: false })
    }

    fn start_call(
        &self,
        channel: u16,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<(ReqId, oneshot::Receiver<Result<Bytes, CallError>>), SendError> {
        let mut st = self.inner.lock();
        if st.driver_stopped && st.ended.is_none() {
            return Err(SendError::Closed(body));
        }
        let deadline = timeout.map(|d| self.inner.clock.now() + d);
        let id = st.core.call(channel, body, deadline)?;
        let (tx, rx) = oneshot::channel();
        st.calls.insert(id, tx);
        drop(st);
        self.inner.driver.notify_one();
        Ok((id, rx))
    }

    async fn call_inner(
        &self,
        channel: u16,
        mut body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Bytes, CallError> {
        let (id, rx) = loop {
            let room = self.inner.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.start_call(channel, body, timeout) {
                Ok(started) => break started,
                Err(SendError::Full(b)) => body = b,
                Err(e) => return Err(CallError::Refused(e)),
            }
            room.await;
        };
        let mut guard = CallGuard { inner: &self.inner, id, armed: true };
        let r = rx.await;
        guard.armed = false;
        r.unwrap_or(Err(CallError::Stopped))
    }

    // --- receiving ------------------------------------------------------------

    /// Take the next message the server sent, waiting for one. `None` once
    /// the session is over and everything that arrived has been taken.
    ///
    /// Taking a message is what sends its receipt and returns its credit.
    ///
    /// Cancel safety: safe. A message is taken from the session only in the
    /// poll that returns it.
    pub async fn recv(&self) -> Option<Incoming> {
        loop {
            let readable = self.inner.readable.notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            {
                let mut st = self.inner.lock();
                let now = self.inner.clock.now();
                if let Some(m) = st.core.recv(now) {
                    drop(st);
                    self.inner.driver.notify_one();
                    return Some(m);
                }
                if st.ended.is_some() || st.driver_stopped {
                    return None;
                }
            }
            readable.await;
        }
    }

    /// [`Client::recv`] that gives up after `timeout` (`Ok(None)`: timed out;
    /// `Err(())`: the session is over and drained).
    ///
    /// Cancel safety: safe, as [`Client::recv`].
    pub async fn recv_timeout(&self, timeout: Duration) -> Result<Option<Incoming>, SessionOver> {
        match tokio::time::timeout(timeout, self.recv()).await {
            Ok(Some(m)) => Ok(Some(m)),
            Ok(None) => Err(SessionOver),
            Err(_) => Ok(None),
        }
    }

    /// Take a message if one is waiting. Never waits.
    pub fn try_recv(&self) -> Option<Incoming> {
        let m = {
            let mut st = self.inner.lock();
            let now = self.inner.clock.now();
            st.core.recv(now)
        };
        if m.is_some() {
            self.inner.driver.notify_one();
        }
        m
    }

    /// Incoming messages as a [`futures_core::Stream`]; it ends when the
    /// session is over and drained.
    ///
    /// Cancel safety: dropping the stream between items loses nothing.
    pub fn messages(&self) -> impl futures_core::Stream<Item = Incoming> + Send + 'static {
        futures_util::stream::unfold(self.clone(), |c| async move { c.recv().await.map(|m| (m, c)) })
    }

    // --- lifecycle -------------------------------------------------------------

    /// Close gracefully: no new sends; once every message has its receipt
    /// and every call its answer (or after `close_timeout_ms`), the session
    /// ends. Returns why it ended (normally `CloseCode::Normal`).
    ///
    /// Cancel safety: safe. The close has begun when this is first polled
    /// and proceeds in the background if the future is dropped.
    pub async fn close(&self) -> CloseReason {
        {
            let mut st = self.inner.lock();
            let now = self.inner.clock.now();
            st.core.close(now);
        }
        self.inner.driver.notify_one();
        self.closed().await
    }

    /// Wait until the session is over, and say why.
    ///
    /// Cancel safety: safe; it only waits.
    pub async fn closed(&self) -> CloseReason {
        loop {
            let notified = self.inner.status.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.inner.lock();
                if let Some(r) = st.ended {
                    return r;
                }
                if st.driver_stopped {
                    return CloseReason { code: mf_core::CloseCode::Shutdown, by_peer: false };
                }
            }
            notified.await;
        }
    }

    /// Why the session ended, if it has.
    pub fn session_ended(&self) -> Option<CloseReason> {
        self.inner.lock().ended
    }

    /// Where the session stands.
    pub fn state(&self) -> ClientState {
        self.inner.lock().core.state()
    }

    /// How many times a connection was established (1 + resumes).
    pub fn connects(&self) -> u64 {
        self.inner.lock().connects
    }

    /// The core's counters.
    pub fn stats(&self) -> mf_core::Stats {
        self.inner.lock().core.stats().clone()
    }

    /// The core's queue depths.
    pub fn queues(&self) -> mf_core::Queues {
        self.inner.lock().core.queues()
    }

    /// The session token (secret).
    pub fn token(&self) -> mf_core::Token {
        self.inner.lock().core.token()
    }
}

/// A call in flight, from [`Client::try_call`]. Resolves to the response or
/// the call's one failure. Dropping it cancels the call.
pub struct PendingCall {
    client: Client,
    id: ReqId,
    rx: oneshot::Receiver<Result<Bytes, CallError>>,
    done: bool,
}

impl PendingCall {
    /// The call's id.
    pub fn id(&self) -> ReqId {
        self.id
    }
}

impl Future for PendingCall {
    type Output = Result<Bytes, CallError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let r = std::task::ready!(Pin::new(&mut self.rx).poll(cx));
        self.done = true;
        Poll::Ready(r.unwrap_or(Err(CallError::Stopped)))
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if !self.done {
            drop(CallGuard { inner: &self.client.inner, id: self.id, armed: true });
        }
    }
}

impl std::fmt::Debug for PendingCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCall").field("id", &self.id).finish()
    }
}

/// The session is over and every message that arrived has been taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionOver;

impl std::fmt::Display for SessionOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("session over")
    }
}

impl std::error::Error for SessionOver {}

// --- the driver task -----------------------------------------------------------

type ConnectFuture<S> = Pin<Box<dyn Future<Output = io::Result<S>> + Send>>;

enum Wake<S> {
    Notified,
    Timer,
    Connected(io::Result<S>),
    Read(io::Result<usize>),
    Wrote(io::Result<usize>),
}

/// What the event drain asks the task to do.
#[derive(Default)]
struct Actions {
    reconnect: bool,
    close_conn: bool,
    ended: bool,
    room: bool,
    readable: bool,
    status: bool,
}

fn connect_future<C: Connect>(connector: &Arc<C>, timeout_ms: u64) -> ConnectFuture<<C as Connect>::Stream> {
    let c = connector.clone();
    Box::pin(async move {
        match tokio::time::timeout(Duration::from_millis(timeout_ms), c.connect()).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    })
}

/// Hand the rest of a closing connection's output to a task that flushes it
/// (briefly) and closes the socket, so the driver never waits on it.
fn retire<W: tokio::io::AsyncWrite + Unpin + Send + 'static>(mut w: W, tbuf: &mut TransmitBuf) {
    let mut rest = Vec::new();
    tbuf.copy_to_vec(&mut rest);
    tokio::spawn(async move {
        let flush = async {
            w.write_all(&rest).await?;
            w.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_millis(CLOSE_FLUSH_MS), flush).await;
    });
}

fn dispatch(st: &mut State, e: Event, act: &mut Actions) {
    match e {
        Event::Connected { .. } => {
            st.connects += 1;
            act.status = true;
            act.room = true;
        }
        Event::Delivered(id) => {
            if let Some(tx) = st.receipts.remove(&id) {
                let _ = tx.send(Ok(()));
            }
        }
        Event::SendFailed { id, failure } => {
            if let Some(tx) = st.receipts.remove(&id) {
                let _ = tx.send(Err(failure));
            }
        }
        Event::Response { id, body } => {
            act.room = true;
            if let Some(tx) = st.calls.remove(&id) {
                let _ = tx.send(Ok(body));
            }
        }
        Event::CallFailed { id, failure } => {
            act.room = true;
            if let Some(tx) = st.calls.remove(&id) {
                let _ = tx.send(Err(CallError::Failed(failure)));
            }
        }
        Event::Readable => act.readable = true,
        Event::ConnectionClosed { .. } => act.close_conn = true,
        Event::Reconnect => act.reconnect = true,
        Event::SessionEnded { reason } => {
            st.ended = Some(reason);
            act.ended = true;
        }
        _ => {}
    }
}

async fn drive<C: Connect>(inner: Arc<Inner>, connector: Arc<C>) {
    let _stopped = DriverGuard(inner.clone());
    type Halves<C> = (<<C as Connect>::Stream as Stream>::Read, <<C as Connect>::Stream as Stream>::Write);
    let (handshake_ms, ..) = {
        let st = inner.lock();
        (st.core.config().handshake_timeout_ms,)
    };
    let mut conn: Option<Halves<C>> = None;
    let mut connecting: Option<ConnectFuture<C::Stream>> = Some(connect_future(&connector, handshake_ms));
    let mut tbuf = TransmitBuf::new();
    let mut rbuf = vec![0u8; READ_BUF_BYTES];
    let mut closing_requested = false;
    let sleep = tokio::time::sleep_until(inner.clock.to_tokio(mf_core::Instant::NEVER));
    tokio::pin!(sleep);

    loop {
        // Steps 1-3 of the driver loop, under the lock.
        let mut act = Actions::default();
        let deadline = {
            let mut st = inner.lock();
            let now = inner.clock.now();
            if st.handles_dropped && !closing_requested {
                closing_requested = true;
                st.core.close(now);
            }
            if st.core.poll_timeout().is_some_and(|t| t <= now) {
                st.core.handle_timeout(now);
            }
            let queued_before = st.core.queues().send_queued_msgs;
            if conn.is_some() {
                while tbuf.len() < WRITE_HIGH_WATER_BYTES {
                    let before = tbuf.len();
                    st.core.poll_transmit(now, &mut tbuf);
                    if tbuf.len() == before {
                        break;
                    }
                }
            }
            if st.core.queues().send_queued_msgs < queued_before {
                act.room = true;
            }
            while let Some(e) = st.core.poll_event() {
                dispatch(&mut st, e, &mut act);
            }
            if act.close_conn {
                if let Some((_, w)) = conn.take() {
                    retire(w, &mut tbuf);
                }
                tbuf.clear();
                st.core.connection_lost(now);
                while let Some(e) = st.core.poll_event() {
                    dispatch(&mut st, e, &mut act);
                }
            }
            if act.ended {
                st.driver_stopped = true;
            }
            st.core.poll_timeout()
        };
        if act.room || act.ended {
            inner.room.notify_waiters();
        }
        if act.readable || act.ended {
            inner.readable.notify_waiters();
        }
        if act.status || act.ended {
            inner.status.notify_waiters();
        }
        if act.ended {
            // Write what is left (a CLOSE frame) and stop: the session is over.
            if let Some((_, w)) = conn.take() {
                retire(w, &mut tbuf);
            }
            return;
        }
        if act.reconnect && connecting.is_none() {
            if let Some((_, w)) = conn.take() {
                retire(w, &mut tbuf);
            }
            connecting = Some(connect_future(&connector, handshake_ms));
        }
        match deadline {
            Some(t) => sleep.as_mut().reset(inner.clock.to_tokio(t)),
            None => sleep.as_mut().reset(inner.clock.to_tokio(mf_core::Instant::NEVER)),
        }

        let wake: Wake<C::Stream> = {
            let (rd, wr) = match conn.as_mut() {
                Some((r, w)) => (Some(r), Some(w)),
                None => (None, None),
            };
            let writing = wr.is_some() && !tbuf.is_empty();
            let reading = rd.is_some();
            let tb = &tbuf;
            tokio::select! {
                biased;
                r = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => Wake::Connected(r),
                r = async {
                    let mut iov = [IoSlice::new(&[]); IOV_MAX];
                    let n = tb.io_slices(&mut iov);
                    wr.expect("guarded").write_vectored(&iov[..n]).await
                }, if writing => Wake::Wrote(r),
                r = async { rd.expect("guarded").read(&mut rbuf).await }, if reading => Wake::Read(r),
                _ = inner.driver.notified() => Wake::Notified,
                _ = &mut sleep, if deadline.is_some() => Wake::Timer,
            }
        };

        match wake {
            Wake::Notified | Wake::Timer => {}
            Wake::Connected(r) => {
                connecting = None;
                let mut st = inner.lock();
                let now = inner.clock.now();
                match r {
                    Ok(s) => {
                        conn = Some(s.into_split());
                        tbuf.clear();
                        st.core.connected(now);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "connect failed");
                        st.core.connect_failed(now);
                    }
                }
            }
            Wake::Read(r) => {
                let mut st = inner.lock();
                let now = inner.clock.now();
                match r {
                    Ok(n) if n > 0 => st.core.handle_input(now, &rbuf[..n]),
                    _ => {
                        conn = None;
                        tbuf.clear();
                        st.core.connection_lost(now);
                    }
                }
            }
            Wake::Wrote(r) => match r {
                Ok(n) if n > 0 => tbuf.advance(n),
                _ => {
                    conn = None;
                    tbuf.clear();
                    let mut st = inner.lock();
                    let now = inner.clock.now();
                    st.core.connection_lost(now);
                }
            },
        }
    }
}

/// Marks the state when the driver task ends for any reason (session over,
/// or the runtime dropped the task), so handles never wait forever.
struct DriverGuard(Arc<Inner>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Ok(mut st) = self.0.state.lock() {
            st.driver_stopped = true;
        }
        self.0.room.notify_waiters();
        self.0.readable.notify_waiters();
        self.0.status.notify_waiters();
    }
}
