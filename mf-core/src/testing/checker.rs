//! The invariant checker: records what every side sent, received and was
//! told, and reports any breach of the contract:
//!
//! - **C2 exactly once**: no message or request reaches the receiving
//!   application twice; a receipt only for a message that arrived; a message
//!   reported `NotDelivered` never arrives;
//! - **C3 order**: per (sender, channel), arrivals are in send order;
//! - **C6 requests**: every call ends in exactly one response or failure; a
//!   response only for a request the server application took, and matching it;
//! - **outcomes**: every message accepted by `send` ends in exactly one
//!   outcome (checked by [`Checker::finish`], after the network has healed:
//!   that is the liveness check);
//! - **integrity**: every body arrives byte for byte as sent.
//!
//! Bodies carry their own identity (see [`payload`]), so the checker needs no
//! cooperation from the transport under test: the core simulator and the
//! turmoil scenarios of `mf-sim` feed it the same way.

use crate::error::{FailReason, Fate};
use bytes::Bytes;
use std::collections::BTreeMap;

const MAGIC: u8 = 0xa5;
/// Bytes of identity at the start of every test body.
pub const PAYLOAD_HEADER_LEN: usize = 16;

/// What a test body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A one-way message.
    Message = 0,
    /// A request.
    Request = 1,
    /// A response (the request's body with this kind).
    Response = 2,
}

/// A parsed test body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    /// What it is.
    pub kind: Kind,
    /// Who sent it (a client index, or a server-side sender id).
    pub origin: u32,
    /// The sender's sequence number, increasing across all its channels.
    pub seq: u64,
    /// The channel it was sent on.
    pub channel: u16,
}

fn fill_byte(seq: u64, i: usize) -> u8 {
    (seq as usize).wrapping_mul(31).wrapping_add(i) as u8
}

/// A test body: a 16-byte identity, then `extra` bytes derived from the seq
/// (so corruption anywhere is detected).
///
/// ```
/// use mf_core::testing::checker::{payload, parse, Kind};
/// let b = payload(Kind::Message, 3, 9, 2, 100);
/// let t = parse(&b).unwrap();
/// assert_eq!((t.origin, t.seq, t.channel), (3, 9, 2));
/// ```
pub fn payload(kind: Kind, origin: u32, seq: u64, channel: u16, extra: usize) -> Bytes {
    let mut v = Vec::with_capacity(PAYLOAD_HEADER_LEN + extra);
    v.push(MAGIC);
    v.push(kind as u8);
    v.extend_from_slice(&origin.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&channel.to_le_bytes());
    v.extend((0..extra).map(|i| fill_byte(seq, i)));
    Bytes::from(v)
}

/// Parse and verify a test body.
pub fn parse(b: &[u8]) -> Result<Tag, String> {
    if b.len() < PAYLOAD_HEADER_LEN || b[0] != MAGIC {
        return Err(format!("not a test body ({} bytes)", b.len()));
    }
    let kind = match b[1] {
        0 => Kind::Message,
        1 => Kind::Request,
        2 => Kind::Response,
        k => return Err(format!("bad kind {k}")),
    };
    let origin = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[6..14]);
    let seq = u64::from_le_bytes(s);
    let channel = u16::from_le_bytes([b[14], b[15]]);
    for (i, &x) in b[PAYLOAD_HEADER_LEN..].iter().enumerate() {
        if x != fill_byte(seq, i) {
            return Err(format!("body of {origin}/{seq} corrupt at byte {}", PAYLOAD_HEADER_LEN + i));
        }
    }
    Ok(Tag { kind, origin, seq, channel })
}

/// The response body a test server sends for a request body: the same bytes
/// with the kind changed.
pub fn response_for(request: &[u8]) -> Bytes {
    let mut v = request.to_vec();
    if v.len() > 1 {
        v[1] = Kind::Response as u8;
    }
    Bytes::from(v)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Failed(Fate),
    Response,
    CallFailed(Fate, bool),
    /// The sender died (process restart): no outcome will come.
    Abandoned,
}

#[derive(Debug)]
struct Rec {
    call: bool,
    channel: u16,
    /// Times it reached the receiving application.
    arrived: u32,
    outcome: Option<Outcome>,
}

/// Totals from a checked run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages accepted by `send`.
    pub messages: u64,
    /// Calls accepted by `call`.
    pub calls: u64,
    /// Messages and requests that reached the receiving application.
    pub arrived: u64,
    /// Receipts.
    pub receipts: u64,
    /// Responses.
    pub responses: u64,
    /// Failures reported `NotDelivered`.
    pub failed_not_delivered: u64,
    /// Failures reported `Unknown`.
    pub failed_unknown: u64,
    /// Failures that were rejections by the server application.
    pub rejected: u64,
}

/// Records a run's history and finds contract violations.
#[derive(Debug, Default)]
pub struct Checker {
    recs: BTreeMap<(u32, u64), Rec>,
    last_arrival: BTreeMap<(u32, u16), u64>,
    violations: Vec<String>,
    summary: Summary,
}

impl Checker {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn violation(&mut self, v: String) {
        if self.violations.len() < 100 {
            self.violations.push(v);
        }
    }

    /// Record a memory-bound violation found by the harness.
    pub fn violation_memory(&mut self, v: String) {
        self.violation(v);
    }

    /// Violations found so far.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Totals so far.
    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// `send` accepted message `seq` of `origin`.
    pub fn sent(&mut self, origin: u32, seq: u64, channel: u16) {
        self.summary.messages += 1;
        self.record(origin, seq, channel, false);
    }

    /// `call` accepted request `seq` of `origin`.
    pub fn called(&mut self, origin: u32, seq: u64, channel: u16) {
        self.summary.calls += 1;
        self.record(origin, seq, channel, true);
    }

    fn record(&mut self, origin: u32, seq: u64, channel: u16, call: bool) {
        let prev = self.recs.insert((origin, seq), Rec { call, channel, arrived: 0, outcome: None });
        if prev.is_some() {
            self.violation(format!("test bug: {origin}/{seq} sent twice"));
        }
    }

    /// The receiving application took `body` (a message or a request).
    pub fn arrived(&mut self, body: &[u8]) {
        let tag = match parse(body) {
            Ok(t) => t,
            Err(e) => return self.violation(format!("integrity: {e}")),
        };
        self.summary.arrived += 1;
        let key = (tag.origin, tag.seq);
        let Some(rec) = self.recs.get_mut(&key) else {
            return self.violation(format!("{}/{} arrived but was never sent", tag.origin, tag.seq));
        };
        rec.arrived += 1;
        let (arrived, outcome, channel) = (rec.arrived, rec.outcome, rec.channel);
        if arrived > 1 {
            self.violation(format!("C2: {}/{} arrived {arrived} times", tag.origin, tag.seq));
        }
        if channel != tag.channel {
            self.violation(format!(
                "{}/{} arrived with channel {} not {channel}",
                tag.origin, tag.seq, tag.channel
            ));
        }
        if let Some(Outcome::Failed(Fate::NotDelivered) | Outcome::CallFailed(Fate::NotDelivered, false)) =
            outcome
        {
            self.violation(format!(
                "C2: {}/{} arrived after it was reported not delivered",
                tag.origin, tag.seq
            ));
        }
        let key = (tag.origin, tag.channel);
        if let Some(&last) = self.last_arrival.get(&key) {
            if tag.seq < last {
                self.violation(format!(
                    "C3: {}/{} arrived after {}/{last} on channel {}",
                    tag.origin, tag.seq, tag.origin, tag.channel
                ));
            }
        }
        let last = self.last_arrival.entry(key).or_insert(tag.seq);
        *last = (*last).max(tag.seq);
    }

    fn set_outcome(&mut self, origin: u32, seq: u64, o: Outcome) -> Option<u32> {
        let Some(rec) = self.recs.get_mut(&(origin, seq)) else {
            self.violation(format!("outcome {o:?} for {origin}/{seq}, which was never sent"));
            return None;
        };
        if let Some(prev) = rec.outcome {
            self.violation(format!("{origin}/{seq} has a second outcome {o:?} after {prev:?}"));
            return None;
        }
        rec.outcome = Some(o);
        Some(rec.arrived)
    }

    /// The receipt for message `seq` of `origin` came back.
    pub fn receipt(&mut self, origin: u32, seq: u64) {
        self.summary.receipts += 1;
        if let Some(arrived) = self.set_outcome(origin, seq, Outcome::Delivered) {
            if arrived != 1 {
                self.violation(format!("C4: receipt for {origin}/{seq}, which arrived {arrived} times"));
            }
        }
    }

    /// Message `seq` of `origin` failed.
    pub fn send_failed(&mut self, origin: u32, seq: u64, fate: Fate) {
        match fate {
            Fate::NotDelivered => self.summary.failed_not_delivered += 1,
            Fate::Unknown => self.summary.failed_unknown += 1,
        }
        if let Some(arrived) = self.set_outcome(origin, seq, Outcome::Failed(fate)) {
            if fate == Fate::NotDelivered && arrived > 0 {
                self.violation(format!("C2: {origin}/{seq} reported not delivered but arrived"));
            }
        }
    }

    /// Call `seq` of `origin` got `body` back.
    pub fn response(&mut self, origin: u32, seq: u64, body: &[u8]) {
        self.summary.responses += 1;
        match parse(body) {
            Ok(t) if t.kind == Kind::Response && t.origin == origin && t.seq == seq => {}
            Ok(t) => self.violation(format!(
                "C6: call {origin}/{seq} got the response of {}/{} ({:?})",
                t.origin, t.seq, t.kind
            )),
            Err(e) => self.violation(format!("integrity: response to {origin}/{seq}: {e}")),
        }
        if let Some(arrived) = self.set_outcome(origin, seq, Outcome::Response) {
            if arrived != 1 {
                self.violation(format!(
                    "C6: response for {origin}/{seq}, which the server took {arrived} times"
                ));
            }
        }
    }

    /// Call `seq` of `origin` failed.
    pub fn call_failed(&mut self, origin: u32, seq: u64, reason: FailReason, fate: Fate) {
        let rejected = matches!(reason, FailReason::Rejected(_));
        if rejected {
            self.summary.rejected += 1;
        } else if fate == Fate::NotDelivered {
            self.summary.failed_not_delivered += 1;
        } else {
            self.summary.failed_unknown += 1;
        }
        if let Some(arrived) = self.set_outcome(origin, seq, Outcome::CallFailed(fate, rejected)) {
            if fate == Fate::NotDelivered && !rejected && arrived > 0 {
                self.violation(format!(
                    "C6: call {origin}/{seq} reported not delivered but the server took it"
                ));
            }
            if rejected && arrived != 1 {
                self.violation(format!(
                    "C6: call {origin}/{seq} rejected but the server took it {arrived} times"
                ));
            }
        }
    }

    /// End of run, after the network has healed and the run has settled:
    /// every message and call must have its one outcome.
    pub fn finish(&mut self) -> Result<Summary, Vec<String>> {
        let mut missing = Vec::new();
        for (&(origin, seq), rec) in &self.recs {
            if rec.outcome.is_none() {
                let what = if rec.call { "call" } else { "message" };
                missing.push(format!(
                    "liveness: {what} {origin}/{seq} has no outcome (arrived {} times)",
                    rec.arrived
                ));
            }
        }
        for m in missing.into_iter().take(20) {
            self.violation(m);
        }
        if self.violations.is_empty() { Ok(self.summary) } else { Err(self.violations.clone()) }
    }

    /// The senders matching `origin` died: their messages without an
    /// outcome need none (they may or may not have arrived, once at most).
    pub fn abandon(&mut self, origin: impl Fn(u32) -> bool) {
        for (&(o, _), rec) in self.recs.iter_mut() {
            if origin(o) && rec.outcome.is_none() {
                rec.outcome = Some(Outcome::Abandoned);
            }
        }
    }

    /// Messages and calls without an outcome yet.
    pub fn pending(&self) -> usize {
        self.recs.values().filter(|r| r.outcome.is_none()).count()
    }
}
