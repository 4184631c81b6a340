//! Completion slots and wait lists: how a blocked application thread learns
//! that its call was answered, its message delivered, or its session lost.
//!
//! Everything here lives inside the owner's `Mutex`. A waiter registers its
//! [`Thread`] under the lock, releases the lock and parks; whoever fills the
//! slot does so under the lock and unparks the registered thread. Park
//! tokens make the unpark that lands between "register" and "park" count,
//! so no wake-up is lost; a stale token only causes one more check.
//! These are the structures the loom models in this module explore.

use crate::sync::{AtomicU64, Mutex, MutexGuard, Ordering, Thread, current, lock, park};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

/// Hashes operation ids. They are this side's own counters (the peer never
/// chooses them), so a fast multiplicative mix is enough; SipHash showed up
/// in profiles of pipelined calls.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// One pending operation's outcome, and who waits for it.
#[derive(Debug)]
struct Slot<T> {
    outcome: Option<T>,
    waiter: Option<Thread>,
}

/// An operation id as a table index: ids are this side's own counters, so
/// operations in flight at once have nearby, distinct counts (message ids
/// count up; a request id is its call number above `REQ_SLOT_BITS` bits of
/// the core's call slot). Any index is correct; these make collisions rare.
pub(crate) trait SlotKey: Copy + Eq + Hash {
    fn index(self) -> usize;
}

/// Low bits of a request id that hold the core's call slot (reused at once
/// by the next call); the bits above count calls.
const REQ_SLOT_BITS: u32 = 20;

impl SlotKey for u64 {
    fn index(self) -> usize {
        self as usize
    }
}

impl SlotKey for mf_core::ReqId {
    fn index(self) -> usize {
        (self.0 >> REQ_SLOT_BITS) as usize
    }
}

impl SlotKey for mf_core::MsgId {
    fn index(self) -> usize {
        self.0 as usize
    }
}

impl<S: Copy + Eq + Hash> SlotKey for (S, mf_core::MsgId) {
    fn index(self) -> usize {
        self.1.0 as usize
    }
}

/// Entries of the direct table at most; beyond, colliding ids go to the map.
const DIRECT_MAX: usize = 1024;
/// The direct table's first size.
const DIRECT_MIN: usize = 8;

/// Outcomes keyed by operation id. Bounded by the protocol core's own
/// limits: a slot exists only for an operation the core accepted and has
/// not yet finished, or finished and not yet collected by its handle.
///
/// Most ids live in a table indexed by their low bits (no hashing, no
/// allocation per operation: P2's per-call cost); one whose place is taken
/// (an older outcome not collected yet) doubles the table, up to
/// `DIRECT_MAX` entries, then goes to a map.
#[derive(Debug)]
pub(crate) struct Slots<K, T> {
    direct: Vec<Option<(K, Slot<T>)>>,
    overflow: HashMap<K, Slot<T>, BuildHasherDefault<IdHasher>>,
    /// Slots with a registered waiter (a waiter is only ever registered on a
    /// slot without an outcome, and removed when the outcome arrives).
    waiting: usize,
}

impl<K: SlotKey, T> Slots<K, T> {
    pub(crate) fn new() -> Self {
        Slots { direct: Vec::new(), overflow: HashMap::default(), waiting: 0 }
    }

    fn pos(&self, k: K) -> usize {
        k.index() & (self.direct.len() - 1)
    }

    fn get_mut(&mut self, k: K) -> Option<&mut Slot<T>> {
        if !self.direct.is_empty() {
            let i = self.pos(k);
            if matches!(&self.direct[i], Some((key, _)) if *key == k) {
                return self.direct[i].as_mut().map(|(_, s)| s);
            }
        }
        if self.overflow.is_empty() { None } else { self.overflow.get_mut(&k) }
    }

    fn get(&self, k: K) -> Option<&Slot<T>> {
        if !self.direct.is_empty() {
            if let Some((key, s)) = &self.direct[self.pos(k)] {
                if *key == k {
                    return Some(s);
                }
            }
        }
        if self.overflow.is_empty() { None } else { self.overflow.get(&k) }
    }

    fn take_slot(&mut self, k: K) -> Option<Slot<T>> {
        if !self.direct.is_empty() {
            let i = self.pos(k);
            if self.direct[i].as_ref().is_some_and(|(key, _)| *key == k) {
                return self.direct[i].take().map(|(_, s)| s);
            }
        }
        if self.overflow.is_empty() { None } else { self.overflow.remove(&k) }
    }

    /// Double the table (entries that collide in the new one go to the map).
    fn grow(&mut self) {
        let n = (self.direct.len() * 2).max(DIRECT_MIN);
        let old = std::mem::replace(&mut self.direct, (0..n).map(|_| None).collect());
        for (k, s) in old.into_iter().flatten() {
            let i = self.pos(k);
            if self.direct[i].is_none() {
                self.direct[i] = Some((k, s));
            } else {
                self.overflow.insert(k, s);
            }
        }
    }

    /// Track `k`; its outcome is filled in later.
    pub(crate) fn open(&mut self, k: K) {
        if let Some(old) = self.take_slot(k) {
            self.forget(old);
        }
        let slot = Slot { outcome: None, waiter: None };
        loop {
            if !self.direct.is_empty() {
                let i = self.pos(k);
                if self.direct[i].is_none() {
                    self.direct[i] = Some((k, slot));
                    return;
                }
            }
            if self.direct.len() >= DIRECT_MAX {
                self.overflow.insert(k, slot);
                return;
            }
            self.grow();
        }
    }

    fn forget(&mut self, s: Slot<T>) {
        if s.waiter.is_some() {
            self.waiting -= 1;
        }
    }

    /// Record `k`'s outcome (first one wins) and wake its waiter. Unknown
    /// ids (nobody tracks them any more) are ignored.
    pub(crate) fn complete(&mut self, k: K, v: T) {
        let mut woke = false;
        if let Some(s) = self.get_mut(k) {
            if s.outcome.is_none() {
                s.outcome = Some(v);
                if let Some(t) = s.waiter.take() {
                    woke = true;
                    t.unpark();
                }
            }
        }
        if woke {
            self.waiting -= 1;
        }
    }

    /// Fill every slot still without an outcome (the session is over).
    pub(crate) fn complete_all(&mut self, mut v: impl FnMut() -> T) {
        let direct = self.direct.iter_mut().flatten().map(|(_, s)| s);
        for s in direct.chain(self.overflow.values_mut()) {
            if s.outcome.is_none() {
                s.outcome = Some(v());
                if let Some(t) = s.waiter.take() {
                    self.waiting -= 1;
                    t.unpark();
                }
            }
        }
    }

    /// True if `k` has its outcome (without taking it).
    pub(crate) fn is_done(&self, k: K) -> bool {
        self.get(k).is_some_and(|s| s.outcome.is_some())
    }

    /// `k`'s outcome, if it has one (the slot stays).
    pub(crate) fn peek(&self, k: K) -> Option<&T> {
        self.get(k).and_then(|s| s.outcome.as_ref())
    }

    /// Take `k`'s outcome if it has one; the slot is freed.
    pub(crate) fn take(&mut self, k: K) -> Option<T> {
        if !self.is_done(k) {
            return None;
        }
        self.take_slot(k).and_then(|s| s.outcome)
    }

    /// True if a thread waits for some slot still without an outcome.
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiting > 0
    }

    /// Forget `k` (its handle was dropped).
    pub(crate) fn remove(&mut self, k: K) {
        if let Some(old) = self.take_slot(k) {
            self.forget(old);
        }
    }

    /// Wake the current thread when `k` completes (if it has not yet).
    pub(crate) fn register(&mut self, k: K, t: Thread) {
        let mut added = false;
        if let Some(s) = self.get_mut(k).filter(|s| s.outcome.is_none()) {
            added = s.waiter.replace(t).is_none();
        }
        if added {
            self.waiting += 1;
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.direct.iter().flatten().count() + self.overflow.len()
    }
}

/// Threads waiting for "something changed" (inbox readable, send-queue
/// room, session state). Woken all at once; each re-checks its condition.
#[derive(Debug, Default)]
pub(crate) struct WaitList {
    threads: Vec<Thread>,
}

impl WaitList {
    pub(crate) fn add(&mut self, t: Thread) {
        // A thread that woke spuriously re-registers: keep one entry per thread.
        if !self.threads.iter().any(|x| x.id() == t.id()) {
            self.threads.push(t);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    pub(crate) fn wake_all(&mut self) {
        for t in self.threads.drain(..) {
            t.unpark();
        }
    }
}

/// What a wait gives up at.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Until {
    Forever,
    At(Instant),
    /// Do not wait at all: one check.
    Now,
}

impl Until {
    pub(crate) fn after(d: Option<Duration>) -> Until {
        match d {
            None => Until::Forever,
            Some(d) if d.is_zero() => Until::Now,
            Some(d) => Instant::now().checked_add(d).map_or(Until::Forever, Until::At),
        }
    }

    /// Time left, `None` for forever; `Some(ZERO)` once passed.
    pub(crate) fn remaining(self) -> Option<Duration> {
        match self {
            Until::Forever => None,
            Until::Now => Some(Duration::ZERO),
            Until::At(t) => Some(t.saturating_duration_since(Instant::now())),
        }
    }
}

/// Wait, holding `m`'s guard between checks, until `check` gives a result or
/// `until` passes (then `None`). `register` records the current thread
/// wherever the producer of the awaited change will find it.
pub(crate) fn wait_until<'a, S, R>(
    m: &'a Mutex<S>,
    mut g: MutexGuard<'a, S>,
    until: Until,
    mut check: impl FnMut(&mut S) -> Option<R>,
    mut register: impl FnMut(&mut S, Thread),
) -> (MutexGuard<'a, S>, Option<R>) {
    loop {
        if let Some(r) = check(&mut g) {
            return (g, Some(r));
        }
        let left = until.remaining();
        if left == Some(Duration::ZERO) {
            return (g, None);
        }
        register(&mut g, current());
        drop(g);
        park(left);
        g = lock(m);
    }
}

/// "Something became ready somewhere": producers that do not share the
/// waiters' lock (the server's workers, each with its own lock) bump a
/// generation and wake the parked readers; a reader that scanned every
/// source and found nothing parks only if the generation has not moved
/// since before its scan, so a readiness that lands mid-scan is never lost.
#[derive(Debug, Default)]
pub(crate) struct ReadySignal {
    generation: AtomicU64,
    parked: Mutex<WaitList>,
}

impl ReadySignal {
    /// Producer side: something became ready.
    pub(crate) fn notify(&self) {
        self.generation.fetch_add(1, Ordering::Release);
        lock(&self.parked).wake_all();
    }

    /// Wake every parked reader (shutdown).
    pub(crate) fn wake_all(&self) {
        self.notify();
    }

    /// Reader side: `scan` every source until it yields, `until` passes
    /// (`None`), or `stop` says to give up (`None`).
    pub(crate) fn wait<R>(
        &self,
        until: Until,
        mut scan: impl FnMut() -> Option<R>,
        stop: impl Fn() -> bool,
    ) -> Option<R> {
        loop {
            let generation = self.generation.load(Ordering::Acquire);
            if let Some(r) = scan() {
                return Some(r);
            }
            if stop() {
                return None;
            }
            let left = until.remaining();
            if left == Some(Duration::ZERO) {
                return None;
            }
            let mut p = lock(&self.parked);
            if self.generation.load(Ordering::Acquire) != generation {
                continue;
            }
            p.add(current());
            drop(p);
            park(left);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Ids whose low bits collide, more of them than the direct table
    /// holds, completed and taken in any order: each keeps its own outcome.
    #[test]
    fn slots_keep_colliding_ids_apart() {
        let mut s: Slots<u64, u64> = Slots::new();
        let ids: Vec<u64> = (0..3000u64).map(|i| (i % 7) | (i << 20)).collect();
        for &k in &ids {
            s.open(k);
        }
        assert_eq!(s.len(), ids.len());
        for &k in ids.iter().rev() {
            s.complete(k, k * 3);
        }
        s.complete(ids[0], 1); // the first outcome wins
        for &k in ids.iter().step_by(2) {
            assert_eq!(s.take(k), Some(k * 3));
            assert_eq!(s.take(k), None);
        }
        for &k in ids.iter().skip(1).step_by(2) {
            assert!(s.is_done(k));
            s.remove(k);
        }
        assert_eq!(s.len(), 0);
        s.complete(ids[1], 0); // unknown now: ignored
        assert_eq!(s.len(), 0);
    }

    /// Consecutive calls of a session get consecutive call numbers above
    /// the slot bits: pipelined calls take distinct places in the direct
    /// table (if the core's id layout changes, this fails and slots fall
    /// back to the map: slower, still correct).
    #[test]
    fn request_ids_count_up_above_the_slot_bits() {
        let mut c = mf_core::Client::new(mf_core::Config::default(), mf_core::seed_from_u64(1)).unwrap();
        let ids: Vec<usize> = (0..300).map(|_| c.call(0, "x", None).unwrap().index()).collect();
        for w in ids.windows(2) {
            assert_eq!(w[1], w[0] + 1, "{ids:?}");
        }
        let mut s: Slots<mf_core::ReqId, ()> = Slots::new();
        let mut c = mf_core::Client::new(mf_core::Config::default(), mf_core::seed_from_u64(2)).unwrap();
        for _ in 0..256 {
            s.open(c.call(0, "x", None).unwrap());
        }
        assert!(s.overflow.is_empty());
    }

    /// A waiter is counted once and uncounted when its slot completes or goes.
    #[test]
    fn slots_count_waiters() {
        let mut s: Slots<u64, ()> = Slots::new();
        s.open(1);
        s.open(1 + (1 << 20));
        s.register(1, current());
        s.register(1, current());
        s.register(1 + (1 << 20), current());
        assert!(s.has_waiters());
        s.complete(1, ());
        assert!(s.has_waiters());
        s.remove(1 + (1 << 20));
        assert!(!s.has_waiters());
        s.register(1, current()); // done already: not registered
        assert!(!s.has_waiters());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::{Arc, AtomicBool, Ordering};
    use loom::thread;

    struct St {
        calls: Slots<u64, Result<u32, &'static str>>,
        inbox: Vec<u32>,
        readers: WaitList,
        ended: bool,
    }

    fn state() -> Arc<Mutex<St>> {
        Arc::new(Mutex::new(St {
            calls: Slots::new(),
            inbox: Vec::new(),
            readers: WaitList::default(),
            ended: false,
        }))
    }

    /// A call's waiter, the I/O side that answers it and a session end that
    /// fails everything race: the waiter always wakes with exactly one outcome.
    #[test]
    fn loom_call_slot_completes_once() {
        loom::model(|| {
            let s = state();
            lock(&s).calls.open(1);
            let answer = {
                let s = s.clone();
                thread::spawn(move || lock(&s).calls.complete(1, Ok(7)))
            };
            let end = {
                let s = s.clone();
                thread::spawn(move || {
                    let mut g = lock(&s);
                    g.ended = true;
                    g.calls.complete_all(|| Err("session lost"));
                })
            };
            let g = lock(&s);
            let (g, r) =
                wait_until(&s, g, Until::Forever, |st| st.calls.take(1), |st, t| st.calls.register(1, t));
            assert!(matches!(r, Some(Ok(7)) | Some(Err("session lost"))));
            assert_eq!(g.calls.len(), 0);
            drop(g);
            answer.join().unwrap();
            end.join().unwrap();
        });
    }

    /// A reader waiting on an empty inbox is woken by a push or by the end of
    /// the session, whichever comes first; it never sleeps through either.
    #[test]
    fn loom_inbox_waiter_wakes_on_push_or_end() {
        loom::model(|| {
            let s = state();
            let push = {
                let s = s.clone();
                thread::spawn(move || {
                    let mut g = lock(&s);
                    g.inbox.push(5);
                    g.readers.wake_all();
                })
            };
            let end = {
                let s = s.clone();
                thread::spawn(move || {
                    let mut g = lock(&s);
                    g.ended = true;
                    g.readers.wake_all();
                })
            };
            let g = lock(&s);
            let (_g, r) = wait_until(
                &s,
                g,
                Until::Forever,
                |st| {
                    if let Some(m) = st.inbox.pop() {
                        Some(Ok(m))
                    } else if st.ended {
                        Some(Err(()))
                    } else {
                        None
                    }
                },
                |st, t| st.readers.add(t),
            );
            assert!(r.is_some());
            drop(_g);
            push.join().unwrap();
            end.join().unwrap();
        });
    }

    /// The shutdown flag is seen by a worker that checks it between waits,
    /// and the worker wakes for it.
    #[test]
    fn loom_shutdown_flag_wakes_waiter() {
        loom::model(|| {
            let s = state();
            let stop = Arc::new(AtomicBool::new(false));
            let stopper = {
                let (s, stop) = (s.clone(), stop.clone());
                thread::spawn(move || {
                    stop.store(true, Ordering::Release);
                    lock(&s).readers.wake_all();
                })
            };
            let g = lock(&s);
            let (_g, r) = wait_until(
                &s,
                g,
                Until::Forever,
                |_| stop.load(Ordering::Acquire).then_some(()),
                |st, t| st.readers.add(t),
            );
            assert!(r.is_some());
            drop(_g);
            stopper.join().unwrap();
        });
    }

    /// Two sources with their own locks (two server workers) and a reader
    /// that scans both: an item pushed into either, at any point of the
    /// scan, is found; the reader never parks past it.
    #[test]
    fn loom_ready_signal_never_loses_a_readiness() {
        loom::model(|| {
            let signal = Arc::new(ReadySignal::default());
            let a = Arc::new(Mutex::new(Vec::<u32>::new()));
            let b = Arc::new(Mutex::new(Vec::<u32>::new()));
            let producer = {
                let (signal, b) = (signal.clone(), b.clone());
                thread::spawn(move || {
                    lock(&b).push(1);
                    signal.notify();
                })
            };
            let got = signal.wait(Until::Forever, || lock(&a).pop().or_else(|| lock(&b).pop()), || false);
            assert_eq!(got, Some(1));
            producer.join().unwrap();
        });
    }

    /// Shutdown wakes a parked reader that has nothing to read.
    #[test]
    fn loom_ready_signal_stop_wakes_reader() {
        loom::model(|| {
            let signal = Arc::new(ReadySignal::default());
            let stop = Arc::new(AtomicBool::new(false));
            let stopper = {
                let (signal, stop) = (signal.clone(), stop.clone());
                thread::spawn(move || {
                    stop.store(true, Ordering::Release);
                    signal.wake_all();
                })
            };
            let got: Option<()> = signal.wait(Until::Forever, || None, || stop.load(Ordering::Acquire));
            assert_eq!(got, None);
            stopper.join().unwrap();
        });
    }
}
