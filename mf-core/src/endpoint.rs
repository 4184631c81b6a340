//! The server side: many sessions, many connections, one lookup to route a
//! handshake to its session.

use crate::config::{Config, ConfigError};
use crate::error::{ApiMisuse, CloseCode, CloseReason, SendError};
use crate::session::{Event, Incoming, LinkState, MsgId, ReqId, Role, Session};
use crate::stats::{Queues, Stats};
use crate::time::Instant;
use crate::token::{Rng, Token};
use crate::wire::{Decoder, Frame, HANDSHAKE_BODY_LEN, Handshake, PROTOCOL_VERSION, TransmitBuf, encode};
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

/// A session held by an [`Endpoint`]. Stale ids (of ended sessions) are
/// detected, never confused with a new session in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(u64);

/// A transport connection known to an [`Endpoint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(u64);

/// The detail of a CLOSE(SessionUnknown): how long this endpoint has been up
/// and how long it keeps a session without a connection, both in ms. With
/// them a client that was never welcomed can tell whether the server could
/// have seen its first HELLO (see `Session::may_recreate`).
#[derive(Clone, Copy, Debug, Default)]
struct CloseDetail {
    bytes: [u8; 16],
    len: usize,
}

impl CloseDetail {
    fn unknown_session(uptime_ms: u64, linger_ms: u64) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&uptime_ms.to_le_bytes());
        bytes[8..].copy_from_slice(&linger_ms.to_le_bytes());
        CloseDetail { bytes, len: 16 }
    }
}

fn pack(idx: u32, generation: u32) -> u64 {
    ((generation as u64) << 32) | idx as u64
}

fn unpack(v: u64) -> (usize, u32) {
    ((v & 0xffff_ffff) as usize, (v >> 32) as u32)
}

/// What an [`Endpoint`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A handshake completed: a new session, or an existing one resumed on `conn`.
    SessionUp {
        /// The session.
        session: SessionId,
        /// The connection now carrying it.
        conn: ConnId,
        /// Its token (drivers with several endpoints route resumes by it).
        token: Token,
        /// True if it existed before.
        resumed: bool,
    },
    /// Write what `poll_transmit` still gives for `conn` (a CLOSE frame), close
    /// the socket, then call `connection_lost`.
    CloseConnection {
        /// Which connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// An event of one session (`Readable`, `Delivered`, `SendFailed`,
    /// `SessionEnded`, ...). After `SessionEnded` the token can no longer
    /// resume; the id stays valid while its inbox still holds messages.
    Session {
        /// Which session.
        session: SessionId,
        /// What happened.
        event: Event,
    },
}

enum ConnState {
    Free,
    Handshaking {
        decoder: Decoder,
    },
    Bound(u32),
    /// A CLOSE frame to write (with its detail), then nothing.
    Closing(Option<(CloseCode, CloseDetail)>),
}

struct ConnSlot {
    generation: u32,
    state: ConnState,
    dirty: bool,
}

struct SessionSlot {
    generation: u32,
    session: Option<Session>,
    conn: Option<ConnId>,
    /// Earliest deadline this slot has in the timer heap.
    heap_deadline: Instant,
    in_ready: bool,
}

/// A server: sessions keyed by token, connections, their timers.
///
/// The driver feeds it connections and bytes; it routes each connection's
/// HELLO to a new or existing session (resume), bounds sessions and pending
/// handshakes, expires sessions that linger without a connection, and
/// refuses unknown tokens.
///
/// ```
/// use mf_core::{Client, Config, Endpoint, Incoming, Instant, TransmitBuf, seed_from_u64};
/// let now = Instant::ZERO;
/// let mut server = Endpoint::new(Config::default(), seed_from_u64(1)).unwrap();
/// let mut client = Client::new(Config::default(), seed_from_u64(2)).unwrap();
///
/// let call = client.call(0, "ping", None).unwrap();
/// client.connected(now);
/// let conn = server.accept(now);
///
/// let mut wire = TransmitBuf::new();
/// let mut bytes = Vec::new();
/// client.poll_transmit(now, &mut wire);
/// wire.copy_to_vec(&mut bytes);
/// server.handle_input(now, conn, &bytes);
///
/// let (session, req) = server.recv(now).unwrap();
/// let Incoming::Request { id, body, .. } = req else { panic!() };
/// assert_eq!(&body[..], b"ping");
/// server.respond(now, session, id, "pong").unwrap();
///
/// bytes.clear();
/// server.poll_transmit(now, conn, &mut wire);
/// wire.copy_to_vec(&mut bytes);
/// client.handle_input(now, &bytes);
/// let mut got = None;
/// while let Some(e) = client.poll_event() {
///     if let mf_core::Event::Response { id, body } = e {
///         got = Some((id, body));
///     }
/// }
/// assert_eq!(got, Some((call, bytes::Bytes::from("pong"))));
/// ```
pub struct Endpoint {
    config: Arc<Config>,
    rng: Rng,
    conns: Vec<ConnSlot>,
    conn_free: Vec<u32>,
    sessions: Vec<SessionSlot>,
    session_free: Vec<u32>,
    by_token: BTreeMap<Token, u32>,
    live_sessions: u32,
    handshaking: u32,
    /// Handshake deadlines in accept order (so already sorted).
    handshake_q: VecDeque<(Instant, ConnId)>,
    /// Session deadlines, lazily deleted.
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// Sessions with messages in their inbox, round robin.
    ready: VecDeque<u32>,
    dirty: VecDeque<ConnId>,
    events: VecDeque<ServerEvent>,
    shutting_down: bool,
    /// The earliest time this endpoint was given: its start, as far as it knows.
    started: Instant,
    /// The latest time it was given.
    latest: Instant,
}

impl Endpoint {
    /// A server endpoint started at `now`. `seed` keys its generator (OS
    /// randomness in production). Knowing its start lets the endpoint tell a
    /// client whose very first handshake was cut whether it can safely
    /// create its session afresh (see `CloseCode::SessionUnknown` in WIRE.md).
    pub fn new_at(config: Config, seed: [u8; 32], now: Instant) -> Result<Endpoint, ConfigError> {
        let mut ep = Endpoint::new(config, seed)?;
        ep.saw(now);
        Ok(ep)
    }

    /// A server endpoint whose start is the first time it is given (prefer
    /// [`Endpoint::new_at`]). `seed` keys its generator (OS randomness in
    /// production).
    pub fn new(config: Config, seed: [u8; 32]) -> Result<Endpoint, ConfigError> {
        config.validate()?;
        Ok(Endpoint {
            config: Arc::new(config),
            rng: Rng::new(seed),
            conns: Vec::new(),
            conn_free: Vec::new(),
            sessions: Vec::new(),
            session_free: Vec::new(),
            by_token: BTreeMap::new(),
            live_sessions: 0,
            handshaking: 0,
            handshake_q: VecDeque::new(),
            heap: BinaryHeap::new(),
            ready: VecDeque::new(),
            dirty: VecDeque::new(),
            events: VecDeque::new(),
            shutting_down: false,
            started: Instant::NEVER,
            latest: Instant::ZERO,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Track the span of time this endpoint has seen. Its start can only be
    /// overestimated (a later first call), which makes the uptime it reports
    /// smaller: the safe direction for `Session::may_recreate`.
    fn saw(&mut self, now: Instant) {
        self.started = self.started.min(now);
        self.latest = self.latest.max(now);
    }

    fn conn(&mut self, id: ConnId) -> Option<&mut ConnSlot> {
        let (idx, generation) = unpack(id.0);
        self.conns.get_mut(idx).filter(|c| c.generation == generation && !matches!(c.state, ConnState::Free))
    }

    fn session_idx(&self, id: SessionId) -> Option<u32> {
        let (idx, generation) = unpack(id.0);
        self.sessions
            .get(idx)
            .filter(|s| s.generation == generation && s.session.is_some())
            .map(|_| idx as u32)
    }

    fn sid(&self, idx: u32) -> SessionId {
        SessionId(pack(idx, self.sessions[idx as usize].generation))
    }

    fn mark_dirty(&mut self, id: ConnId) {
        if let Some(c) = self.conn(id) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push_back(id);
            }
        }
    }

    fn close_conn(&mut self, id: ConnId, code: Option<CloseCode>, reason: CloseReason) {
        let detail = match code {
            Some(CloseCode::SessionUnknown) => {
                let uptime_ms = self.latest.saturating_since(self.started).as_millis() as u64;
                CloseDetail::unknown_session(uptime_ms, self.config.session_linger_ms)
            }
            _ => CloseDetail::default(),
        };
        let Some(c) = self.conn(id) else { return };
        let was_handshaking = matches!(c.state, ConnState::Handshaking { .. });
        c.state = ConnState::Closing(code.map(|c| (c, detail)));
        if was_handshaking {
            self.handshaking -= 1;
        }
        self.events.push_back(ServerEvent::CloseConnection { conn: id, reason });
        self.mark_dirty(id);
    }

    // --- transport input -------------------------------------------------

    /// A new transport connection. Its first bytes must be a HELLO within
    /// `handshake_timeout_ms`. Past `handshakes_max` (or while shutting down)
    /// it is closed at once with a typed reason.
    pub fn accept(&mut self, now: Instant) -> ConnId {
        self.saw(now);
        let idx = match self.conn_free.pop() {
            Some(i) => i as usize,
            None => {
                // Generations start at a random point, so ids from another
                // endpoint (another worker, an earlier process) do not alias.
                let generation = self.rng.below_inclusive(u32::MAX as u64) as u32;
                self.conns.push(ConnSlot { generation, state: ConnState::Free, dirty: false });
                self.conns.len() - 1
            }
        };
        let slot = &mut self.conns[idx];
        slot.generation = slot.generation.wrapping_add(1);
        slot.state = ConnState::Handshaking { decoder: Decoder::new(HANDSHAKE_BODY_LEN) };
        slot.dirty = false;
        let id = ConnId(pack(idx as u32, slot.generation));
        self.handshaking += 1;
        let refuse = if self.shutting_down {
            Some(CloseCode::Shutdown)
        } else if self.handshaking > self.config.handshakes_max {
            Some(CloseCode::HandshakeLimit)
        } else {
            None
        };
        match refuse {
            Some(code) => self.close_conn(id, Some(code), CloseReason { code, by_peer: false }),
            None => {
                let deadline = now.add_millis(self.config.handshake_timeout_ms);
                self.handshake_q.push_back((deadline, id));
            }
        }
        id
    }

    /// Bytes read from `conn`.
    pub fn handle_input(&mut self, now: Instant, conn: ConnId, mut data: &[u8]) {
        self.saw(now);
        let Some(c) = self.conn(conn) else { return };
        match &mut c.state {
            ConnState::Handshaking { decoder } => {
                let mut hello = None;
                let res = decoder.decode(data, |f| match f {
                    Frame::Hello(h) => {
                        hello = Some(h);
                        Ok(false)
                    }
                    _ => Err(CloseCode::UnexpectedFrame),
                });
                match res {
                    Err(code) => {
                        self.close_conn(conn, Some(code), CloseReason { code, by_peer: false });
                    }
                    Ok(used) => {
                        let Some(h) = hello else { return };
                        data = &data[used..];
                        match self.on_hello(now, conn, &h) {
                            Ok(idx) => {
                                if !data.is_empty() {
                                    self.with_session(idx, |s| s.handle_input(now, data));
                                }
                            }
                            Err(code) => {
                                self.close_conn(conn, Some(code), CloseReason { code, by_peer: false });
                            }
                        }
                    }
                }
            }
            ConnState::Bound(idx) => {
                let idx = *idx;
                self.with_session(idx, |s| s.handle_input(now, data));
            }
            ConnState::Closing(_) | ConnState::Free => {}
        }
    }

    fn on_hello(&mut self, now: Instant, conn: ConnId, h: &Handshake) -> Result<u32, CloseCode> {
        if h.version != PROTOCOL_VERSION {
            return Err(CloseCode::VersionMismatch);
        }
        if self.shutting_down {
            return Err(CloseCode::Shutdown);
        }
        // A create for a token we hold is a retry by the same client whose
        // first HELLO got through but whose WELCOME did not: allowed while
        // the session has received no data (nothing can be delivered twice).
        let retry = !h.resume
            && self.by_token.get(&h.token).is_some_and(|&i| {
                self.sessions[i as usize].session.as_ref().is_some_and(|s| s.rx.recv_seq == 0)
            });
        let idx = if h.resume || retry {
            let Some(&idx) = self.by_token.get(&h.token) else {
                return Err(CloseCode::SessionUnknown);
            };
            // Validate before detaching the current connection, so a bad
            // resume cannot knock a good connection off.
            if let Some(s) = self.sessions[idx as usize].session.as_ref() {
                s.check_resume(h)?;
            }
            if let Some(old) = self.sessions[idx as usize].conn.take() {
                let code = CloseCode::Superseded;
                self.close_conn(old, Some(code), CloseReason { code, by_peer: false });
                if let Some(s) = self.sessions[idx as usize].session.as_mut() {
                    s.close_link_with(code, false);
                }
            }
            idx
        } else {
            if self.by_token.contains_key(&h.token) {
                return Err(CloseCode::TokenInUse);
            }
            if self.live_sessions >= self.config.sessions_max {
                return Err(CloseCode::SessionLimit);
            }
            if h.recv_seq != 0 || h.send_start_seq != 0 || h.consumed_msgs != 0 || h.consumed_bytes != 0 {
                return Err(CloseCode::ResumeMismatch);
            }
            let seed = self.rng.below_inclusive(u64::MAX);
            let session = Session::new(Role::Server, h.token, self.config.clone(), seed);
            let idx = match self.session_free.pop() {
                Some(i) => i,
                None => {
                    let generation = self.rng.below_inclusive(u32::MAX as u64) as u32;
                    self.sessions.push(SessionSlot {
                        generation,
                        session: None,
                        conn: None,
                        heap_deadline: Instant::NEVER,
                        in_ready: false,
                    });
                    (self.sessions.len() - 1) as u32
                }
            };
            let slot = &mut self.sessions[idx as usize];
            slot.generation = slot.generation.wrapping_add(1);
            slot.session = Some(session);
            slot.heap_deadline = Instant::NEVER;
            slot.in_ready = false;
            self.by_token.insert(h.token, idx);
            self.live_sessions += 1;
            idx
        };
        let slot = &mut self.sessions[idx as usize];
        let Some(s) = slot.session.as_mut() else {
            return Err(CloseCode::SessionUnknown);
        };
        s.server_attach(now, h)?;
        slot.conn = Some(conn);
        self.handshaking -= 1;
        if let Some(c) = self.conn(conn) {
            c.state = ConnState::Bound(idx);
        }
        self.sync(idx);
        Ok(idx)
    }

    /// The transport of `conn` is gone (closed by us after `CloseConnection`,
    /// or failed). Its session, if any, lingers for a resume.
    pub fn connection_lost(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conn(conn) else { return };
        let state = std::mem::replace(&mut c.state, ConnState::Free);
        let (idx, _) = unpack(conn.0);
        self.conn_free.push(idx as u32);
        match state {
            ConnState::Handshaking { .. } => self.handshaking -= 1,
            ConnState::Bound(sidx) => {
                let slot = &mut self.sessions[sidx as usize];
                if slot.conn == Some(conn) {
                    slot.conn = None;
                    self.with_session(sidx, |s| s.connection_lost(now));
                }
            }
            ConnState::Closing(_) | ConnState::Free => {}
        }
    }

    /// Run due timers: handshake deadlines and every session whose timer is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.saw(now);
        while let Some(&(deadline, conn)) = self.handshake_q.front() {
            if deadline > now {
                break;
            }
            self.handshake_q.pop_front();
            if self.conn(conn).is_some_and(|c| matches!(c.state, ConnState::Handshaking { .. })) {
                let code = CloseCode::HandshakeTimeout;
                self.close_conn(conn, Some(code), CloseReason { code, by_peer: false });
            }
        }
        while let Some(&Reverse((t, idx, generation))) = self.heap.peek() {
            if t > now {
                break;
            }
            self.heap.pop();
            let Some(slot) = self.sessions.get_mut(idx as usize) else {
                continue;
            };
            if slot.generation != generation || slot.session.is_none() || slot.heap_deadline != t {
                continue;
            }
            slot.heap_deadline = Instant::NEVER;
            self.with_session(idx, |s| s.handle_timeout(now));
        }
    }

    // --- outputs ---------------------------------------------------------

    /// Append bytes to write to `conn`. Returns `true` if it stopped at
    /// `transmit_bytes_max` and more may be ready; `false` means everything
    /// ready for `conn` has been appended (as [`Client::poll_transmit`]).
    ///
    /// [`Client::poll_transmit`]: crate::Client::poll_transmit
    pub fn poll_transmit(&mut self, now: Instant, conn: ConnId, buf: &mut TransmitBuf) -> bool {
        let Some(c) = self.conn(conn) else { return false };
        match &mut c.state {
            ConnState::Closing(code) => {
                if let Some((code, d)) = code.take() {
                    encode::close(buf, code, &d.bytes[..d.len]);
                }
                false
            }
            ConnState::Bound(idx) => {
                let idx = *idx;
                let Some(s) = self.sessions[idx as usize].session.as_mut() else { return false };
                let more = s.poll_transmit(now, buf);
                // Not dirty again: the driver calls until nothing comes out.
                self.sync_inner(idx, false);
                more
            }
            ConnState::Handshaking { .. } | ConnState::Free => false,
        }
    }

    /// A connection that may have something to transmit (since it was last
    /// returned). Drivers loop over these after every input.
    pub fn poll_dirty(&mut self) -> Option<ConnId> {
        while let Some(id) = self.dirty.pop_front() {
            if let Some(c) = self.conn(id) {
                c.dirty = false;
                return Some(id);
            }
        }
        None
    }

    /// When to call `handle_timeout` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hs = self.handshake_q.front().map(|e| e.0);
        let s = self.heap.peek().map(|r| r.0.0);
        match (hs, s) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    // --- application commands -------------------------------------------

    /// Take the next message or request from any session (round robin).
    pub fn recv(&mut self, now: Instant) -> Option<(SessionId, Incoming)> {
        while let Some(idx) = self.ready.pop_front() {
            let slot = &mut self.sessions[idx as usize];
            slot.in_ready = false;
            let Some(s) = slot.session.as_mut() else { continue };
            let item = s.recv(now);
            let more = s.inbox_len() > 0;
            // Taking a message changes little: maybe a credit to send soon
            // (a timer) or at once (dirty). A full sync is only needed once
            // the session has ended and may be freed.
            let light = item.is_some() && !s.is_ended();
            if light {
                let deadline = s.poll_timeout().unwrap_or(Instant::NEVER);
                if deadline != slot.heap_deadline {
                    slot.heap_deadline = deadline;
                    if deadline != Instant::NEVER {
                        self.heap.push(Reverse((deadline, idx, slot.generation)));
                    }
                }
                let urgent = s.link.credit_pending;
                let conn = slot.conn;
                if more {
                    slot.in_ready = true;
                    self.ready.push_back(idx);
                }
                if let Some(conn) = conn.filter(|_| urgent) {
                    self.mark_dirty(conn);
                }
                if self.heap.len() > 2 * self.sessions.len() + 64 {
                    self.compact_heap();
                }
                self.prune_heap();
            } else {
                if more {
                    slot.in_ready = true;
                    self.ready.push_back(idx);
                }
                self.sync(idx);
            }
            if let Some(item) = item {
                return Some((self.sid(idx), item));
            }
        }
        None
    }

    /// Take the next message or request from one session.
    pub fn recv_from(&mut self, now: Instant, session: SessionId) -> Option<Incoming> {
        let idx = self.session_idx(session)?;
        self.with_session(idx, |s| s.recv(now)).flatten()
    }

    /// Answer a request taken with `recv`. `Ok(false)` if it is no longer open
    /// (the client cancelled it, or the session ended); the response is then
    /// dropped. A refused response comes back in the error.
    pub fn respond(
        &mut self,
        _now: Instant,
        session: SessionId,
        req: ReqId,
        body: impl Into<Bytes>,
    ) -> Result<bool, SendError> {
        let body = body.into();
        let Some(idx) = self.session_idx(session) else {
            return Ok(false);
        };
        let slot = &mut self.sessions[idx as usize];
        let Some(s) = slot.session.as_mut() else { return Ok(false) };
        let r = s.respond(req, body);
        // Answering only queues output (no events, no timers): mark the
        // connection dirty and skip the full sync.
        if let Some(conn) = slot.conn {
            self.mark_dirty(conn);
        }
        r
    }

    /// Refuse a request taken with `recv`: the call fails with
    /// `FailReason::Rejected(code)`. False if it is no longer open.
    pub fn reject(&mut self, _now: Instant, session: SessionId, req: ReqId, code: u16) -> bool {
        let Some(idx) = self.session_idx(session) else {
            return false;
        };
        self.with_session(idx, |s| s.reject(req, code)).unwrap_or(false)
    }

    /// Send a one-way message to a session's client.
    pub fn send(
        &mut self,
        _now: Instant,
        session: SessionId,
        channel: u16,
        body: impl Into<Bytes>,
    ) -> Result<MsgId, SendError> {
        let body = body.into();
        let Some(s) = self.session_idx(session).and_then(|i| self.sessions[i as usize].session.as_mut())
        else {
            return Err(SendError::Closed(body));
        };
        let r = s.send(channel, body);
        if let Some(idx) = self.session_idx(session) {
            self.sync(idx);
        }
        r
    }

    /// Close one session gracefully (it drains, then sends CLOSE).
    pub fn close_session(&mut self, now: Instant, session: SessionId) -> Result<(), ApiMisuse> {
        let idx = self.session_idx(session).ok_or(ApiMisuse::UnknownSession)?;
        self.with_session(idx, |s| s.close(now, CloseCode::Normal));
        Ok(())
    }

    /// Stop accepting connections and sessions; close every session
    /// gracefully with `Shutdown` (each drains first, within `close_timeout_ms`).
    pub fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let hs: Vec<ConnId> = self.handshake_q.iter().map(|e| e.1).collect();
        for conn in hs {
            if self.conn(conn).is_some_and(|c| matches!(c.state, ConnState::Handshaking { .. })) {
                let code = CloseCode::Shutdown;
                self.close_conn(conn, Some(code), CloseReason { code, by_peer: false });
            }
        }
        for idx in 0..self.sessions.len() as u32 {
            if self.sessions[idx as usize].session.is_some() {
                self.with_session(idx, |s| s.close(now, CloseCode::Shutdown));
            }
        }
    }

    // --- getters ---------------------------------------------------------

    /// Sessions alive (not yet ended).
    pub fn session_count(&self) -> usize {
        self.live_sessions as usize
    }

    /// Connections known (handshaking, bound, or closing).
    pub fn connection_count(&self) -> usize {
        self.conns.len() - self.conn_free.len()
    }

    /// True once `shutdown` has finished: no sessions, no connections.
    pub fn is_shut_down(&self) -> bool {
        self.shutting_down
            && self.sessions.iter().all(|s| s.session.is_none())
            && self.connection_count() == 0
    }

    /// A session's counters.
    pub fn stats(&self, session: SessionId) -> Option<&Stats> {
        let idx = self.session_idx(session)?;
        self.sessions[idx as usize].session.as_ref().map(|s| s.stats())
    }

    /// A session's queue depths.
    pub fn queues(&self, session: SessionId) -> Option<Queues> {
        let idx = self.session_idx(session)?;
        self.sessions[idx as usize].session.as_ref().map(|s| s.queues())
    }

    /// A session's token.
    pub fn token(&self, session: SessionId) -> Option<Token> {
        let idx = self.session_idx(session)?;
        self.sessions[idx as usize].session.as_ref().map(|s| s.token)
    }

    /// The session a token names, if this endpoint holds it.
    pub fn session_by_token(&self, token: &Token) -> Option<SessionId> {
        self.by_token.get(token).map(|&idx| self.sid(idx))
    }

    /// Bytes of core state held by one session.
    pub fn session_memory_bytes(&self, session: SessionId) -> Option<usize> {
        let idx = self.session_idx(session)?;
        self.sessions[idx as usize].session.as_ref().map(|s| s.memory_bytes())
    }

    // --- internals -------------------------------------------------------

    fn with_session<R>(&mut self, idx: u32, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        let s = self.sessions[idx as usize].session.as_mut()?;
        let r = f(s);
        self.sync(idx);
        Some(r)
    }

    /// After any change to a session: forward its events, follow its
    /// connection state, re-arm its timer, mark its connection dirty, free it
    /// once ended and drained.
    fn sync(&mut self, idx: u32) {
        self.sync_inner(idx, true);
    }

    fn sync_inner(&mut self, idx: u32, dirty: bool) {
        let sid = self.sid(idx);
        let slot = &mut self.sessions[idx as usize];
        let Some(s) = slot.session.as_mut() else {
            return;
        };
        let mut closed: Option<(ConnId, Option<CloseCode>, CloseReason)> = None;
        let mut ended = false;
        while let Some(e) = s.poll_event() {
            match e {
                Event::Connected { resumed } => {
                    if let Some(conn) = slot.conn {
                        self.events.push_back(ServerEvent::SessionUp {
                            session: sid,
                            conn,
                            token: s.token,
                            resumed,
                        });
                    }
                }
                Event::ConnectionClosed { reason } => {
                    if let Some(conn) = slot.conn.take() {
                        closed = Some((conn, s.link.close_frame.take(), reason));
                    }
                }
                Event::Readable => {
                    if !slot.in_ready {
                        slot.in_ready = true;
                        self.ready.push_back(idx);
                    }
                    self.events.push_back(ServerEvent::Session { session: sid, event: Event::Readable });
                }
                Event::SessionEnded { reason } => {
                    ended = true;
                    self.events.push_back(ServerEvent::Session {
                        session: sid,
                        event: Event::SessionEnded { reason },
                    });
                }
                event => self.events.push_back(ServerEvent::Session { session: sid, event }),
            }
        }
        if slot.conn.is_some() && s.link.state == LinkState::Down {
            // Detached without an event (superseded): nothing to close here.
            slot.conn = None;
        }
        // Track the session's live deadline exactly: an earlier or a later
        // one gets its own entry; the old one becomes stale and is pruned.
        let deadline = s.poll_timeout().unwrap_or(Instant::NEVER);
        if deadline != slot.heap_deadline {
            slot.heap_deadline = deadline;
            if deadline != Instant::NEVER {
                self.heap.push(Reverse((deadline, idx, slot.generation)));
            }
        }
        let conn = slot.conn;
        let free = s.is_ended() && s.inbox_len() == 0;
        if ended {
            let token = s.token;
            if self.by_token.get(&token) == Some(&idx) {
                self.by_token.remove(&token);
                self.live_sessions -= 1;
            }
        }
        if free {
            slot.session = None;
            slot.conn = None;
            slot.in_ready = false;
            self.session_free.push(idx);
        }
        if let Some((conn, code, reason)) = closed {
            self.close_conn(conn, code, reason);
        }
        if let Some(conn) = conn.filter(|_| dirty) {
            self.mark_dirty(conn);
        }
        if self.heap.len() > 2 * self.sessions.len() + 64 {
            self.compact_heap();
        }
        self.prune_heap();
    }

    /// Drop stale entries from the top of the timer heap, so `poll_timeout`
    /// reports a live deadline and the driver does not wake for nothing.
    fn prune_heap(&mut self) {
        while let Some(&Reverse((t, idx, generation))) = self.heap.peek() {
            let live = self.sessions.get(idx as usize).is_some_and(|slot| {
                slot.generation == generation && slot.session.is_some() && slot.heap_deadline == t
            });
            if live {
                break;
            }
            self.heap.pop();
        }
    }

    /// Rebuild the heap from the live deadlines, in the heap's own buffer:
    /// no allocation (a fresh buffer here re-grew on every push after it,
    /// 0.05 allocations per message in a ping-pong).
    fn compact_heap(&mut self) {
        let mut v = std::mem::take(&mut self.heap).into_vec();
        v.clear();
        for (i, slot) in self.sessions.iter().enumerate() {
            if slot.session.is_some() && slot.heap_deadline != Instant::NEVER {
                v.push(Reverse((slot.heap_deadline, i as u32, slot.generation)));
            }
        }
        self.heap = BinaryHeap::from(v);
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("sessions", &self.live_sessions)
            .field("connections", &self.connection_count())
            .field("handshaking", &self.handshaking)
            .finish()
    }
}
