//! One end of a session: everything that outlives a connection.
//!
//! [`Session`] is shared by both roles. The public faces are
//! [`Client`](crate::Client) (one session, one connection at a time) and
//! [`Endpoint`](crate::Endpoint) (a server's many sessions and connections).
//!
//! Submodules, one concern each:
//! - `send`: the send queues, the fragmenting scheduler, the retransmission
//!   log, credit we were granted, receipts;
//! - `recv`: reassembly, duplicate suppression, the inbox, credit we grant;
//! - `calls`: calls in flight (client), open requests (server);
//! - `link`: the current connection: handshake, ack/ping/idle timers, close.

pub(crate) mod calls;
mod link;
mod recv;
mod send;

use crate::config::Config;
use crate::error::{CloseCode, CloseReason, FailReason, Failure, Fate};
use crate::stats::{Queues, Stats};
use crate::time::Instant;
use crate::timer::{Timer, TimerTable};
use crate::token::Token;
use crate::wire::{EARLY_REASSEMBLY, EARLY_REQUESTS_OPEN, EARLY_WINDOW_BYTES, EARLY_WINDOW_MSGS};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;

pub use calls::ReqId;
pub(crate) use link::{Link, LinkState};
pub(crate) use recv::Reassembly;
pub(crate) use send::{Outgoing, Sent, Stream};

/// Identifies a one-way message sent by this side of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId(pub u64);

/// A message or request waiting for the application, taken with `recv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A one-way message.
    Message {
        /// Its channel.
        channel: u16,
        /// Its body.
        body: Bytes,
    },
    /// A request; answer it with `respond` or `reject` (server only).
    Request {
        /// Pass this to `respond`.
        id: ReqId,
        /// Its channel.
        channel: u16,
        /// Its body.
        body: Bytes,
    },
}

impl Incoming {
    /// The body.
    pub fn body(&self) -> &Bytes {
        match self {
            Incoming::Message { body, .. } | Incoming::Request { body, .. } => body,
        }
    }

    /// The channel.
    pub fn channel(&self) -> u16 {
        match self {
            Incoming::Message { channel, .. } | Incoming::Request { channel, .. } => *channel,
        }
    }
}

/// What happened, for the driver and the application.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake completed (client), or a connection took over the
    /// session (server). `resumed` is false for the session's first connection.
    Connected {
        /// True if an existing session was resumed.
        resumed: bool,
    },
    /// The message's receipt came back: the peer application has taken it.
    Delivered(MsgId),
    /// The message will never be delivered, or its fate is unknown.
    SendFailed {
        /// Which message.
        id: MsgId,
        /// Why, and whether it could have arrived.
        failure: Failure,
    },
    /// The response to a call.
    Response {
        /// Which call.
        id: ReqId,
        /// The response body.
        body: Bytes,
    },
    /// The call ended without a response.
    CallFailed {
        /// Which call.
        id: ReqId,
        /// Why, and whether the server could have seen it.
        failure: Failure,
    },
    /// The inbox went from empty to non-empty: `recv` will return something.
    Readable,
    /// The core closed the connection. The driver should write what
    /// `poll_transmit` still gives (a CLOSE frame) and then close the socket.
    /// The session lives on unless a `SessionEnded` follows.
    ConnectionClosed {
        /// Why.
        reason: CloseReason,
    },
    /// Client: time to open a new connection (after backoff) and call
    /// `connected`.
    Reconnect,
    /// The send queue (or the calls in flight) has room again after a `send`
    /// or `call` was refused with `SendError::Full`: wake blocked senders.
    /// Emitted once per refusal episode.
    SendRoom,
    /// The session is over. Every message and call still pending has had its
    /// failure event before this one. Messages already in the inbox can still
    /// be taken with `recv`.
    SessionEnded {
        /// Why.
        reason: CloseReason,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    /// Graceful close requested: no new sends; the CLOSE goes out once drained.
    Closing,
    Ended(CloseReason),
}

/// What the peer told us in its handshake; early defaults until then.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerParams {
    pub(crate) window_msgs: u32,
    pub(crate) window_bytes: u32,
    pub(crate) message_bytes_max: u32,
    pub(crate) reassembly_max: u16,
    pub(crate) requests_open_max: u32,
    pub(crate) known: bool,
}

impl PeerParams {
    fn early() -> Self {
        PeerParams {
            window_msgs: EARLY_WINDOW_MSGS as u32,
            window_bytes: EARLY_WINDOW_BYTES as u32,
            message_bytes_max: EARLY_WINDOW_BYTES as u32,
            reassembly_max: EARLY_REASSEMBLY,
            requests_open_max: EARLY_REQUESTS_OPEN,
            known: false,
        }
    }
}

/// Everything that holds heap memory while traffic flows. Dropped when the
/// session goes idle, so an idle session costs only the [`Session`] struct.
#[derive(Default)]
pub(crate) struct Bufs {
    pub(crate) events: VecDeque<Event>,
    /// Messages and requests not started, in send order.
    pub(crate) pending: VecDeque<Outgoing>,
    /// Responses not started.
    pub(crate) pending_resp: VecDeque<Outgoing>,
    /// REJECT and CANCEL frames to send.
    pub(crate) ctrl: VecDeque<Sent>,
    /// Channels with a fragmented message in progress, round robin.
    pub(crate) streams: VecDeque<Stream>,
    /// Data frames sent and not yet acknowledged (or not yet re-sent).
    pub(crate) log: VecDeque<Sent>,
    /// (completion index, id) of messages sent whole, awaiting their receipt.
    pub(crate) receipts: VecDeque<(u64, MsgId)>,
    pub(crate) inbox: VecDeque<Incoming>,
    pub(crate) reasm: Vec<Reassembly>,
    pub(crate) calls: calls::Calls,
    pub(crate) open: calls::OpenRequests,
}

impl Bufs {
    fn is_idle(&self) -> bool {
        self.events.is_empty()
            && self.pending.is_empty()
            && self.pending_resp.is_empty()
            && self.ctrl.is_empty()
            && self.streams.is_empty()
            && self.log.is_empty()
            && self.receipts.is_empty()
            && self.inbox.is_empty()
            && self.reasm.is_empty()
            && self.calls.is_empty()
            && self.open.is_empty()
    }
}

/// Sequence and credit counters of the sending direction.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TxCounters {
    pub(crate) next_msg_id: u64,
    /// Calls made so far: the call number in every request id.
    pub(crate) next_call_seq: u64,
    /// Sequence number of the next new data frame.
    pub(crate) next_seq: u64,
    /// The peer has every data frame below this.
    pub(crate) acked_seq: u64,
    /// Messages/requests whose first frame was sent, and their bytes.
    pub(crate) admitted_msgs: u64,
    pub(crate) admitted_bytes: u64,
    /// Messages/requests whose last frame was sent: the next completion index.
    pub(crate) completed_msgs: u64,
    /// What the peer application has taken, as far as we know.
    pub(crate) peer_consumed_msgs: u64,
    pub(crate) peer_consumed_bytes: u64,
    /// A send or call was refused as full; `SendRoom` is due once room appears.
    pub(crate) send_blocked: bool,
    /// Accepted and not fully transmitted.
    pub(crate) queued_msgs: u32,
    pub(crate) queued_bytes: u64,
    /// Fragmented messages in progress (against the peer's reassembly_max).
    pub(crate) fragmenting: u16,
}

/// Counters of the receiving direction.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RxCounters {
    /// Data frames received in the session.
    pub(crate) recv_seq: u64,
    /// The last `recv_seq` we acknowledged.
    pub(crate) ack_sent_seq: u64,
    /// Messages/requests the peer started, and their bytes.
    pub(crate) admitted_msgs: u64,
    pub(crate) admitted_bytes: u64,
    /// Taken by the application.
    pub(crate) consumed_msgs: u64,
    pub(crate) consumed_bytes: u64,
    /// The last consumed counts we reported.
    pub(crate) credit_sent_msgs: u64,
    pub(crate) credit_sent_bytes: u64,
}

/// One end of a session. See the module docs.
pub struct Session {
    pub(crate) role: Role,
    pub(crate) token: Token,
    pub(crate) config: Arc<Config>,
    pub(crate) phase: Phase,
    /// The code a graceful close ends with (Normal, or Shutdown).
    pub(crate) close_code: CloseCode,
    pub(crate) link: Link,
    pub(crate) peer: PeerParams,
    pub(crate) tx: TxCounters,
    pub(crate) rx: RxCounters,
    pub(crate) bufs: Option<Box<Bufs>>,
    pub(crate) timers: TimerTable,
    pub(crate) stats: Stats,
    /// Client: a WELCOME has been received at least once.
    pub(crate) welcomed: bool,
    /// Client: the server proved it never saw our first HELLO; create anew.
    pub(crate) recreate: bool,
    /// Client: when the first HELLO went out (NEVER before).
    pub(crate) first_hello_at: Instant,
    /// Client: failed connection attempts since the last WELCOME.
    pub(crate) backoff_attempt: u32,
    /// Test-only fault: process duplicate frames as new.
    pub(crate) dedup_disabled: bool,
}

impl Session {
    pub(crate) fn new(role: Role, token: Token, config: Arc<Config>, _seed: u64) -> Self {
        #[cfg(feature = "testing")]
        let dedup_disabled = config.fault_disable_dedup;
        #[cfg(not(feature = "testing"))]
        let dedup_disabled = false;
        Session {
            role,
            token,
            config,
            phase: Phase::Open,
            close_code: CloseCode::Normal,
            link: Link::default(),
            peer: PeerParams::early(),
            tx: TxCounters::default(),
            rx: RxCounters::default(),
            bufs: None,
            timers: TimerTable::default(),
            stats: Stats::default(),
            welcomed: false,
            recreate: false,
            first_hello_at: Instant::NEVER,
            backoff_attempt: 0,
            dedup_disabled,
        }
    }

    /// The lazily allocated buffers.
    pub(crate) fn bufs(&mut self) -> &mut Bufs {
        // Keyed by the session's secret token, so peers cannot aim collisions.
        let key = u64::from_le_bytes([
            self.token.0[0],
            self.token.0[1],
            self.token.0[2],
            self.token.0[3],
            self.token.0[4],
            self.token.0[5],
            self.token.0[6],
            self.token.0[7],
        ]) ^ 0x5bd1_e995;
        self.bufs.get_or_insert_with(|| {
            Box::new(Bufs { open: calls::OpenRequests::with_key(key), ..Default::default() })
        })
    }

    /// Free the buffers if nothing is in them (called from the keepalive timer).
    pub(crate) fn compact_if_idle(&mut self) {
        if self.bufs.as_ref().is_some_and(|b| b.is_idle()) {
            self.bufs = None;
        }
        self.link.decoder.reset();
    }

    /// Sequence number of the oldest frame in the retransmission log (the
    /// log holds every frame from there to `next_seq`).
    pub(crate) fn log_base(&self) -> u64 {
        self.tx.next_seq - self.bufs.as_deref().map_or(0, |b| b.log.len() as u64)
    }

    pub(crate) fn push_event(&mut self, e: Event) {
        self.bufs().events.push_back(e);
    }

    /// Next event for the driver.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.bufs.as_mut()?.events.pop_front()
    }

    pub(crate) fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Ended(_))
    }

    /// Earliest timer. O(timer kinds).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    pub(crate) fn queues(&self) -> Queues {
        let b = self.bufs.as_deref();
        Queues {
            send_queued_msgs: self.tx.queued_msgs,
            send_queued_bytes: self.tx.queued_bytes,
            unacked_frames: self.tx.next_seq - self.tx.acked_seq,
            awaiting_receipt: b.map_or(0, |b| b.receipts.len() as u64),
            calls_in_flight: b.map_or(0, |b| b.calls.live),
            inbox_msgs: b.map_or(0, |b| b.inbox.len() as u32),
        }
    }

    pub(crate) fn inbox_len(&self) -> usize {
        self.bufs.as_deref().map_or(0, |b| b.inbox.len())
    }

    /// Bytes this session holds: the struct, its queues, and the message
    /// bodies it keeps (queued, unacknowledged, in reassembly, in the inbox).
    /// Bodies shared between a queue and the log count twice: an upper bound.
    pub(crate) fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let mut n = size_of::<Session>() + self.link.decoder.heap_bytes();
        if let Some(b) = &self.bufs {
            n += size_of::<Bufs>()
                + b.events.capacity() * size_of::<Event>()
                + b.pending.capacity() * size_of::<Outgoing>()
                + b.pending_resp.capacity() * size_of::<Outgoing>()
                + b.ctrl.capacity() * size_of::<Sent>()
                + b.streams.capacity() * size_of::<Stream>()
                + b.log.capacity() * size_of::<Sent>()
                + b.receipts.capacity() * size_of::<(u64, MsgId)>()
                + b.inbox.capacity() * size_of::<Incoming>()
                + b.reasm.capacity() * size_of::<Reassembly>();
            n += self.tx.queued_bytes as usize;
            n += b.log.iter().map(|s| s.payload_len()).sum::<usize>();
            n += b.inbox.iter().map(|i| i.body().len()).sum::<usize>();
            n += b.reasm.iter().map(|r| r.capacity()).sum::<usize>();
        }
        n
    }

    /// The most [`Session::memory_bytes`] may reach under `config` (see the
    /// [`Config`] docs): send queue, the peer's window in the log, our window
    /// plus one oversize message in the inbox and reassembly, a partial frame,
    /// and per-message records.
    pub(crate) fn memory_bound(config: &Config) -> usize {
        let records = config.send_queue_msgs_max as usize
            + 2 * config.window_msgs_max as usize
            + config.calls_in_flight_max as usize
            + config.requests_open_max as usize;
        2 * config.send_queue_bytes_max as usize
            + 2 * (config.window_bytes_max as usize + config.message_bytes_max as usize)
            + crate::wire::FRAME_BODY_MAX
            + records * 256
            + 64 * 1024
    }

    /// Handle every due timer.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.timers.is_due(Timer::CallDeadline, now) {
            self.expire_calls(now);
        }
        if self.timers.is_due(Timer::AckDelay, now) {
            self.timers.stop(Timer::AckDelay);
            self.link.ack_pending = true;
        }
        if self.timers.is_due(Timer::Close, now) {
            self.timers.stop(Timer::Close);
            if self.phase == Phase::Closing {
                self.end(now, CloseReason { code: self.close_code, by_peer: false });
            }
        }
        if self.timers.is_due(Timer::SessionExpiry, now) {
            self.timers.stop(Timer::SessionExpiry);
            let code = match self.role {
                Role::Client => CloseCode::ResumeTimeout,
                Role::Server => CloseCode::SessionExpired,
            };
            self.end(now, CloseReason { code, by_peer: false });
        }
        self.link_timers(now);
        self.check_drained(now);
        // Deadlines free call slots.
        self.check_send_room();
    }

    fn expire_calls(&mut self, now: Instant) {
        while let Some(id) = self.bufs().calls.pop_expired(now) {
            self.end_call(id, FailReason::Deadline);
        }
        self.sync_call_timer();
    }

    pub(crate) fn sync_call_timer(&mut self) {
        match self.bufs.as_deref().and_then(|b| b.calls.next_deadline()) {
            Some(d) => self.timers.set(Timer::CallDeadline, d),
            None => self.timers.stop(Timer::CallDeadline),
        }
    }

    /// Begin a graceful close: stop accepting work; the CLOSE goes out once
    /// every message has its outcome, or after `close_timeout_ms`.
    pub(crate) fn close(&mut self, now: Instant, code: CloseCode) {
        if self.phase != Phase::Open {
            return;
        }
        self.phase = Phase::Closing;
        self.close_code = code;
        self.timers.set(Timer::Close, now.add_millis(self.config.close_timeout_ms));
        self.check_drained(now);
    }

    /// While closing: end the session once nothing is outstanding.
    pub(crate) fn check_drained(&mut self, now: Instant) {
        if self.phase != Phase::Closing {
            return;
        }
        // A closing server also lets its application answer what it took.
        let server = self.role == Role::Server;
        let drained = self.tx.queued_msgs == 0
            && self.bufs.as_deref().is_none_or(|b| {
                b.receipts.is_empty()
                    && b.calls.is_empty()
                    && b.streams.is_empty()
                    && b.pending_resp.is_empty()
                    && b.ctrl.is_empty()
                    && (!server || (b.open.is_empty() && b.inbox.is_empty()))
            })
            && self.tx.acked_seq == self.tx.next_seq;
        if drained {
            self.end(now, CloseReason { code: self.close_code, by_peer: false });
        }
    }

    /// End the session: fail everything pending, close the connection with
    /// `reason.code` (unless the peer sent it), report `SessionEnded`.
    pub(crate) fn end(&mut self, _now: Instant, reason: CloseReason) {
        if self.is_ended() {
            return;
        }
        self.phase = Phase::Ended(reason);
        self.fail_all(reason);
        if self.link.state != LinkState::Down {
            self.close_link_with(reason.code, !reason.by_peer);
            self.push_event(Event::ConnectionClosed { reason });
        }
        for t in [
            Timer::AckDelay,
            Timer::Keepalive,
            Timer::Idle,
            Timer::Handshake,
            Timer::Reconnect,
            Timer::SessionExpiry,
            Timer::Close,
            Timer::CallDeadline,
        ] {
            self.timers.stop(t);
        }
        self.push_event(Event::SessionEnded { reason });
    }

    /// Fail every message and call that has no outcome yet.
    fn fail_all(&mut self, reason: CloseReason) {
        let reason = FailReason::SessionLost(reason);
        let not = Failure { reason, fate: Fate::NotDelivered };
        let unknown = Failure { reason, fate: Fate::Unknown };
        let Some(mut b) = self.bufs.take() else {
            return;
        };
        let mut events = std::mem::take(&mut b.events);
        // Never fully sent: the last frame did not leave, so the peer cannot
        // have completed them.
        let mut unsent: Vec<Outgoing> = b.pending.drain(..).collect();
        for s in b.streams.drain(..) {
            if let Some(a) = s.active {
                unsent.push(a.out);
            }
            unsent.extend(s.waiting);
        }
        for o in unsent {
            if let send::OutKind::Message(id) = o.kind {
                events.push_back(Event::SendFailed { id, failure: not });
            }
        }
        // Sent whole, no receipt: the peer may have taken them.
        for (_, id) in b.receipts.drain(..) {
            events.push_back(Event::SendFailed { id, failure: unknown });
        }
        for (id, state) in b.calls.drain_live() {
            let failure = if state == calls::CallState::Sent { unknown } else { not };
            events.push_back(Event::CallFailed { id, failure });
        }
        b.pending_resp.clear();
        b.ctrl.clear();
        b.log.clear();
        b.reasm.clear();
        b.open.clear();
        b.events = events;
        self.tx.queued_msgs = 0;
        self.tx.queued_bytes = 0;
        self.tx.fragmenting = 0;
        self.bufs = Some(b);
    }

    /// End one call with a failure (deadline or cancel).
    pub(crate) fn end_call(&mut self, id: ReqId, reason: FailReason) -> bool {
        let b = self.bufs();
        let Some(state) = b.calls.remove(id) else {
            return false;
        };
        let fate = match state {
            calls::CallState::Queued => Fate::NotDelivered,
            _ => Fate::Unknown,
        };
        if state == calls::CallState::Sent {
            // Tell the server; a CANCEL after the last frame of a request that
            // is still being sent goes out when that frame does.
            b.ctrl.push_back(Sent::cancel(id.0));
            b.calls.open_at_peer -= 1;
        }
        b.events.push_back(Event::CallFailed { id, failure: Failure { reason, fate } });
        true
    }

    pub(crate) fn jitter_below(&mut self, max: u64) -> u64 {
        // Stateless and deterministic: a mix of the session's secret token
        // and how many times it has disconnected and retried.
        let t = u64::from_le_bytes([
            self.token.0[8],
            self.token.0[9],
            self.token.0[10],
            self.token.0[11],
            self.token.0[12],
            self.token.0[13],
            self.token.0[14],
            self.token.0[15],
        ]);
        let mut x = t ^ (self.stats.disconnects << 32) ^ self.backoff_attempt as u64 ^ 0x9e37_79b9_7f4a_7c15;
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        if max == 0 { 0 } else { x % (max + 1) }
    }
}
