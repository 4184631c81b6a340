//! The async client: a handle over a session, driven by one task.
//!
//! The handles and the driver task share the core [`mf_core::Client`], the
//! connection and the call waiters behind one mutex that is never held
//! across an `.await`. Handles call the core directly (so `try_send` and
//! `try_recv` are synchronous and exact). An awaited `call` also writes its
//! request itself when no other write is pending, with the driver task's
//! waker, so the request leaves without a task switch and a full socket
//! still wakes the driver. Everything else is the driver task's, which
//! follows the core's driver loop on every turn: inputs (connect, timer,
//! read), then transmit, then events (completing waiters), then the timer.

use crate::calls::CallSlots;
use crate::clock::Clock;
use crate::error::{CallError, ConnectError, ReceiptError};
use crate::io_stats::IoStats;
use crate::transport::{Connect, Stream};
use bytes::Bytes;
use mf_core::{
    ClientState, CloseReason, Config, Event, Failure, Incoming, MsgId, ReqId, SendError, TransmitBuf,
};
use std::collections::BTreeMap;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, oneshot};

/// The driver stops pulling from the core once this many bytes wait for the
/// socket (the core keeps the rest queued, so memory stays bounded).
const WRITE_HIGH_WATER_BYTES: usize = 256 << 10;
/// Slices per `writev`.
const IOV_MAX: usize = 64;
/// Writes per flush before the writer yields (the driver comes back).
const WRITES_PER_FLUSH: usize = 16;
/// Rounds of (inputs, outputs) per driver turn before it yields to other
/// tasks; each round reads at most once.
const ROUNDS_PER_TURN: usize = 16;
/// How long a connection that the core closed gets to flush its CLOSE frame
/// when the socket cannot take it at once.
const CLOSE_FLUSH_MS: u64 = 200;

/// How a [`Client`] is set up.
///
/// ```
/// use mf_driver_tokio::ClientOptions;
/// let mut options = ClientOptions::default();
/// options.write_batch_us = Some(0); // one write per message (no batching)
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Protocol limits and timers.
    pub config: Config,
    /// Seed for the session token and jitter. `None` (the default) draws it
    /// from the operating system; simulations pass a seed so runs replay.
    pub seed: Option<[u8; 32]>,
    /// Write batching, as mf-driver-mio's `write_batch_us`:
    ///
    /// - `None` (the default): output queued without waiting (`send`,
    ///   `try_send`, `try_call`) leaves at the driver task's next turn, so
    ///   everything queued until the application yields goes in one write.
    ///   An awaited `call` writes its request at once unless another
    ///   write was made since the last read (then it joins the driver's).
    /// - `Some(0)`: no batching: every message and call is written at once
    ///   by the task that queued it, one write each.
    /// - `Some(us)`: output queued within `us` microseconds of the previous
    ///   write waits until then and leaves together with what follows;
    ///   awaiting a call whose request has not left (`call`, a
    ///   [`PendingCall`]) writes at once.
    pub write_batch_us: Option<u64>,
}

impl ClientOptions {
    /// Options with `config` and an OS-random seed.
    pub fn new(config: Config) -> Self {
        ClientOptions { config, seed: None, write_batch_us: None }
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

/// The write-batching policy, from [`ClientOptions::write_batch_us`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Batching {
    /// Output leaves at the writer's next turn.
    Turn,
    /// Every message is written at once by whoever queued it.
    Off,
    /// Output queued within `us` of the previous write waits until then.
    Hold { us: u64 },
}

impl Batching {
    pub(crate) fn new(write_batch_us: Option<u64>) -> Self {
        match write_batch_us {
            None => Batching::Turn,
            Some(0) => Batching::Off,
            Some(us) => Batching::Hold { us },
        }
    }
}

/// A live connection's halves, type-erased so the state is not generic.
struct Conn {
    rd: Box<dyn AsyncRead + Unpin + Send>,
    wr: Box<dyn AsyncWrite + Unpin + Send>,
}

/// What one flush did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flush {
    /// Everything the core had is written.
    Done,
    /// The socket is full; the waker passed in is woken when it drains.
    Blocked,
    /// The write budget ran out with more to write; nobody will be woken.
    Budget,
    /// The connection failed.
    Lost,
}

/// State shared by the handles and the driver task.
struct State {
    core: mf_core::Client,
    conn: Option<Conn>,
    /// Output pulled from the core, not yet written.
    tbuf: TransmitBuf,
    /// Where reads land (whoever reads: the driver or a waiting caller).
    rbuf: Box<[u8]>,
    /// The waker of every read poll (see [`ReadWake`]), built on the
    /// driver's first turn.
    read_wake: Option<(Arc<ReadWake>, Waker)>,
    /// A read poll returned `Pending` with `read_wake`: until it fires,
    /// polling again would find nothing.
    read_armed: bool,
    /// The call whose caller reads its own response, if one does.
    reader_call: Option<ReqId>,
    /// The core may have output that was not pulled yet.
    tx_wanted: bool,
    /// What a caller's event drain left for the driver to do.
    pending: Actions,
    /// Waiters for responses, by call.
    calls: CallSlots,
    /// Waiters for receipts, by message.
    receipts: BTreeMap<MsgId, ReceiptTx>,
    /// The driver task's waker (from its last turn) and whether it has
    /// been woken since.
    driver_waker: Option<Waker>,
    driver_woken: bool,
    /// The deadline the driver's timer fires at (`NEVER`: none). A command
    /// that makes the core's deadline earlier wakes the driver to re-arm.
    armed: mf_core::Instant,
    /// Transmit pulls so far (see [`CallSlots::queued_at_pull`]).
    pulls: u64,
    /// No write since the last read or driver turn: an awaited call may
    /// write at once (`Batching::Turn`).
    inline_ok: bool,
    /// Output was queued and held back (`Batching::Hold`).
    held: bool,
    last_write: mf_core::Instant,
    batching: Batching,
    /// A sender or caller waits for queue room / a receiver for a message.
    room_wanted: bool,
    readable_wanted: bool,
    /// `Connected` events seen (first connect and every resume).
    connects: u64,
    /// Set once the session is over.
    ended: Option<CloseReason>,
    /// The driver task has stopped (session over, or the runtime shut down).
    driver_stopped: bool,
    /// Every handle is gone: close the session.
    handles_dropped: bool,
    io: IoStats,
}

impl State {
    fn wake_driver(&mut self) {
        if !self.driver_woken {
            if let Some(w) = &self.driver_waker {
                w.wake_by_ref();
                self.driver_woken = true;
            }
        }
    }

    /// Pull from the core and write until it has nothing more, the socket
    /// is full, or the budget is spent. A full socket wakes `cx`'s waker.
    fn flush(&mut self, cx: &mut Context<'_>, now: mf_core::Instant) -> Flush {
        let State { conn, tbuf, core, io, pulls, last_write, inline_ok, held, tx_wanted, .. } = self;
        let Some(conn) = conn.as_mut() else { return Flush::Done };
        for _ in 0..WRITES_PER_FLUSH {
            if *tx_wanted && tbuf.len() < WRITE_HIGH_WATER_BYTES {
                loop {
                    let before = tbuf.len();
                    core.poll_transmit(now, tbuf);
                    if tbuf.len() == before {
                        // Drained: nothing more until the next input or command.
                        *tx_wanted = false;
                        break;
                    }
                    if tbuf.len() >= WRITE_HIGH_WATER_BYTES {
                        break;
                    }
                }
                *pulls += 1;
                *held = false;
            }
            if tbuf.is_empty() {
                return Flush::Done;
            }
            let mut iov = [IoSlice::new(&[]); IOV_MAX];
            let n = tbuf.io_slices(&mut iov);
            match Pin::new(&mut conn.wr).poll_write_vectored(cx, &iov[..n]) {
                Poll::Ready(Ok(k)) if k > 0 => {
                    tbuf.advance(k);
                    io.write_syscalls += 1;
                    io.bytes_written += k as u64;
                    *last_write = now;
                    *inline_ok = false;
                }
                Poll::Ready(_) => {
                    io.write_syscalls += 1;
                    return Flush::Lost;
                }
                Poll::Pending => {
                    io.write_would_block += 1;
                    return Flush::Blocked;
                }
            }
        }
        if tbuf.is_empty() { Flush::Done } else { Flush::Budget }
    }

    /// Write from the calling task, registering the driver's waker if the
    /// socket is full. False if that is not possible now.
    fn flush_inline(&mut self, now: mf_core::Instant) -> bool {
        if self.conn.is_none() || !self.tbuf.is_empty() {
            return false;
        }
        let Some(waker) = self.driver_waker.take() else { return false };
        let writes = self.io.write_syscalls;
        let r = self.flush(&mut Context::from_waker(&waker), now);
        self.driver_waker = Some(waker);
        self.io.inline_writes += self.io.write_syscalls - writes;
        match r {
            Flush::Done | Flush::Blocked => {}
            Flush::Budget => self.wake_driver(),
            Flush::Lost => {
                self.lose_conn(now);
                self.wake_driver();
            }
        }
        true
    }

    /// After an application command that queued output: write it at once,
    /// hold it, or leave it to the driver (`waited`: the caller waits for
    /// its outcome).
    fn after_queue(&mut self, clock: Clock, waited: bool) {
        self.tx_wanted = true;
        let inline = match self.batching {
            Batching::Off => true,
            Batching::Turn => waited && self.inline_ok,
            Batching::Hold { us } => {
                waited || clock.now().as_micros() >= self.last_write.as_micros().saturating_add(us)
            }
        };
        if inline && self.flush_inline(clock.now()) {
            if self.room_wanted || self.core.poll_timeout().is_some_and(|t| t < self.armed) {
                self.wake_driver();
            }
            return;
        }
        match self.batching {
            Batching::Hold { us } if !waited => {
                self.held = true;
                if self.last_write + Duration::from_micros(us) < self.armed {
                    self.wake_driver();
                }
            }
            _ => self.wake_driver(),
        }
    }

    fn open_conn<S: Stream>(&mut self, s: S, now: mf_core::Instant) {
        let (rd, wr) = s.into_split();
        self.conn = Some(Conn { rd: Box::new(rd), wr: Box::new(wr) });
        self.tbuf.clear();
        self.read_armed = false;
        self.io.connections += 1;
        self.inline_ok = true;
        self.core.connected(now);
        self.tx_wanted = true;
    }

    /// The transport failed: drop it; the core resends on the next one.
    fn lose_conn(&mut self, now: mf_core::Instant) {
        self.conn = None;
        self.tbuf.clear();
        self.read_armed = false;
        self.core.connection_lost(now);
        self.tx_wanted = true;
    }

    /// The core closed the connection: write what it still gives (a CLOSE
    /// frame) and close the socket, in the background if the socket cannot
    /// take it at once.
    fn retire_conn(&mut self, cx: &mut Context<'_>, now: mf_core::Instant) {
        if self.conn.is_none() {
            return;
        }
        self.tx_wanted = true;
        if self.flush(cx, now) != Flush::Done {
            if let Some(conn) = self.conn.take() {
                let mut rest = Vec::new();
                self.tbuf.copy_to_vec(&mut rest);
                tokio::spawn(flush_and_close(conn, rest));
            }
        }
        // Dropping the write half shuts the sending direction down.
        self.conn = None;
        self.tbuf.clear();
    }

    /// Read once and hand the bytes to the core (`now` is read from `clock`
    /// only if bytes came). Read readiness wakes the driver, and also the
    /// caller reading its own response if there is one; while a `Pending`
    /// registration has not fired, no poll is made at all.
    fn read_once(&mut self, clock: Clock, now: &mut Option<mf_core::Instant>) -> Poll<bool> {
        let State { conn, rbuf, read_wake, read_armed, core, io, inline_ok, tx_wanted, .. } = self;
        let (Some(conn), Some((rw, waker))) = (conn.as_mut(), read_wake.as_ref()) else {
            return Poll::Pending;
        };
        if *read_armed && !rw.fired.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // Cleared before the poll: a wake-up during or after it sets it again.
        rw.fired.store(false, Ordering::Release);
        let mut rb = ReadBuf::new(rbuf);
        match Pin::new(&mut conn.rd).poll_read(&mut Context::from_waker(waker), &mut rb) {
            Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                let n = rb.filled().len();
                *read_armed = false;
                io.read_syscalls += 1;
                io.bytes_read += n as u64;
                *inline_ok = true;
                let now = *now.get_or_insert_with(|| clock.now());
                core.handle_input(now, &rbuf[..n]);
                *tx_wanted = true;
                crate::read_buf::grow_if_filled(rbuf, n);
                Poll::Ready(true)
            }
            Poll::Ready(_) => {
                *read_armed = false;
                io.read_syscalls += 1;
                Poll::Ready(false)
            }
            Poll::Pending => {
                *read_armed = true;
                io.read_would_block += 1;
                Poll::Pending
            }
        }
    }

    /// A caller waiting for its call reads the socket itself, so that the
    /// response wakes it directly instead of the driver, which would then
    /// wake it. Read readiness still wakes the driver too (which stays
    /// responsible: a caller may stop polling at any time); one caller at a
    /// time does this. Follows the driver loop: input, then events; the
    /// transmit step and the timer are left to the driver, woken if needed.
    fn caller_read(&mut self, call: ReqId, caller: &Waker, clock: Clock, sig: &mut Signals) {
        if self.conn.is_none() || self.reader_call.is_some_and(|c| c != call) {
            return;
        }
        let Some((rw, _)) = self.read_wake.as_ref() else { return };
        if self.reader_call.is_none() {
            rw.set_caller(Some(caller));
            self.reader_call = Some(call);
        } else {
            rw.set_caller(Some(caller));
        }
        let mut now = None;
        for _ in 0..ROUNDS_PER_TURN {
            match self.read_once(clock, &mut now) {
                Poll::Ready(true) => self.io.inline_reads += 1,
                Poll::Ready(false) => {
                    self.lose_conn(now.unwrap_or_else(|| clock.now()));
                    self.wake_driver();
                    break;
                }
                Poll::Pending => break,
            }
            let act = self.drain_events(sig);
            if act.any() {
                self.pending.merge(&act);
                self.wake_driver();
            }
        }
        if now.is_some() && (self.tx_wanted || self.core.poll_timeout().is_some_and(|t| t < self.armed)) {
            self.wake_driver();
        }
    }

    /// The caller of `call` stops reading (its call ended).
    fn caller_done(&mut self, call: ReqId) {
        if self.reader_call == Some(call) {
            self.reader_call = None;
            if let Some((rw, _)) = self.read_wake.as_ref() {
                rw.set_caller(None);
            }
        }
    }

    /// Step 2 of the driver loop: act on every event.
    fn drain_events(&mut self, sig: &mut Signals) -> Actions {
        let mut act = Actions::default();
        while let Some(e) = self.core.poll_event() {
            match e {
                Event::Connected { .. } => {
                    self.connects += 1;
                    sig.status = true;
                    sig.room = true;
                }
                Event::Delivered(id) => {
                    if let Some(tx) = self.receipts.remove(&id) {
                        let _ = tx.send(Ok(()));
                    }
                }
                Event::SendFailed { id, failure } => {
                    if let Some(tx) = self.receipts.remove(&id) {
                        let _ = tx.send(Err(failure));
                    }
                }
                Event::Response { id, body } => self.calls.complete(id, Ok(body)),
                Event::CallFailed { id, failure } => self.calls.complete(id, Err(CallError::Failed(failure))),
                Event::Readable if self.readable_wanted => {
                    self.readable_wanted = false;
                    sig.readable = true;
                }
                Event::ConnectionClosed { .. } => act.close_conn = true,
                Event::Reconnect => act.reconnect = true,
                Event::SessionEnded { reason } => {
                    self.ended = Some(reason);
                    act.ended = true;
                }
                _ => {}
            }
        }
        act
    }
}

async fn flush_and_close(mut conn: Conn, rest: Vec<u8>) {
    let flush = async {
        conn.wr.write_all(&rest).await?;
        conn.wr.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_millis(CLOSE_FLUSH_MS), flush).await;
}

struct Inner {
    state: Mutex<State>,
    clock: Clock,
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
            st.wake_driver();
        }
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

/// Cancels its call in the core if dropped before the outcome was taken.
struct CallGuard<'a> {
    inner: &'a Inner,
    id: Option<ReqId>,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            cancel_call(self.inner, id);
        }
    }
}

fn cancel_call(inner: &Inner, id: ReqId) {
    if let Ok(mut st) = inner.state.lock() {
        st.calls.forget(id);
        st.caller_done(id);
        // CallFailed(Cancelled) follows in the core; nobody waits for it, so
        // the driver discards it. A CANCEL goes to the server if the request
        // left: the server application sees it at most once.
        if st.core.cancel(id) {
            st.tx_wanted = true;
            st.wake_driver();
        }
    }
}

/// Take `id`'s outcome, or register `cx` to be woken with it (reading the
/// socket meanwhile if no other caller does).
fn poll_call(inner: &Inner, id: ReqId, cx: &mut Context<'_>) -> Poll<Result<Bytes, CallError>> {
    let mut sig = Signals::default();
    let r = {
        let mut st = inner.lock();
        let mut r = st.calls.poll(id, cx);
        if matches!(r, Some(Poll::Pending)) && !st.driver_stopped {
            // Waiting for a call whose request is held back: write it now.
            if matches!(st.batching, Batching::Hold { .. })
                && st.calls.queued_at_pull(id) == Some(st.pulls)
                && st.flush_inline(inner.clock.now())
                && st.core.poll_timeout().is_some_and(|t| t < st.armed)
            {
                st.wake_driver();
            }
            // Reading may complete this very call: no wake-up for that (this
            // task looks at once); `poll` registers the waker again if not.
            st.calls.clear_waker(id);
            st.caller_read(id, cx.waker(), inner.clock, &mut sig);
            r = st.calls.poll(id, cx);
        }
        match r {
            Some(Poll::Pending) if !st.driver_stopped => Poll::Pending,
            r => {
                st.caller_done(id);
                match r {
                    Some(Poll::Ready(out)) => Poll::Ready(out),
                    // Not tracked (or never to be answered): the driver stopped.
                    _ => {
                        st.calls.forget(id);
                        Poll::Ready(Err(CallError::Stopped))
                    }
                }
            }
        }
    };
    signal(inner, &sig);
    r
}

fn signal(inner: &Inner, sig: &Signals) {
    if sig.room {
        inner.room.notify_waiters();
    }
    if sig.readable {
        inner.readable.notify_waiters();
    }
    if sig.status {
        inner.status.notify_waiters();
    }
}

impl Client {
    /// Start a session and wait until its first connection is established
    /// (the handshake completed).
    ///
    /// Failed connection attempts are retried with the core's backoff for up
    /// to `resume_timeout_ms`; after that (or if the server refuses the
    /// session) this returns [`ConnectError::SessionLost`].
    ///
    /// For a short-lived connection, [`Client::start`] and a first call save
    /// the handshake's round trip: the HELLO and the request share a write.
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
        let calls_max = options.config.calls_in_flight_max as usize;
        let handshake_ms = options.config.handshake_timeout_ms;
        let core = mf_core::Client::new(options.config, seed).map_err(ConnectError::Config)?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                core,
                conn: None,
                tbuf: TransmitBuf::new(),
                rbuf: crate::read_buf::new(),
                read_wake: None,
                read_armed: false,
                reader_call: None,
                tx_wanted: true,
                pending: Actions::default(),
                calls: CallSlots::new(calls_max),
                receipts: BTreeMap::new(),
                driver_waker: None,
                driver_woken: false,
                armed: mf_core::Instant::NEVER,
                pulls: 0,
                inline_ok: true,
                held: false,
                last_write: mf_core::Instant::ZERO,
                batching: Batching::new(options.write_batch_us),
                room_wanted: false,
                readable_wanted: false,
                connects: 0,
                ended: None,
                driver_stopped: false,
                handles_dropped: false,
                io: IoStats::default(),
            }),
            clock: Clock::new(),
            room: Notify::new(),
            readable: Notify::new(),
            status: Notify::new(),
        });
        let connector = Arc::new(connector);
        let driver = Driver {
            inner: inner.clone(),
            connecting: Some(connect_future(&connector, handshake_ms)),
            connector,
            handshake_ms,
            closing_requested: false,
            sleep: Box::pin(tokio::time::sleep_until(inner.clock.to_tokio(mf_core::Instant::NEVER))),
            sleep_at: mf_core::Instant::NEVER,
        };
        tokio::spawn(driver);
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
            // Created before the check: a wake-up after it is not lost.
            let room = self.inner.room.notified();
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
        let id = match st.core.send(channel, body) {
            Ok(id) => id,
            Err(e) => {
                if matches!(e, SendError::Full(_)) {
                    st.room_wanted = true;
                }
                return Err(e);
            }
        };
        let (tx, rx) = oneshot::channel();
        st.receipts.insert(id, tx);
        st.after_queue(self.inner.clock, false);
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
        let id = self.start_call(channel, body.into(), timeout, false)?;
        Ok(PendingCall { inner: self.inner.clone(), id, done: false })
    }

    fn start_call(
        &self,
        channel: u16,
        body: Bytes,
        timeout: Option<Duration>,
        waited: bool,
    ) -> Result<ReqId, SendError> {
        let mut st = self.inner.lock();
        if st.driver_stopped && st.ended.is_none() {
            return Err(SendError::Closed(body));
        }
        let deadline = timeout.map(|d| self.inner.clock.now() + d);
        let id = match st.core.call(channel, body, deadline) {
            Ok(id) => id,
            Err(e) => {
                if matches!(e, SendError::Full(_)) {
                    st.room_wanted = true;
                }
                return Err(e);
            }
        };
        let pulls = st.pulls;
        st.calls.open(id, pulls);
        st.after_queue(self.inner.clock, waited);
        Ok(id)
    }

    async fn call_inner(
        &self,
        channel: u16,
        mut body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Bytes, CallError> {
        let id = loop {
            let room = self.inner.room.notified();
            match self.start_call(channel, body, timeout, true) {
                Ok(id) => break id,
                Err(SendError::Full(b)) => body = b,
                Err(e) => return Err(CallError::Refused(e)),
            }
            room.await;
        };
        let mut guard = CallGuard { inner: &self.inner, id: Some(id) };
        let r = poll_fn(|cx| poll_call(&self.inner, id, cx)).await;
        guard.id = None;
        r
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
            {
                let mut st = self.inner.lock();
                let now = self.inner.clock.now();
                if let Some(m) = st.core.recv(now) {
                    st.tx_wanted = true;
                    st.wake_driver();
                    return Some(m);
                }
                if st.ended.is_some() || st.driver_stopped {
                    return None;
                }
                st.readable_wanted = true;
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
        let mut st = self.inner.lock();
        let now = self.inner.clock.now();
        let m = st.core.recv(now);
        if m.is_some() {
            st.tx_wanted = true;
            st.wake_driver();
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
    /// ends. Returns why it ended (normally `CloseCode::Normal`) once the
    /// CLOSE frame is written (without waiting for the server's reply).
    ///
    /// Cancel safety: safe. The close has begun when this is first polled
    /// and proceeds in the background if the future is dropped.
    pub async fn close(&self) -> CloseReason {
        {
            let mut st = self.inner.lock();
            let now = self.inner.clock.now();
            st.core.close(now);
            st.tx_wanted = true;
            st.wake_driver();
        }
        self.closed().await
    }

    /// Wait until the session is over (and its last frame written), and say
    /// why.
    ///
    /// Cancel safety: safe; it only waits.
    pub async fn closed(&self) -> CloseReason {
        loop {
            let notified = self.inner.status.notified();
            {
                let st = self.inner.lock();
                if st.driver_stopped {
                    return st
                        .ended
                        .unwrap_or(CloseReason { code: mf_core::CloseCode::Shutdown, by_peer: false });
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

    /// Reads, writes, bytes and wake-ups of this client's connections.
    pub fn io_stats(&self) -> IoStats {
        self.inner.lock().io
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
    inner: Arc<Inner>,
    id: ReqId,
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
        if self.done {
            return Poll::Ready(Err(CallError::Stopped));
        }
        let r = std::task::ready!(poll_call(&self.inner, self.id, cx));
        self.done = true;
        Poll::Ready(r)
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if !self.done {
            cancel_call(&self.inner, self.id);
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

/// What the event drain asks the driver to do.
#[derive(Clone, Copy, Debug, Default)]
struct Actions {
    close_conn: bool,
    reconnect: bool,
    ended: bool,
}

impl Actions {
    fn any(&self) -> bool {
        self.close_conn || self.reconnect || self.ended
    }

    fn merge(&mut self, o: &Actions) {
        self.close_conn |= o.close_conn;
        self.reconnect |= o.reconnect;
        self.ended |= o.ended;
    }
}

/// The waker of every read poll: it wakes the driver, and the caller that
/// reads its own response if there is one. Being one object, a registration
/// made by either stays valid for both; `fired` says whether it was used up.
struct ReadWake {
    driver: Waker,
    caller: Mutex<Option<Waker>>,
    fired: AtomicBool,
}

impl ReadWake {
    fn new(driver: Waker) -> (Arc<ReadWake>, Waker) {
        let rw = Arc::new(ReadWake { driver, caller: Mutex::new(None), fired: AtomicBool::new(false) });
        let waker = Waker::from(rw.clone());
        (rw, waker)
    }

    fn set_caller(&self, w: Option<&Waker>) {
        if let Ok(mut c) = self.caller.lock() {
            match (c.as_mut(), w) {
                (Some(old), Some(w)) => old.clone_from(w),
                (_, w) => *c = w.cloned(),
            }
        }
    }
}

impl std::task::Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if let Ok(c) = self.caller.lock() {
            if let Some(w) = c.as_ref() {
                w.wake_by_ref();
            }
        }
        self.driver.wake_by_ref();
    }
}

/// Whom to wake once the lock is released.
#[derive(Default)]
struct Signals {
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

/// The driver task: a hand-written future, so one turn takes the lock once
/// and polls exactly what can make progress.
struct Driver<C: Connect> {
    inner: Arc<Inner>,
    connector: Arc<C>,
    connecting: Option<ConnectFuture<C::Stream>>,
    handshake_ms: u64,
    closing_requested: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// What `sleep` is armed for (`NEVER`: not armed). Re-armed only when
    /// the core's deadline moves earlier or the sleep fired, not every time
    /// the deadline moves (the idle timer moves on every read).
    sleep_at: mf_core::Instant,
}

impl<C: Connect> Future for Driver<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let inner = this.inner.clone();
        let mut sig = Signals::default();
        let mut st = inner.lock();
        st.driver_woken = false;
        st.io.wakeups += 1;
        if !st.driver_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.driver_waker = Some(cx.waker().clone());
        }
        if !st.read_wake.as_ref().is_some_and(|(rw, _)| rw.driver.will_wake(cx.waker())) {
            st.read_wake = Some(ReadWake::new(cx.waker().clone()));
            st.read_armed = false;
            st.reader_call = None;
        }
        // One clock read per turn: a turn takes microseconds.
        let now = inner.clock.now();
        let mut rounds = 0;
        let ended = loop {
            let mut again = false;
            if st.handles_dropped && !this.closing_requested {
                this.closing_requested = true;
                st.core.close(now);
                st.tx_wanted = true;
            }
            // Inputs: the connect attempt, a due timer, one read.
            if let Some(f) = this.connecting.as_mut() {
                if let Poll::Ready(r) = f.as_mut().poll(cx) {
                    this.connecting = None;
                    again = true;
                    match r {
                        Ok(s) => st.open_conn(s, now),
                        Err(e) => {
                            tracing::debug!(error = %e, "connect failed");
                            st.core.connect_failed(now);
                            st.tx_wanted = true;
                        }
                    }
                }
            }
            if st.core.poll_timeout().is_some_and(|t| t <= now) {
                st.core.handle_timeout(now);
                st.tx_wanted = true;
            }
            match st.read_once(inner.clock, &mut Some(now)) {
                Poll::Ready(true) => again = true,
                Poll::Ready(false) => {
                    st.lose_conn(now);
                    again = true;
                }
                Poll::Pending => {}
            }
            // Outputs: transmit, then events, then (below) the timer.
            let hold = match st.batching {
                Batching::Hold { us } => st.held && now < st.last_write + Duration::from_micros(us),
                _ => false,
            };
            if st.conn.is_some() && !hold && (st.tx_wanted || !st.tbuf.is_empty()) {
                match st.flush(cx, now) {
                    Flush::Done | Flush::Blocked => {}
                    Flush::Budget => again = true,
                    Flush::Lost => {
                        st.lose_conn(now);
                        again = true;
                    }
                }
            }
            let mut act = st.drain_events(&mut sig);
            act.merge(&std::mem::take(&mut st.pending));
            if act.close_conn {
                st.retire_conn(cx, now);
                st.core.connection_lost(now);
                st.tx_wanted = true;
                let more = st.drain_events(&mut sig);
                act.reconnect |= more.reconnect;
                act.ended |= more.ended;
                again = true;
            }
            if act.ended {
                st.retire_conn(cx, now);
                break true;
            }
            if act.reconnect && this.connecting.is_none() {
                st.retire_conn(cx, now);
                this.connecting = Some(connect_future(&this.connector, this.handshake_ms));
                again = true;
            }
            if st.room_wanted {
                st.room_wanted = false;
                sig.room = true;
            }
            rounds += 1;
            if !again {
                break false;
            }
            if rounds >= ROUNDS_PER_TURN {
                // More to do: come back after other tasks had a turn.
                cx.waker().wake_by_ref();
                break false;
            }
        };
        if ended {
            st.driver_stopped = true;
            st.driver_waker = None;
            st.read_wake = None;
            drop(st);
            inner.room.notify_waiters();
            inner.readable.notify_waiters();
            inner.status.notify_waiters();
            return Poll::Ready(());
        }
        // Step 3: the timer (and the end of a write hold).
        let mut deadline = st.core.poll_timeout().unwrap_or(mf_core::Instant::NEVER);
        if let Batching::Hold { us } = st.batching {
            if st.held {
                deadline = deadline.min(st.last_write + Duration::from_micros(us));
            }
        }
        if deadline < this.sleep_at || this.sleep_at <= now {
            this.sleep_at = deadline;
            if deadline != mf_core::Instant::NEVER {
                this.sleep.as_mut().reset(inner.clock.to_tokio(deadline));
            }
        }
        st.armed = this.sleep_at;
        st.inline_ok = true;
        drop(st);
        signal(&inner, &sig);
        if this.sleep_at != mf_core::Instant::NEVER && this.sleep.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl<C: Connect> Drop for Driver<C> {
    /// Whatever ended the task (the session, or the runtime shutting down),
    /// no handle may wait for it forever.
    fn drop(&mut self) {
        if let Ok(mut st) = self.inner.state.lock() {
            st.driver_stopped = true;
            st.driver_waker = None;
            st.read_wake = None;
            st.conn = None;
            st.calls.complete_all(|| Err(CallError::Stopped));
            st.receipts.clear();
        }
        self.inner.room.notify_waiters();
        self.inner.readable.notify_waiters();
        self.inner.status.notify_waiters();
    }
}
