//! One timer table per session: a fixed slot per timer kind, so the next
//! deadline is a minimum over a handful of slots, whatever the number of
//! messages, channels or calls.

use crate::time::Instant;

/// The kinds of timer a session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Timer {
    /// Send a standalone ACK/CREDIT.
    AckDelay = 0,
    /// Send a PING if nothing was received lately.
    Keepalive,
    /// Declare the connection dead if nothing was received for `idle_timeout_ms`.
    Idle,
    /// The handshake must complete by then.
    Handshake,
    /// Client: open a new connection (reconnect backoff).
    Reconnect,
    /// Client: give up resuming. Server: expire the lingering session.
    SessionExpiry,
    /// Graceful close must be done by then.
    Close,
    /// The earliest call deadline (client).
    CallDeadline,
}

/// Number of timer kinds.
pub const TIMER_KINDS: usize = 8;

/// Deadlines indexed by [`Timer`]; [`Instant::NEVER`] means unset.
#[derive(Clone, Debug)]
pub struct TimerTable([Instant; TIMER_KINDS]);

impl Default for TimerTable {
    fn default() -> Self {
        TimerTable([Instant::NEVER; TIMER_KINDS])
    }
}

impl TimerTable {
    /// Arm `t` for `at`, replacing any earlier setting.
    pub fn set(&mut self, t: Timer, at: Instant) {
        self.0[t as usize] = at;
    }

    /// Arm `t` for `at` unless it is armed earlier already.
    pub fn set_min(&mut self, t: Timer, at: Instant) {
        let s = &mut self.0[t as usize];
        if at < *s {
            *s = at;
        }
    }

    /// Disarm `t`.
    pub fn stop(&mut self, t: Timer) {
        self.0[t as usize] = Instant::NEVER;
    }

    /// When `t` fires, if armed.
    pub fn get(&self, t: Timer) -> Option<Instant> {
        let at = self.0[t as usize];
        (at != Instant::NEVER).then_some(at)
    }

    /// True if `t` is armed and due at `now`.
    pub fn is_due(&self, t: Timer, now: Instant) -> bool {
        self.0[t as usize] <= now
    }

    /// The earliest armed deadline: O(TIMER_KINDS).
    pub fn next(&self) -> Option<Instant> {
        let m = self.0.iter().copied().min().unwrap_or(Instant::NEVER);
        (m != Instant::NEVER).then_some(m)
    }
}
