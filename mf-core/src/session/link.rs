//! The session's current connection: handshake, frame dispatch, ack and
//! keep-alive timing, idle detection, closing, reconnect scheduling.

use super::*;
use crate::wire::{
    Decoder, FRAME_BODY_MAX, Frame, FrameType, Handshake, PROTOCOL_VERSION, TransmitBuf, encode,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// No connection.
    #[default]
    Down,
    /// Client: HELLO sent (or about to be), WELCOME not yet received.
    AwaitWelcome,
    /// Handshake complete.
    Up,
}

/// Per-connection state; reset on every new connection.
#[derive(Debug, Default)]
pub(crate) struct Link {
    pub(crate) state: LinkState,
    pub(crate) decoder: Decoder,
    /// Sequence number of the next data frame to arrive on this connection.
    pub(crate) in_seq: u64,
    /// Sequence number of the next data frame to (re)send on this connection.
    pub(crate) xmit_seq: u64,
    pub(crate) last_recv: Instant,
    /// Client: HELLO to send. Server: WELCOME to send.
    pub(crate) handshake_pending: bool,
    pub(crate) ack_pending: bool,
    pub(crate) credit_pending: bool,
    pub(crate) ping_pending: bool,
    /// A PONG to send, echoing `pong_nonce`.
    pub(crate) pong_pending: bool,
    pub(crate) pong_nonce: u64,
    /// A CLOSE frame still to write on the connection being closed.
    pub(crate) close_frame: Option<CloseCode>,
    pub(crate) handshake_sent_at: Instant,
    /// The server agreed to resume (WELCOME) or the client asked to (HELLO).
    pub(crate) resumed: bool,
}

impl Session {
    fn own_handshake(&self, resume: bool) -> Handshake {
        let c = &self.config;
        Handshake {
            version: PROTOCOL_VERSION,
            resume,
            token: self.token,
            recv_seq: self.rx.recv_seq,
            send_start_seq: self.link.xmit_seq,
            consumed_msgs: self.rx.consumed_msgs,
            consumed_bytes: self.rx.consumed_bytes,
            window_msgs: c.window_msgs_max,
            window_bytes: c.window_bytes_max,
            message_bytes_max: c.message_bytes_max,
            reassembly_max: c.reassembly_max,
            requests_open_max: match self.role {
                Role::Server => c.requests_open_max.min(u16::MAX as u32) as u16,
                Role::Client => 0,
            },
        }
    }

    fn reset_link(&mut self, now: Instant, state: LinkState) {
        let mut decoder = std::mem::take(&mut self.link.decoder);
        decoder.reset();
        decoder.set_body_max(FRAME_BODY_MAX);
        self.link = Link { state, decoder, last_recv: now, ..Default::default() };
        self.timers.stop(Timer::Reconnect);
        self.timers.stop(Timer::AckDelay);
        self.timers.set(Timer::Idle, now.add_millis(self.config.idle_timeout_ms));
        self.timers.set(Timer::Keepalive, now.add_millis(self.config.keepalive_interval_ms));
        // The handshake carries our receive position and consumption.
        self.rx.ack_sent_seq = self.rx.recv_seq;
        self.rx.credit_sent_msgs = self.rx.consumed_msgs;
        self.rx.credit_sent_bytes = self.rx.consumed_bytes;
    }

    /// Client: a new transport connection is open. The HELLO (and any data
    /// that fits the credit) goes out with the next `poll_transmit`.
    pub(crate) fn client_connected(&mut self, now: Instant) {
        debug_assert_eq!(self.role, Role::Client);
        if self.is_ended() {
            return;
        }
        self.reset_link(now, LinkState::AwaitWelcome);
        // Resend everything not acknowledged; the server drops what it has.
        let acked = self.tx.acked_seq;
        self.trim_log(acked);
        self.link.xmit_seq = acked;
        self.link.handshake_pending = true;
        self.link.handshake_sent_at = now;
        self.timers.set(Timer::Handshake, now.add_millis(self.config.handshake_timeout_ms));
    }

    /// Server: can `h` resume this session? The client cannot start sending
    /// beyond what we have received, nor have received what we never sent,
    /// nor less than it acknowledged.
    pub(crate) fn check_resume(&self, h: &Handshake) -> Result<(), CloseCode> {
        if h.send_start_seq > self.rx.recv_seq
            || h.recv_seq > self.tx.next_seq
            || h.recv_seq < self.tx.acked_seq
            || h.consumed_msgs < self.tx.peer_consumed_msgs
            || h.consumed_msgs > self.tx.completed_msgs
        {
            return Err(CloseCode::ResumeMismatch);
        }
        Ok(())
    }

    /// Server: `h` (a valid HELLO for this session) arrived on a new connection.
    pub(crate) fn server_attach(&mut self, now: Instant, h: &Handshake) -> Result<(), CloseCode> {
        debug_assert_eq!(self.role, Role::Server);
        self.check_resume(h)?;
        self.reset_link(now, LinkState::Up);
        self.link.resumed = h.resume;
        self.link.in_seq = h.send_start_seq;
        self.tx.acked_seq = h.recv_seq;
        self.trim_log(h.recv_seq);
        self.link.xmit_seq = h.recv_seq;
        self.apply_peer_params(h);
        self.on_credit(h.consumed_msgs, h.consumed_bytes)?;
        self.link.handshake_pending = true;
        self.timers.stop(Timer::SessionExpiry);
        self.timers.stop(Timer::Handshake);
        if h.resume {
            self.stats.resumes += 1;
        }
        self.push_event(Event::Connected { resumed: h.resume });
        Ok(())
    }

    fn apply_peer_params(&mut self, h: &Handshake) {
        self.peer = PeerParams {
            window_msgs: h.window_msgs,
            window_bytes: h.window_bytes,
            message_bytes_max: h.message_bytes_max,
            reassembly_max: h.reassembly_max.max(1),
            requests_open_max: match self.role {
                Role::Client => h.requests_open_max as u32,
                Role::Server => 0,
            },
            known: true,
        };
    }

    fn on_welcome(&mut self, now: Instant, h: &Handshake) -> Result<(), CloseCode> {
        if h.version != PROTOCOL_VERSION {
            return Err(CloseCode::VersionMismatch);
        }
        if h.token != self.token
            || h.resume != self.link.resumed
            || h.recv_seq < self.tx.acked_seq
            || h.recv_seq > self.tx.next_seq
            || h.send_start_seq > self.rx.recv_seq
            || h.window_msgs < EARLY_WINDOW_MSGS as u32
            || (h.window_bytes as u64) < EARLY_WINDOW_BYTES
            || (h.requests_open_max as u32) < EARLY_REQUESTS_OPEN
        {
            return Err(CloseCode::ResumeMismatch);
        }
        self.link.state = LinkState::Up;
        self.link.in_seq = h.send_start_seq;
        self.on_ack(h.recv_seq)?;
        self.apply_peer_params(h);
        self.on_credit(h.consumed_msgs, h.consumed_bytes)?;
        self.sample_rtt(now.saturating_since(self.link.handshake_sent_at).as_micros() as u64);
        self.timers.stop(Timer::Handshake);
        self.timers.stop(Timer::SessionExpiry);
        self.backoff_attempt = 0;
        self.welcomed = true;
        if h.resume {
            self.stats.resumes += 1;
        }
        self.push_event(Event::Connected { resumed: h.resume });
        Ok(())
    }

    pub(crate) fn sample_rtt(&mut self, us: u64) {
        let s = &mut self.stats.rtt_us;
        *s = if *s == 0 { us.max(1) } else { (*s * 7 + us) / 8 };
    }

    /// Bytes from the current connection.
    pub(crate) fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.link.state == LinkState::Down || self.is_ended() {
            return;
        }
        self.stats.wire_bytes_in += data.len() as u64;
        self.link.last_recv = now;
        let mut dec = std::mem::take(&mut self.link.decoder);
        let res = dec.decode(data, |f| self.on_frame(now, f));
        if self.link.state == LinkState::Down {
            dec.reset();
        }
        self.link.decoder = dec;
        if let Err(code) = res {
            self.end(now, CloseReason { code, by_peer: false });
        }
        self.check_drained(now);
        // Answers free call slots.
        self.check_send_room();
    }

    fn on_frame(&mut self, now: Instant, f: Frame<'_>) -> Result<bool, CloseCode> {
        let awaiting = self.link.state == LinkState::AwaitWelcome;
        match f {
            Frame::Welcome(h) if awaiting && self.role == Role::Client => self.on_welcome(now, &h)?,
            Frame::Hello(_) | Frame::Welcome(_) => return Err(CloseCode::UnexpectedFrame),
            Frame::Close { code, detail } => {
                self.on_peer_close(now, code, detail);
                return Ok(false);
            }
            _ if awaiting => return Err(CloseCode::UnexpectedFrame),
            Frame::Ping(n) => {
                self.link.pong_pending = true;
                self.link.pong_nonce = n;
            }
            Frame::Pong(n) => {
                if n <= now.as_micros() {
                    self.sample_rtt(now.as_micros() - n);
                }
            }
            Frame::Ack(n) => self.on_ack(n)?,
            Frame::Credit { msgs, bytes } => self.on_credit(msgs, bytes)?,
            f => {
                debug_assert!(f.is_data());
                self.on_data_frame(now, f)?;
            }
        }
        Ok(self.link.state != LinkState::Down && !self.is_ended())
    }

    fn on_peer_close(&mut self, now: Instant, code: CloseCode, detail: &[u8]) {
        let reason = CloseReason { code, by_peer: true };
        if code.is_transient() {
            self.close_link(now, reason, false);
        } else if code == CloseCode::SessionUnknown && self.may_recreate(now, detail) {
            // The server cannot have seen our first HELLO: start the session
            // afresh under the same token and resend everything from 0.
            self.recreate = true;
            self.stats.recreated += 1;
            self.close_link(now, reason, false);
            self.backoff_attempt = 0;
            self.timers.set(Timer::Reconnect, now);
        } else {
            self.end(now, reason);
        }
    }

    /// After CLOSE(SessionUnknown) to a client that was never welcomed: can
    /// it prove the server never saw its first HELLO (so nothing it sent can
    /// have been delivered)? The detail carries the server's uptime and
    /// linger, in ms. If the server's process started before our first HELLO
    /// left (its start, in our clock, is at most `now - uptime`) and less
    /// than its linger has passed since, then that process was up when any
    /// of our bytes could have arrived and could not yet have expired the
    /// session: it would know the token. A margin of 50 ms plus 1% covers
    /// clock-rate differences.
    fn may_recreate(&self, now: Instant, detail: &[u8]) -> bool {
        if self.role != Role::Client || self.welcomed || detail.len() != 16 {
            return false;
        }
        let first = self.first_hello_at;
        if first == Instant::NEVER {
            return false;
        }
        let uptime_ms = u64::from_le_bytes(detail[..8].try_into().unwrap_or([0; 8]));
        let linger_ms = u64::from_le_bytes(detail[8..].try_into().unwrap_or([0; 8]));
        let since_ms = now.saturating_since(first).as_millis() as u64;
        let margin_ms = 50 + since_ms / 100;
        uptime_ms > since_ms + margin_ms && since_ms + margin_ms < linger_ms
    }

    /// A received data frame: number it, drop it if seen before, process it.
    fn on_data_frame(&mut self, now: Instant, f: Frame<'_>) -> Result<(), CloseCode> {
        let seq = self.link.in_seq;
        self.link.in_seq += 1;
        if seq < self.rx.recv_seq {
            if !self.dedup_disabled {
                self.stats.duplicates_dropped += 1;
                return Ok(());
            }
        } else {
            self.rx.recv_seq += 1;
        }
        let unacked = self.rx.recv_seq - self.rx.ack_sent_seq;
        if unacked >= self.config.ack_frames_max as u64 {
            self.link.ack_pending = true;
        } else {
            self.timers.set_min(Timer::AckDelay, now.add_millis(self.config.ack_delay_ms));
        }
        self.process_data(now, f)
    }

    /// The core decided to close the connection (`send_close`: write a CLOSE
    /// frame first). The session lives on.
    pub(crate) fn close_link(&mut self, now: Instant, reason: CloseReason, send_close: bool) {
        if self.link.state == LinkState::Down {
            return;
        }
        self.close_link_with(reason.code, send_close);
        self.push_event(Event::ConnectionClosed { reason });
        self.after_link_down(now);
    }

    /// Mark the link down, remembering a CLOSE frame to write.
    pub(crate) fn close_link_with(&mut self, code: CloseCode, send_close: bool) {
        self.link.state = LinkState::Down;
        self.link.decoder.reset();
        if send_close {
            self.link.close_frame = Some(code);
        }
        self.stats.disconnects += 1;
    }

    /// The driver reports the transport failed (reset, EOF, write error).
    pub(crate) fn connection_lost(&mut self, now: Instant) {
        if self.link.state == LinkState::Down {
            self.link.close_frame = None;
            return;
        }
        self.close_link_with(CloseCode::Normal, false);
        self.after_link_down(now);
    }

    fn after_link_down(&mut self, now: Instant) {
        for t in [Timer::Idle, Timer::Keepalive, Timer::Handshake, Timer::AckDelay] {
            self.timers.stop(t);
        }
        if self.is_ended() {
            return;
        }
        match self.role {
            Role::Client => self.schedule_reconnect(now),
            Role::Server => {
                self.timers.set(Timer::SessionExpiry, now.add_millis(self.config.session_linger_ms));
            }
        }
        self.compact_if_idle();
    }

    /// Client: the connect attempt failed; try again after backoff.
    pub(crate) fn connect_failed(&mut self, now: Instant) {
        if self.is_ended() {
            return;
        }
        self.link.state = LinkState::Down;
        self.after_link_down(now);
    }

    fn schedule_reconnect(&mut self, now: Instant) {
        let c = &self.config;
        let exp = c.reconnect_backoff_min_ms.saturating_mul(1u64 << self.backoff_attempt.min(20));
        let cap = exp.min(c.reconnect_backoff_max_ms);
        let resume_ms = c.resume_timeout_ms;
        let delay_us = cap * 500 + self.jitter_below(cap * 500);
        self.backoff_attempt = self.backoff_attempt.saturating_add(1);
        self.timers.set(Timer::Reconnect, now + std::time::Duration::from_micros(delay_us));
        self.timers.set_min(Timer::SessionExpiry, now.add_millis(resume_ms));
    }

    /// Timers that belong to the connection (or its absence).
    pub(crate) fn link_timers(&mut self, now: Instant) {
        if self.is_ended() {
            return;
        }
        if self.link.state == LinkState::Down {
            if self.timers.is_due(Timer::Reconnect, now) {
                self.timers.stop(Timer::Reconnect);
                self.push_event(Event::Reconnect);
            }
            return;
        }
        let c = self.config.clone();
        if self.timers.is_due(Timer::Handshake, now) {
            self.timers.stop(Timer::Handshake);
            if self.link.state == LinkState::AwaitWelcome {
                let reason = CloseReason { code: CloseCode::HandshakeTimeout, by_peer: false };
                self.close_link(now, reason, true);
                return;
            }
        }
        if self.timers.is_due(Timer::Idle, now) {
            let dead_at = self.link.last_recv.add_millis(c.idle_timeout_ms);
            if now >= dead_at {
                let reason = CloseReason { code: CloseCode::IdleTimeout, by_peer: false };
                self.close_link(now, reason, true);
                return;
            }
            self.timers.set(Timer::Idle, dead_at);
        }
        if self.timers.is_due(Timer::Keepalive, now) {
            let ping_at = self.link.last_recv.add_millis(c.keepalive_interval_ms);
            if now >= ping_at {
                self.link.ping_pending = true;
                self.timers.set(Timer::Keepalive, now.add_millis(c.keepalive_interval_ms));
            } else {
                self.timers.set(Timer::Keepalive, ping_at);
            }
            self.compact_if_idle();
        }
    }

    /// Append everything ready to go to `buf`: the handshake, control frames,
    /// retransmissions, new data (interleaved across channels, within credit),
    /// and ACK/CREDIT (piggybacked on anything else, or when due).
    pub(crate) fn poll_transmit(&mut self, now: Instant, buf: &mut TransmitBuf) -> bool {
        let start = buf.len();
        if let Some(code) = self.link.close_frame.take() {
            encode::close(buf, code, b"");
        }
        if self.link.state == LinkState::Down || self.is_ended() {
            self.stats.wire_bytes_out += (buf.len() - start) as u64;
            return false;
        }
        // Nothing queued, nothing to resend, no control frame due: the
        // common empty call returns here.
        let idle = !self.link.handshake_pending
            && !self.link.pong_pending
            && !self.link.ping_pending
            && !self.link.ack_pending
            && !self.link.credit_pending
            && self.link.xmit_seq == self.tx.next_seq
            && self.bufs.as_deref().is_none_or(|b| {
                b.pending.is_empty() && b.pending_resp.is_empty() && b.ctrl.is_empty() && b.streams.is_empty()
            });
        if idle {
            return false;
        }
        if self.link.handshake_pending {
            self.link.handshake_pending = false;
            match self.role {
                Role::Client => {
                    // Resume once the server has welcomed us, or once data
                    // went out with an earlier HELLO: the server may hold
                    // it, and a new session must never receive it twice.
                    // Until then a retry may create the session afresh.
                    let resume = (self.welcomed || self.tx.next_seq > 0) && !self.recreate;
                    // A re-create is one HELLO: once it has left, the server
                    // may hold the session again, so later connections resume.
                    self.recreate = false;
                    self.link.resumed = resume;
                    self.first_hello_at = self.first_hello_at.min(now);
                    let h = self.own_handshake(resume);
                    encode::handshake(buf, FrameType::Hello, &h);
                }
                Role::Server => {
                    let h = self.own_handshake(self.link.resumed);
                    encode::handshake(buf, FrameType::Welcome, &h);
                }
            }
        }
        if self.link.pong_pending {
            self.link.pong_pending = false;
            encode::u64_frame(buf, FrameType::Pong, self.link.pong_nonce);
        }
        if self.link.ping_pending {
            self.link.ping_pending = false;
            encode::u64_frame(buf, FrameType::Ping, now.as_micros());
        }
        self.transmit_data(now, buf);
        let sending = buf.len() > start;
        let urgent = self.link.ack_pending || self.link.credit_pending;
        if self.link.state == LinkState::Up && (sending || urgent) {
            if self.rx.recv_seq > self.rx.ack_sent_seq {
                encode::u64_frame(buf, FrameType::Ack, self.rx.recv_seq);
                self.rx.ack_sent_seq = self.rx.recv_seq;
            }
            if self.rx.consumed_msgs > self.rx.credit_sent_msgs {
                encode::credit(buf, self.rx.consumed_msgs, self.rx.consumed_bytes);
                self.rx.credit_sent_msgs = self.rx.consumed_msgs;
                self.rx.credit_sent_bytes = self.rx.consumed_bytes;
            }
            self.link.ack_pending = false;
            self.link.credit_pending = false;
            self.timers.stop(Timer::AckDelay);
        }
        let appended = buf.len() - start;
        self.stats.wire_bytes_out += appended as u64;
        // The scheduler stops only at the budget or when nothing is ready.
        appended >= self.config.transmit_bytes_max as usize
    }
}
