//! The client side of a session.

use crate::config::{Config, ConfigError};
use crate::error::{CloseCode, CloseReason, SendError};
use crate::session::{Event, Incoming, LinkState, MsgId, Phase, ReqId, Role, Session};
use crate::stats::{Queues, Stats};
use crate::time::Instant;
use crate::token::{Rng, Token};
use crate::wire::TransmitBuf;
use bytes::Bytes;
use std::sync::Arc;

/// Where a client stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// No connection (never connected, or waiting to reconnect).
    Disconnected,
    /// Connected; HELLO sent, WELCOME not yet received. Messages may already
    /// flow (within the early credit, or resent optimistically on resume).
    Handshaking,
    /// Connected and established.
    Connected,
    /// Graceful close in progress.
    Closing,
    /// The session is over; no more connections.
    Ended(CloseReason),
}

/// One client session: the state machine a driver runs over a sequence of
/// transport connections. See the [crate docs](crate) for the loop a driver
/// follows.
///
/// ```
/// use mf_core::{Client, Config, Instant, TransmitBuf, seed_from_u64};
/// let mut client = Client::new(Config::default(), seed_from_u64(1)).unwrap();
/// let now = Instant::ZERO;
/// let id = client.send(0, "hello").unwrap();
/// client.connected(now);
/// let mut out = TransmitBuf::new();
/// client.poll_transmit(now, &mut out);
/// // The HELLO and the first message share one write: no extra round trip.
/// assert_eq!(out.len(), (8 + 72) + (8 + 5)); // HELLO + MESSAGE("hello")
/// # let _ = id;
/// ```
pub struct Client {
    s: Session,
}

impl Client {
    /// A new session with a fresh token from `seed` (use OS randomness in
    /// production, a test's seed in simulation). No connection yet: open one
    /// and call [`Client::connected`].
    pub fn new(config: Config, seed: [u8; 32]) -> Result<Client, ConfigError> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let token = rng.token();
        let session_seed = rng.below_inclusive(u64::MAX);
        Ok(Client { s: Session::new(Role::Client, token, Arc::new(config), session_seed) })
    }

    /// The session token (secret: whoever holds it can resume the session).
    pub fn token(&self) -> Token {
        self.s.token
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.s.config
    }

    // --- transport input -------------------------------------------------

    /// A new transport connection is open: the handshake starts, and queued
    /// messages may go in the same write as the HELLO.
    pub fn connected(&mut self, now: Instant) {
        self.s.client_connected(now);
    }

    /// The connect attempt failed; a `Reconnect` event follows after backoff.
    pub fn connect_failed(&mut self, now: Instant) {
        self.s.connect_failed(now);
    }

    /// The transport failed (EOF, reset, write error). Anything unacknowledged
    /// is resent after the next `connected`.
    pub fn connection_lost(&mut self, now: Instant) {
        self.s.connection_lost(now);
    }

    /// Bytes read from the transport.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        self.s.handle_input(now, data);
    }

    /// Run due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.s.handle_timeout(now);
    }

    // --- outputs ---------------------------------------------------------

    /// Append bytes to write to the transport. Returns `true` if it stopped
    /// at `transmit_bytes_max` and more may be ready (call again once there
    /// is room); `false` means everything ready now has been appended, so a
    /// driver need not call again until the next input, command or timer.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut TransmitBuf) -> bool {
        self.s.poll_transmit(now, buf)
    }

    /// When to call `handle_timeout` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.s.poll_timeout()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.s.poll_event()
    }

    // --- application commands -------------------------------------------

    /// Queue a one-way message on `channel`. Its outcome arrives as
    /// `Event::Delivered` (the receipt) or `Event::SendFailed`. A refused
    /// message comes back inside the error.
    pub fn send(&mut self, channel: u16, body: impl Into<Bytes>) -> Result<MsgId, SendError> {
        self.s.send(channel, body.into())
    }

    /// Queue a request. Exactly one of `Event::Response` or `Event::CallFailed`
    /// follows for the returned id; `deadline` bounds the wait.
    pub fn call(
        &mut self,
        channel: u16,
        body: impl Into<Bytes>,
        deadline: Option<Instant>,
    ) -> Result<ReqId, SendError> {
        self.s.call(channel, body.into(), deadline)
    }

    /// Cancel a call: `Event::CallFailed` with `Cancelled` follows at once.
    /// False if the call had already ended.
    pub fn cancel(&mut self, id: ReqId) -> bool {
        let ok = self.s.end_call(id, crate::error::FailReason::Cancelled);
        self.s.sync_call_timer();
        self.s.check_send_room();
        ok
    }

    /// Take the next message the server sent.
    pub fn recv(&mut self, now: Instant) -> Option<Incoming> {
        self.s.recv(now)
    }

    /// Close gracefully: no new sends; once every message has its receipt and
    /// every call its answer (or after `close_timeout_ms`) a CLOSE goes out
    /// and the session ends.
    pub fn close(&mut self, now: Instant) {
        self.s.close(now, CloseCode::Normal);
    }

    // --- getters ---------------------------------------------------------

    /// Where the client stands.
    pub fn state(&self) -> ClientState {
        match self.s.phase {
            Phase::Ended(r) => ClientState::Ended(r),
            Phase::Closing => ClientState::Closing,
            Phase::Open => match self.s.link.state {
                LinkState::Down => ClientState::Disconnected,
                LinkState::AwaitWelcome => ClientState::Handshaking,
                LinkState::Up => ClientState::Connected,
            },
        }
    }

    /// True once the session is over.
    pub fn is_ended(&self) -> bool {
        self.s.is_ended()
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        self.s.stats()
    }

    /// Queue depths.
    pub fn queues(&self) -> Queues {
        self.s.queues()
    }

    /// Messages waiting in the inbox.
    pub fn inbox_len(&self) -> usize {
        self.s.inbox_len()
    }

    /// Bytes held: the session's state, queues and the message bodies it
    /// keeps; never more than `Config::session_memory_bytes_max`.
    pub fn memory_bytes(&self) -> usize {
        self.s.memory_bytes()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("token", &self.s.token).field("state", &self.state()).finish()
    }
}
