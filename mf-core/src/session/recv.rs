//! The receiving direction: reassembly of fragmented messages, the inbox,
//! the credit we grant, and responses, rejects and cancels as they arrive.

use super::calls::CallState;
use super::send::window_admits;
use super::*;
use crate::wire::{DataKind, Frame};
use bytes::BytesMut;

/// A fragmented message being put back together.
#[derive(Debug)]
pub(crate) struct Reassembly {
    channel: u16,
    response: bool,
    kind: DataKind,
    total: usize,
    buf: BytesMut,
}

impl Reassembly {
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

impl Session {
    /// A new (not duplicate) data frame, in sequence.
    pub(crate) fn process_data(&mut self, now: Instant, f: Frame<'_>) -> Result<(), CloseCode> {
        match f {
            Frame::Data(d) => {
                let response = matches!(d.kind, DataKind::Response(_));
                match (self.role, d.kind) {
                    (Role::Client, DataKind::Request(_)) | (Role::Server, DataKind::Response(_)) => {
                        return Err(CloseCode::UnexpectedFrame);
                    }
                    _ => {}
                }
                let size = d.total_len.map_or(d.payload.len(), |t| t as usize);
                if size > self.config.message_bytes_max as usize {
                    return Err(CloseCode::MessageTooLarge);
                }
                if !response {
                    let out_msgs = self.rx.admitted_msgs - self.rx.consumed_msgs;
                    let out_bytes = self.rx.admitted_bytes - self.rx.consumed_bytes;
                    let c = &self.config;
                    let (wm, wb) = (c.window_msgs_max as u64, c.window_bytes_max as u64);
                    if !window_admits(out_msgs, out_bytes, size as u64, wm, wb) {
                        return Err(CloseCode::CreditExceeded);
                    }
                    self.rx.admitted_msgs += 1;
                    self.rx.admitted_bytes += size as u64;
                }
                let reassembly_max = self.config.reassembly_max as usize;
                let b = self.bufs();
                if b.reasm.iter().any(|r| r.channel == d.channel && r.response == response) {
                    // A new message while one is in progress on this channel.
                    return Err(CloseCode::UnexpectedFrame);
                }
                match d.total_len {
                    Some(total) => {
                        if b.reasm.len() >= reassembly_max {
                            return Err(CloseCode::TooManyFragments);
                        }
                        // `total` was checked against message_bytes_max, and
                        // admitted within the credit window, above.
                        let mut buf = BytesMut::with_capacity(total as usize);
                        buf.extend_from_slice(d.payload);
                        b.reasm.push(Reassembly {
                            channel: d.channel,
                            response,
                            kind: d.kind,
                            total: total as usize,
                            buf,
                        });
                        Ok(())
                    }
                    None => self.complete(now, d.kind, d.channel, Bytes::copy_from_slice(d.payload)),
                }
            }
            Frame::Fragment { channel, response, last, payload } => {
                let b = self.bufs();
                let Some(i) = b.reasm.iter().position(|r| r.channel == channel && r.response == response)
                else {
                    return Err(CloseCode::UnexpectedFrame);
                };
                let r = &mut b.reasm[i];
                if r.buf.len() + payload.len() > r.total {
                    return Err(CloseCode::MalformedFrame);
                }
                r.buf.extend_from_slice(payload);
                if last != (r.buf.len() == r.total) {
                    return Err(CloseCode::MalformedFrame);
                }
                if last {
                    let r = b.reasm.swap_remove(i);
                    return self.complete(now, r.kind, r.channel, r.buf.freeze());
                }
                Ok(())
            }
            Frame::Reject { req, code } => {
                if self.role != Role::Client {
                    return Err(CloseCode::UnexpectedFrame);
                }
                self.on_answer(ReqId(req), Err(code))
            }
            Frame::Cancel { req } => {
                if self.role != Role::Server {
                    return Err(CloseCode::UnexpectedFrame);
                }
                self.bufs().open.cancel(req);
                Ok(())
            }
            _ => Err(CloseCode::UnexpectedFrame),
        }
    }

    /// A whole message, request or response arrived.
    fn complete(
        &mut self,
        _now: Instant,
        kind: DataKind,
        channel: u16,
        body: Bytes,
    ) -> Result<(), CloseCode> {
        self.stats.msgs_received += 1;
        self.stats.bytes_received += body.len() as u64;
        match kind {
            DataKind::Message => self.push_inbox(Incoming::Message { channel, body }),
            DataKind::Request(id) => {
                let max = self.config.requests_open_max;
                let b = self.bufs();
                if b.open.live >= max {
                    return Err(CloseCode::TooManyRequests);
                }
                if !b.open.insert(id, channel) {
                    return Err(CloseCode::UnexpectedFrame);
                }
                self.push_inbox(Incoming::Request { id: ReqId(id), channel, body });
            }
            DataKind::Response(id) => return self.on_answer(ReqId(id), Ok(body)),
        }
        Ok(())
    }

    /// A response (`Ok`) or reject (`Err(code)`) for one of our calls.
    fn on_answer(&mut self, id: ReqId, answer: Result<Bytes, u16>) -> Result<(), CloseCode> {
        let b = self.bufs();
        match b.calls.get(id).map(|s| s.state) {
            Some(CallState::Sent) => {
                b.calls.remove(id);
                b.calls.open_at_peer -= 1;
                b.events.push_back(match answer {
                    Ok(body) => Event::Response { id, body },
                    Err(code) => Event::CallFailed {
                        id,
                        failure: Failure { reason: FailReason::Rejected(code), fate: Fate::NotDelivered },
                    },
                });
                Ok(())
            }
            // Answered before it was completely sent: impossible for an honest peer.
            Some(_) => Err(CloseCode::UnexpectedFrame),
            // The call already ended (deadline, cancel): drop the answer.
            None => {
                self.stats.late_responses += 1;
                Ok(())
            }
        }
    }

    fn push_inbox(&mut self, item: Incoming) {
        let b = self.bufs();
        if b.inbox.is_empty() {
            b.events.push_back(Event::Readable);
        }
        b.inbox.push_back(item);
    }

    /// The application takes the next message or request.
    pub(crate) fn recv(&mut self, now: Instant) -> Option<Incoming> {
        let server = self.role == Role::Server;
        loop {
            let b = self.bufs.as_deref_mut()?;
            let item = b.inbox.pop_front()?;
            self.rx.consumed_msgs += 1;
            self.rx.consumed_bytes += item.body().len() as u64;
            let cancelled = match &item {
                Incoming::Request { id, .. } if server => b.open.taken(id.0),
                _ => false,
            };
            self.schedule_credit(now);
            if !cancelled {
                return Some(item);
            }
        }
    }

    /// Report consumption soon; at once if a quarter of the window has freed
    /// up (the sender may be waiting for it).
    fn schedule_credit(&mut self, now: Instant) {
        let msgs = self.rx.consumed_msgs - self.rx.credit_sent_msgs;
        let bytes = self.rx.consumed_bytes - self.rx.credit_sent_bytes;
        let c = &self.config;
        if msgs * 4 >= c.window_msgs_max as u64 || bytes * 4 >= c.window_bytes_max as u64 {
            self.link.credit_pending = true;
        } else if self.link.state != LinkState::Down {
            self.timers.set_min(Timer::AckDelay, now.add_millis(c.ack_delay_ms));
        }
    }
}
