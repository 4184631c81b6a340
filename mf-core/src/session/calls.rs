//! Request/response bookkeeping: the client's calls in flight (a slab whose
//! index and the session-wide call number make the request id) and the server's open requests.

use crate::time::Instant;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, Hasher};

/// Identifies a call: on the client, returned by `call`; on the server, seen
/// in [`Incoming::Request`](crate::Incoming::Request) and passed to `respond`.
///
/// Layout, as chosen by the client core (a stable part of the API): the low
/// 20 bits are the call's slot, below `calls_in_flight_max` and fixed for the
/// call's life ([`ReqId::slot`]); the bits above are the session's call
/// number, so an id never repeats within a session. A driver may index its
/// waiters by [`ReqId::slot`]. The server treats ids as opaque.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReqId(pub u64);

impl ReqId {
    /// The call's slot: below `Config::calls_in_flight_max`, unique among the
    /// client's calls in flight (a driver can index an array by it).
    ///
    /// ```
    /// let mut c = mf_core::Client::new(mf_core::Config::default(), mf_core::seed_from_u64(1)).unwrap();
    /// let a = c.call(0, "a", None).unwrap();
    /// let b = c.call(0, "b", None).unwrap();
    /// assert_ne!(a.slot(), b.slot());
    /// assert!(b.slot() < 1024);
    /// ```
    pub fn slot(self) -> usize {
        (self.0 & (CALLS_IN_FLIGHT_LIMIT as u64 - 1)) as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallState {
    Free,
    /// Accepted, no frame sent yet.
    Queued,
    /// Some frames sent, not the last.
    Sending,
    /// Completely sent; awaiting the response.
    Sent,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct CallSlot {
    /// The call number of the call in this slot (see [`Calls::insert`]).
    seq: u64,
    pub(crate) state: CallState,
    deadline: Instant,
}

/// Bits of a request id that index the slab; the rest is the call number.
const SLOT_BITS: u32 = 20;
/// Calls in flight cannot exceed the slab's index space.
pub(crate) const CALLS_IN_FLIGHT_LIMIT: u32 = 1 << SLOT_BITS;

/// The client's calls in flight.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    slots: Vec<CallSlot>,
    free: Vec<u32>,
    /// Calls in any state but Free.
    pub(crate) live: u32,
    /// Requests whose first frame was sent and that the server still counts as
    /// open (no response, reject or cancel yet).
    pub(crate) open_at_peer: u32,
    /// Deadlines, lazily deleted: an entry whose call has ended is skipped.
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Calls {
    fn split(id: ReqId) -> (usize, u64) {
        ((id.0 & (CALLS_IN_FLIGHT_LIMIT as u64 - 1)) as usize, id.0 >> SLOT_BITS)
    }

    fn id(seq: u64, idx: usize) -> ReqId {
        ReqId((seq << SLOT_BITS) | idx as u64)
    }

    /// Start call number `seq` (from the session's counter, which survives
    /// idle compaction: a request id is never reused within a session, so
    /// a late answer to an old request can never reach a new call). The
    /// caller has checked the limit.
    pub(crate) fn insert(&mut self, seq: u64, deadline: Option<Instant>) -> ReqId {
        let idx = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.slots.push(CallSlot { seq: 0, state: CallState::Free, deadline: Instant::NEVER });
                self.slots.len() - 1
            }
        };
        let s = &mut self.slots[idx];
        s.seq = seq;
        s.state = CallState::Queued;
        s.deadline = deadline.unwrap_or(Instant::NEVER);
        self.live += 1;
        let id = Self::id(seq, idx);
        if let Some(d) = deadline {
            self.heap.push(Reverse((d, id.0)));
            if self.heap.len() > 2 * self.live as usize + 32 {
                self.compact();
            }
        }
        id
    }

    /// The slot of a live call.
    pub(crate) fn get(&mut self, id: ReqId) -> Option<&mut CallSlot> {
        let (idx, seq) = Self::split(id);
        self.slots.get_mut(idx).filter(|s| s.seq == seq && s.state != CallState::Free)
    }

    pub(crate) fn is_live(&self, id: ReqId) -> bool {
        let (idx, seq) = Self::split(id);
        self.slots.get(idx).is_some_and(|s| s.seq == seq && s.state != CallState::Free)
    }

    /// End a call; returns its state before, or None if it was not live.
    pub(crate) fn remove(&mut self, id: ReqId) -> Option<CallState> {
        let (idx, seq) = Self::split(id);
        let s = self.slots.get_mut(idx).filter(|s| s.seq == seq && s.state != CallState::Free)?;
        let prev = s.state;
        s.state = CallState::Free;
        self.free.push(idx as u32);
        self.live -= 1;
        Some(prev)
    }

    /// The earliest deadline that may still matter.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|r| r.0.0)
    }

    /// Pop one call whose deadline is at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<ReqId> {
        while let Some(&Reverse((d, id))) = self.heap.peek() {
            if d > now {
                return None;
            }
            self.heap.pop();
            let id = ReqId(id);
            let (idx, seq) = Self::split(id);
            if self
                .slots
                .get(idx)
                .is_some_and(|s| s.seq == seq && s.state != CallState::Free && s.deadline == d)
            {
                return Some(id);
            }
        }
        None
    }

    /// Rebuild the deadline heap in its own buffer (no allocation in
    /// steady state).
    fn compact(&mut self) {
        let mut live = std::mem::take(&mut self.heap).into_vec();
        live.clear();
        live.extend(
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.state != CallState::Free && s.deadline != Instant::NEVER)
                .map(|(i, s)| Reverse((s.deadline, Self::id(s.seq, i).0))),
        );
        self.heap = BinaryHeap::from(live);
    }

    /// All live calls with their state, in slot order (deterministic).
    pub(crate) fn drain_live(&mut self) -> Vec<(ReqId, CallState)> {
        let mut out = Vec::new();
        for i in 0..self.slots.len() {
            let s = self.slots[i];
            if s.state != CallState::Free {
                let id = Self::id(s.seq, i);
                self.remove(id);
                out.push((id, s.state));
            }
        }
        self.heap.clear();
        self.open_at_peer = 0;
        out
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }
}

/// A keyed multiplicative hash for request ids. Ids come from the peer, so
/// the key (from the session's seeded generator) keeps them from being chosen
/// to collide; the map never iterates, so its order cannot leak anywhere.
#[derive(Clone, Debug, Default)]
pub(crate) struct IdHash(pub(crate) u64);

pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
    fn finish(&self) -> u64 {
        let x = self.0 ^ (self.0 >> 31);
        x.wrapping_mul(0xbf58_476d_1ce4_e5b9)
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpenReq {
    /// Still in the inbox (not yet taken by the application).
    pub(crate) in_inbox: bool,
    /// The client cancelled it.
    pub(crate) cancelled: bool,
    /// Its channel; the response goes on the same one.
    pub(crate) channel: u16,
}

/// The server's open requests in one session.
#[derive(Debug, Default)]
pub(crate) struct OpenRequests {
    map: HashMap<u64, OpenReq, IdHash>,
    /// Open and not cancelled: what the client counts too.
    pub(crate) live: u32,
}

impl OpenRequests {
    pub(crate) fn with_key(key: u64) -> Self {
        OpenRequests { map: HashMap::with_hasher(IdHash(key)), live: 0 }
    }

    /// A request arrived whole. False if the id is already open.
    pub(crate) fn insert(&mut self, id: u64, channel: u16) -> bool {
        if self.map.contains_key(&id) {
            return false;
        }
        self.map.insert(id, OpenReq { in_inbox: true, cancelled: false, channel });
        self.live += 1;
        true
    }

    /// The application took it from the inbox. True if it was cancelled
    /// meanwhile (it is then forgotten and must not be handed out).
    pub(crate) fn taken(&mut self, id: u64) -> bool {
        match self.map.get_mut(&id) {
            Some(r) if r.cancelled => {
                self.map.remove(&id);
                true
            }
            Some(r) => {
                r.in_inbox = false;
                false
            }
            None => true,
        }
    }

    /// The client cancelled `id`.
    pub(crate) fn cancel(&mut self, id: u64) {
        if let Some(r) = self.map.get_mut(&id) {
            if r.cancelled {
                return;
            }
            self.live -= 1;
            if r.in_inbox {
                r.cancelled = true;
            } else {
                self.map.remove(&id);
            }
        }
    }

    /// The application answers `id`: its channel if it was open (taken from
    /// the inbox, not cancelled), and it is open no more.
    pub(crate) fn answer(&mut self, id: u64) -> Option<u16> {
        match self.map.get(&id) {
            Some(r) if !r.cancelled && !r.in_inbox => {
                let channel = r.channel;
                self.map.remove(&id);
                self.live -= 1;
                Some(channel)
            }
            _ => None,
        }
    }

    /// True if `id` is open and was taken by the application.
    pub(crate) fn is_answerable(&self, id: u64) -> bool {
        self.map.get(&id).is_some_and(|r| !r.cancelled && !r.in_inbox)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.live = 0;
    }
}
