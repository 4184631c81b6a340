//! Waiters for call outcomes: a slab indexed by the core's call slot.
//!
//! mf-core numbers a call `(call number << 20) | slot`, where the slot is an
//! index into its own slab of calls in flight, unique among live calls. A
//! waiter here sits at the same index, so finding the waiter of a response
//! is an array access, and a call allocates nothing once the slab has grown
//! to the session's depth of calls. A waiter outlives its core call when the
//! outcome arrived but its future has not collected it yet; if the core
//! reuses that slot for a new call meanwhile, the new waiter goes to a small
//! overflow map instead (also used if an id ever fell outside the slab).
//! Every lookup compares the whole id, so a late event for an old call can
//! never reach a new one.

use crate::error::CallError;
use bytes::Bytes;
use mf_core::ReqId;
use std::collections::BTreeMap;
use std::task::{Context, Poll, Waker};

/// Bits of a request id that hold the core's slot index.
const SLOT_BITS: u32 = 20;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;

pub(crate) type Outcome = Result<Bytes, CallError>;

#[derive(Debug, Default)]
struct Waiter {
    /// The call this slot belongs to; `None` when free.
    id: Option<ReqId>,
    outcome: Option<Outcome>,
    waker: Option<Waker>,
    /// The driver's transmit-pull count when the request was queued: if it
    /// has moved on, the request has been taken for writing.
    queued_at_pull: u64,
}

impl Waiter {
    fn occupied(id: ReqId, queued_at_pull: u64) -> Self {
        Waiter { id: Some(id), outcome: None, waker: None, queued_at_pull }
    }
}

/// Waiters of the calls a client has in flight or not yet collected.
///
/// Bounded: the slab never grows past `slots_max` (the session's
/// `calls_in_flight_max`), and the overflow map holds only calls whose
/// futures are alive.
#[derive(Debug)]
pub(crate) struct CallSlots {
    slots: Vec<Waiter>,
    overflow: BTreeMap<ReqId, Waiter>,
    slots_max: usize,
}

impl CallSlots {
    pub(crate) fn new(slots_max: usize) -> Self {
        CallSlots { slots: Vec::new(), overflow: BTreeMap::new(), slots_max: slots_max.max(1) }
    }

    fn index(id: ReqId) -> usize {
        (id.0 & SLOT_MASK) as usize
    }

    fn get_mut(&mut self, id: ReqId) -> Option<&mut Waiter> {
        let i = Self::index(id);
        match self.slots.get_mut(i) {
            Some(w) if w.id == Some(id) => Some(w),
            _ => self.overflow.get_mut(&id),
        }
    }

    /// Track a call the core just accepted.
    pub(crate) fn open(&mut self, id: ReqId, queued_at_pull: u64) {
        let i = Self::index(id);
        if i < self.slots_max {
            if self.slots.len() <= i {
                self.slots.resize_with(i + 1, Waiter::default);
            }
            if self.slots[i].id.is_none() {
                self.slots[i] = Waiter::occupied(id, queued_at_pull);
                return;
            }
        }
        self.overflow.insert(id, Waiter::occupied(id, queued_at_pull));
    }

    /// Record `id`'s outcome and wake its waiter. Ignored if nobody waits
    /// for `id` any more (its future was dropped) or it has one already.
    pub(crate) fn complete(&mut self, id: ReqId, outcome: Outcome) {
        if let Some(w) = self.get_mut(id) {
            if w.outcome.is_none() {
                w.outcome = Some(outcome);
                if let Some(waker) = w.waker.take() {
                    waker.wake();
                }
            }
        }
    }

    /// Give every call still without an outcome this one (the driver
    /// stopped), waking the waiters.
    pub(crate) fn complete_all(&mut self, outcome: impl Fn() -> Outcome) {
        for w in self.slots.iter_mut().chain(self.overflow.values_mut()) {
            if w.id.is_some() && w.outcome.is_none() {
                w.outcome = Some(outcome());
                if let Some(waker) = w.waker.take() {
                    waker.wake();
                }
            }
        }
    }

    /// Take `id`'s outcome if it has one (freeing its slot), else remember
    /// `cx`'s waker. `None` if `id` is not tracked.
    pub(crate) fn poll(&mut self, id: ReqId, cx: &mut Context<'_>) -> Option<Poll<Outcome>> {
        let w = self.get_mut(id)?;
        match w.outcome.take() {
            Some(outcome) => {
                self.forget(id);
                Some(Poll::Ready(outcome))
            }
            None => {
                if !w.waker.as_ref().is_some_and(|old| old.will_wake(cx.waker())) {
                    w.waker = Some(cx.waker().clone());
                }
                Some(Poll::Pending)
            }
        }
    }

    /// Forget the waker of `id` (its caller is about to look for the
    /// outcome itself: completing it should not wake the caller's task for
    /// nothing).
    pub(crate) fn clear_waker(&mut self, id: ReqId) {
        if let Some(w) = self.get_mut(id) {
            w.waker = None;
        }
    }

    /// The transmit-pull count at which `id` was queued.
    pub(crate) fn queued_at_pull(&mut self, id: ReqId) -> Option<u64> {
        self.get_mut(id).map(|w| w.queued_at_pull)
    }

    /// Stop tracking `id` (collected, or its future was dropped).
    pub(crate) fn forget(&mut self, id: ReqId) {
        let i = Self::index(id);
        match self.slots.get_mut(i) {
            Some(w) if w.id == Some(id) => *w = Waiter::default(),
            _ => {
                self.overflow.remove(&id);
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.slots.iter().filter(|w| w.id.is_some()).count() + self.overflow.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn id(call: u64, slot: u64) -> ReqId {
        ReqId((call << SLOT_BITS) | slot)
    }

    fn poll(s: &mut CallSlots, id: ReqId) -> Option<Poll<Outcome>> {
        s.poll(id, &mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn outcome_reaches_its_call_only() {
        let mut s = CallSlots::new(8);
        s.open(id(1, 0), 0);
        assert!(matches!(poll(&mut s, id(1, 0)), Some(Poll::Pending)));
        // A late event of an older call in the same slot is ignored.
        s.complete(id(0, 0), Ok(Bytes::from_static(b"old")));
        assert!(matches!(poll(&mut s, id(1, 0)), Some(Poll::Pending)));
        s.complete(id(1, 0), Ok(Bytes::from_static(b"new")));
        // The first outcome wins.
        s.complete(id(1, 0), Err(CallError::Stopped));
        match poll(&mut s, id(1, 0)) {
            Some(Poll::Ready(Ok(b))) => assert_eq!(&b[..], b"new"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.tracked(), 0);
        assert!(poll(&mut s, id(1, 0)).is_none());
    }

    #[test]
    fn uncollected_outcome_and_reused_slot_coexist() {
        let mut s = CallSlots::new(8);
        s.open(id(1, 3), 0);
        s.complete(id(1, 3), Ok(Bytes::from_static(b"one")));
        // The core reused slot 3 before the first outcome was collected.
        s.open(id(2, 3), 0);
        s.complete(id(2, 3), Ok(Bytes::from_static(b"two")));
        match poll(&mut s, id(2, 3)) {
            Some(Poll::Ready(Ok(b))) => assert_eq!(&b[..], b"two"),
            other => panic!("{other:?}"),
        }
        match poll(&mut s, id(1, 3)) {
            Some(Poll::Ready(Ok(b))) => assert_eq!(&b[..], b"one"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.tracked(), 0);
    }

    #[test]
    fn slab_is_bounded_and_forget_frees() {
        let mut s = CallSlots::new(4);
        s.open(id(1, 100), 7); // past the slab: overflow
        assert_eq!(s.queued_at_pull(id(1, 100)), Some(7));
        assert!(s.slots.len() <= 4);
        s.open(id(2, 1), 0);
        s.forget(id(2, 1));
        s.forget(id(1, 100));
        assert_eq!(s.tracked(), 0);
        s.open(id(3, 2), 0);
        s.complete_all(|| Err(CallError::Stopped));
        assert!(matches!(poll(&mut s, id(3, 2)), Some(Poll::Ready(Err(CallError::Stopped)))));
    }
}
