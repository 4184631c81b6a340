//! The sending direction: queues, the scheduler that fragments large
//! messages and interleaves channels, the retransmission log, the credit we
//! were granted, and receipts.

use super::calls::CallState;
use super::*;
use crate::error::SendError;
use crate::wire::{DataKind, FLAG_LAST, FLAG_MORE, FLAG_RESPONSE_STREAM, FrameType, TransmitBuf, encode};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutKind {
    Message(MsgId),
    Request(ReqId),
    Response(u64),
}

impl OutKind {
    /// Messages and requests go to the peer's inbox and use its credit.
    fn is_inbox(self) -> bool {
        !matches!(self, OutKind::Response(_))
    }
}

/// A message accepted for sending and not yet fully framed.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) kind: OutKind,
    pub(crate) channel: u16,
    pub(crate) body: Bytes,
}

/// A fragmented message partly framed.
#[derive(Debug)]
pub(crate) struct Active {
    pub(crate) out: Outgoing,
    pub(crate) offset: usize,
}

/// One (channel, direction-kind) with a fragmented message in progress, and
/// the messages queued behind it on the same channel.
#[derive(Debug)]
pub(crate) struct Stream {
    channel: u16,
    response: bool,
    pub(crate) active: Option<Active>,
    pub(crate) waiting: VecDeque<Outgoing>,
}

/// A data frame as sent, kept until acknowledged so it can be sent again,
/// byte for byte, after a resume.
#[derive(Clone, Debug)]
pub(crate) struct Sent {
    ty: FrameType,
    flags: u8,
    channel: u16,
    /// Request id (REQUEST, RESPONSE, REJECT, CANCEL).
    id: u64,
    /// Total length (first frame of a fragmented message) or reject code.
    extra: u32,
    payload: Bytes,
}

impl Sent {
    pub(crate) fn cancel(id: u64) -> Self {
        Sent { ty: FrameType::Cancel, flags: 0, channel: 0, id, extra: 0, payload: Bytes::new() }
    }

    pub(crate) fn reject(id: u64, code: u16) -> Self {
        Sent { ty: FrameType::Reject, flags: 0, channel: 0, id, extra: code as u32, payload: Bytes::new() }
    }

    pub(crate) fn payload_len(&self) -> usize {
        self.payload.len()
    }

    fn encode(&self, buf: &mut TransmitBuf) {
        let total = (self.flags & FLAG_MORE != 0).then_some(self.extra);
        match self.ty {
            FrameType::Message => encode::data(buf, DataKind::Message, self.channel, total, &self.payload),
            FrameType::Request => {
                encode::data(buf, DataKind::Request(self.id), self.channel, total, &self.payload)
            }
            FrameType::Response => {
                encode::data(buf, DataKind::Response(self.id), self.channel, total, &self.payload)
            }
            FrameType::Fragment => encode::fragment(
                buf,
                self.channel,
                self.flags & FLAG_RESPONSE_STREAM != 0,
                self.flags & FLAG_LAST != 0,
                &self.payload,
            ),
            FrameType::Reject => encode::reject(buf, self.id, self.extra as u16),
            FrameType::Cancel => encode::u64_frame(buf, FrameType::Cancel, self.id),
            _ => debug_assert!(false, "not a data frame"),
        }
    }
}

/// Whether a window with `out_msgs`/`out_bytes` outstanding admits a message
/// of `size` bytes. A message may always start when nothing is outstanding,
/// so messages larger than the byte window still flow, one at a time.
/// Sender and receiver use this same rule; the sender's view of what is
/// outstanding is never smaller than the receiver's, so an honest sender
/// never trips the receiver's check.
pub(crate) fn window_admits(out_msgs: u64, out_bytes: u64, size: u64, win_msgs: u64, win_bytes: u64) -> bool {
    out_msgs < win_msgs && (out_bytes == 0 || out_bytes + size <= win_bytes)
}

enum Start {
    /// Framed whole, or dropped (a call that ended while queued).
    Done,
    /// First frame sent; more to come.
    Started(Active),
    /// Not now (credit, limits); try again later.
    Blocked(Outgoing),
}

/// The scheduler's view of the session while it fills one transmit buffer.
struct Sched<'a> {
    tx: &'a mut TxCounters,
    peer: PeerParams,
    fragment_bytes: usize,
    stats: &'a mut Stats,
    b: &'a mut Bufs,
    xmit_seq: &'a mut u64,
    buf: &'a mut TransmitBuf,
}

impl Sched<'_> {
    fn emit(&mut self, s: Sent) {
        s.encode(self.buf);
        self.b.log.push_back(s);
        self.tx.next_seq += 1;
        *self.xmit_seq += 1;
        self.stats.frames_sent += 1;
    }

    /// Bookkeeping once a message's last frame is out.
    fn finish(&mut self, kind: OutKind, size: usize) {
        self.tx.queued_msgs -= 1;
        self.tx.queued_bytes -= size as u64;
        match kind {
            OutKind::Message(id) => {
                self.b.receipts.push_back((self.tx.completed_msgs, id));
                self.tx.completed_msgs += 1;
            }
            OutKind::Request(id) => {
                self.tx.completed_msgs += 1;
                match self.b.calls.get(id) {
                    Some(slot) => slot.state = CallState::Sent,
                    None => {
                        // The call ended while its frames were going out.
                        self.b.ctrl.push_back(Sent::cancel(id.0));
                        self.b.calls.open_at_peer -= 1;
                    }
                }
            }
            OutKind::Response(_) => {}
        }
    }

    fn drop_unsent(&mut self, out: &Outgoing) {
        self.tx.queued_msgs -= 1;
        self.tx.queued_bytes -= out.body.len() as u64;
    }

    fn start(&mut self, out: Outgoing) -> Start {
        let size = out.body.len();
        if let OutKind::Request(id) = out.kind {
            if !self.b.calls.is_live(id) {
                self.drop_unsent(&out);
                return Start::Done;
            }
        }
        if self.peer.known && size as u64 > self.peer.message_bytes_max as u64 {
            self.drop_unsent(&out);
            let failure = Failure { reason: FailReason::TooLarge, fate: Fate::NotDelivered };
            match out.kind {
                OutKind::Message(id) => self.b.events.push_back(Event::SendFailed { id, failure }),
                OutKind::Request(id) => {
                    self.b.calls.remove(id);
                    self.b.events.push_back(Event::CallFailed { id, failure });
                }
                OutKind::Response(_) => {}
            }
            return Start::Done;
        }
        if !self.peer.known && size as u64 > EARLY_WINDOW_BYTES {
            return Start::Blocked(out);
        }
        let fragmented = size > self.fragment_bytes;
        if fragmented && self.tx.fragmenting >= self.peer.reassembly_max {
            return Start::Blocked(out);
        }
        if out.kind.is_inbox() {
            let out_msgs = self.tx.admitted_msgs - self.tx.peer_consumed_msgs;
            let out_bytes = self.tx.admitted_bytes - self.tx.peer_consumed_bytes;
            if !window_admits(
                out_msgs,
                out_bytes,
                size as u64,
                self.peer.window_msgs as u64,
                self.peer.window_bytes as u64,
            ) {
                return Start::Blocked(out);
            }
            if let OutKind::Request(id) = out.kind {
                if self.b.calls.open_at_peer >= self.peer.requests_open_max {
                    return Start::Blocked(out);
                }
                self.b.calls.open_at_peer += 1;
                if let Some(slot) = self.b.calls.get(id) {
                    slot.state = CallState::Sending;
                }
            }
            self.tx.admitted_msgs += 1;
            self.tx.admitted_bytes += size as u64;
        }
        let (ty, id) = match out.kind {
            OutKind::Message(_) => (FrameType::Message, 0),
            OutKind::Request(r) => (FrameType::Request, r.0),
            OutKind::Response(r) => (FrameType::Response, r),
        };
        let kind = out.kind;
        let channel = out.channel;
        let flags = if fragmented { FLAG_MORE } else { 0 };
        if fragmented {
            let first = self.fragment_bytes;
            let payload = out.body.slice(..first);
            self.emit(Sent { ty, flags, channel, id, extra: size as u32, payload });
            self.tx.fragmenting += 1;
            Start::Started(Active { out, offset: first })
        } else {
            // The body moves into the log: no reference-count traffic.
            self.emit(Sent { ty, flags, channel, id, extra: size as u32, payload: out.body });
            self.finish(kind, size);
            Start::Done
        }
    }

    /// Send the next fragment; true if it was the last.
    fn fragment(&mut self, a: &mut Active) -> bool {
        let size = a.out.body.len();
        let end = (a.offset + self.fragment_bytes).min(size);
        let last = end == size;
        let mut flags = if last { FLAG_LAST } else { 0 };
        if !a.out.kind.is_inbox() {
            flags |= FLAG_RESPONSE_STREAM;
        }
        self.emit(Sent {
            ty: FrameType::Fragment,
            flags,
            channel: a.out.channel,
            id: 0,
            extra: 0,
            payload: a.out.body.slice(a.offset..end),
        });
        a.offset = end;
        if last {
            self.tx.fragmenting -= 1;
            self.finish(a.out.kind, size);
        }
        last
    }

    /// Start the head of the response queue (`resp`) or the message queue.
    fn step_queue(&mut self, resp: bool) -> bool {
        let q = if resp { &mut self.b.pending_resp } else { &mut self.b.pending };
        let Some(front) = q.front() else { return false };
        let channel = front.channel;
        if let Some(s) = self.b.streams.iter_mut().find(|s| s.channel == channel && s.response == resp) {
            // FIFO per channel: wait behind the message in progress.
            if let Some(o) = q.pop_front() {
                s.waiting.push_back(o);
            }
            return true;
        }
        let Some(out) = q.pop_front() else {
            return false;
        };
        match self.start(out) {
            Start::Done => true,
            Start::Started(a) => {
                self.b.streams.push_back(Stream {
                    channel,
                    response: resp,
                    active: Some(a),
                    waiting: VecDeque::new(),
                });
                true
            }
            Start::Blocked(o) => {
                let q = if resp { &mut self.b.pending_resp } else { &mut self.b.pending };
                q.push_front(o);
                false
            }
        }
    }

    /// One frame from each stream, round robin.
    fn step_streams(&mut self, budget: usize) -> bool {
        let mut progress = false;
        for _ in 0..self.b.streams.len() {
            if self.buf.len() >= budget {
                break;
            }
            let Some(mut s) = self.b.streams.pop_front() else {
                break;
            };
            if let Some(mut a) = s.active.take() {
                progress = true;
                if !self.fragment(&mut a) {
                    s.active = Some(a);
                }
            }
            while s.active.is_none() {
                let Some(next) = s.waiting.pop_front() else {
                    break;
                };
                match self.start(next) {
                    Start::Done => progress = true,
                    Start::Started(a) => {
                        progress = true;
                        s.active = Some(a);
                    }
                    Start::Blocked(o) => {
                        s.waiting.push_front(o);
                        break;
                    }
                }
            }
            if s.active.is_some() || !s.waiting.is_empty() {
                self.b.streams.push_back(s);
            }
        }
        progress
    }
}

impl Session {
    /// Remember a refusal for being full, so `SendRoom` follows.
    fn refused(&mut self, e: SendError) -> SendError {
        if matches!(e, SendError::Full(_)) {
            self.tx.send_blocked = true;
        }
        e
    }

    /// After anything that frees queue room or a call slot: if a send was
    /// refused as full and there is room now, tell the driver once.
    pub(crate) fn check_send_room(&mut self) {
        if !self.tx.send_blocked || self.is_ended() {
            return;
        }
        let c = &self.config;
        let calls = self.bufs.as_deref().map_or(0, |b| b.calls.live);
        if self.tx.queued_msgs < c.send_queue_msgs_max
            && self.tx.queued_bytes < c.send_queue_bytes_max
            && calls < c.calls_in_flight_max
        {
            self.tx.send_blocked = false;
            self.push_event(Event::SendRoom);
        }
    }

    /// Can `body` be queued now? Responses (`respond`) are still accepted
    /// while closing: a closing server answers what it took.
    fn check_send(&self, body: &Bytes, respond: bool) -> Result<(), fn(Bytes) -> SendError> {
        match self.phase {
            Phase::Open => {}
            Phase::Closing if respond => {}
            _ => return Err(SendError::Closed),
        }
        let len = body.len() as u64;
        if len > self.config.message_bytes_max as u64
            || (self.peer.known && len > self.peer.message_bytes_max as u64)
        {
            return Err(SendError::TooLarge);
        }
        if self.tx.queued_msgs >= self.config.send_queue_msgs_max
            || (self.tx.queued_bytes > 0 && self.tx.queued_bytes + len > self.config.send_queue_bytes_max)
        {
            return Err(SendError::Full);
        }
        Ok(())
    }

    fn enqueue(&mut self, out: Outgoing, response: bool) {
        self.tx.queued_msgs += 1;
        self.tx.queued_bytes += out.body.len() as u64;
        self.stats.msgs_sent += 1;
        self.stats.bytes_sent += out.body.len() as u64;
        let b = self.bufs();
        if response {
            b.pending_resp.push_back(out);
        } else {
            b.pending.push_back(out);
        }
    }

    /// Queue a one-way message.
    pub(crate) fn send(&mut self, channel: u16, body: Bytes) -> Result<MsgId, SendError> {
        if let Err(e) = self.check_send(&body, false) {
            return Err(self.refused(e(body)));
        }
        let id = MsgId(self.tx.next_msg_id);
        self.tx.next_msg_id += 1;
        self.enqueue(Outgoing { kind: OutKind::Message(id), channel, body }, false);
        Ok(id)
    }

    /// Queue a request (client).
    pub(crate) fn call(
        &mut self,
        channel: u16,
        body: Bytes,
        deadline: Option<Instant>,
    ) -> Result<ReqId, SendError> {
        if let Err(e) = self.check_send(&body, false) {
            return Err(self.refused(e(body)));
        }
        let max = self.config.calls_in_flight_max;
        if self.bufs.as_deref().is_some_and(|b| b.calls.live >= max) {
            return Err(self.refused(SendError::Full(body)));
        }
        let seq = self.tx.next_call_seq;
        self.tx.next_call_seq += 1;
        let id = self.bufs().calls.insert(seq, deadline);
        self.enqueue(Outgoing { kind: OutKind::Request(id), channel, body }, false);
        if deadline.is_some() {
            self.sync_call_timer();
        }
        Ok(id)
    }

    /// Answer an open request (server). `Ok(false)` if it is no longer open
    /// (cancelled by the client, or the session ended).
    pub(crate) fn respond(&mut self, req: ReqId, body: Bytes) -> Result<bool, SendError> {
        if self.is_ended() || !self.bufs.as_deref().is_some_and(|b| b.open.is_answerable(req.0)) {
            return Ok(false);
        }
        if let Err(e) = self.check_send(&body, true) {
            return Err(self.refused(e(body)));
        }
        let Some(channel) = self.bufs().open.answer(req.0) else {
            return Ok(false);
        };
        self.enqueue(Outgoing { kind: OutKind::Response(req.0), channel, body }, true);
        Ok(true)
    }

    /// Refuse an open request (server) with an application code.
    pub(crate) fn reject(&mut self, req: ReqId, code: u16) -> bool {
        if self.is_ended() {
            return false;
        }
        let b = self.bufs();
        if b.open.answer(req.0).is_none() {
            return false;
        }
        b.ctrl.push_back(Sent::reject(req.0, code));
        true
    }

    /// Drop log entries below `upto` (they are acknowledged and, on this
    /// connection, already re-sent or not needed).
    pub(crate) fn trim_log(&mut self, upto: u64) {
        let base = self.log_base();
        if base >= upto {
            return;
        }
        let n = (upto - base) as usize;
        if let Some(b) = self.bufs.as_deref_mut() {
            let n = n.min(b.log.len());
            b.log.drain(..n);
        }
    }

    /// The peer has every data frame below `n`.
    pub(crate) fn on_ack(&mut self, n: u64) -> Result<(), CloseCode> {
        if n > self.tx.next_seq {
            return Err(CloseCode::UnexpectedFrame);
        }
        if n > self.tx.acked_seq {
            self.tx.acked_seq = n;
            self.trim_log(n.min(self.link.xmit_seq));
        }
        Ok(())
    }

    /// The peer application has taken `msgs` messages (`bytes` bytes) in all.
    pub(crate) fn on_credit(&mut self, msgs: u64, bytes: u64) -> Result<(), CloseCode> {
        if msgs > self.tx.completed_msgs || bytes > self.tx.admitted_bytes {
            return Err(CloseCode::UnexpectedFrame);
        }
        if msgs <= self.tx.peer_consumed_msgs {
            return Ok(());
        }
        self.tx.peer_consumed_msgs = msgs;
        self.tx.peer_consumed_bytes = self.tx.peer_consumed_bytes.max(bytes);
        let Some(b) = self.bufs.as_deref_mut() else {
            return Ok(());
        };
        while let Some(&(idx, id)) = b.receipts.front() {
            if idx >= msgs {
                break;
            }
            b.receipts.pop_front();
            b.events.push_back(Event::Delivered(id));
            self.stats.receipts += 1;
        }
        Ok(())
    }

    /// Retransmissions first, then new frames, up to `transmit_bytes_max`.
    pub(crate) fn transmit_data(&mut self, _now: Instant, buf: &mut TransmitBuf) {
        let Some(mut b) = self.bufs.take() else {
            return;
        };
        let budget = buf.len() + self.config.transmit_bytes_max as usize;
        while self.link.xmit_seq < self.tx.next_seq && buf.len() < budget {
            let i = (self.link.xmit_seq - (self.tx.next_seq - b.log.len() as u64)) as usize;
            b.log[i].encode(buf);
            self.link.xmit_seq += 1;
            self.stats.frames_retransmitted += 1;
        }
        if self.link.xmit_seq == self.tx.next_seq {
            let mut s = Sched {
                tx: &mut self.tx,
                peer: self.peer,
                fragment_bytes: self.config.fragment_bytes as usize,
                stats: &mut self.stats,
                b: &mut b,
                xmit_seq: &mut self.link.xmit_seq,
                buf,
            };
            while s.buf.len() < budget {
                let mut progress = false;
                while let Some(c) = s.b.ctrl.pop_front() {
                    s.emit(c);
                    progress = true;
                }
                if s.b.streams.is_empty() {
                    // No fragmented message in progress: a tight loop.
                    while s.buf.len() < budget && s.step_queue(true) {
                        progress = true;
                    }
                    while s.buf.len() < budget && s.step_queue(false) {
                        progress = true;
                    }
                } else {
                    progress |= s.step_queue(true);
                    progress |= s.step_queue(false);
                }
                progress |= s.step_streams(budget);
                if !progress {
                    break;
                }
            }
        }
        self.bufs = Some(b);
        let upto = self.tx.acked_seq.min(self.link.xmit_seq);
        self.trim_log(upto);
        self.check_send_room();
    }
}
