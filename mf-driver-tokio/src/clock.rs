//! The bridge between `tokio::time` and the core's [`mf_core::Instant`].
//!
//! All time comes from `tokio::time`, so a paused runtime (tests) or
//! turmoil's simulated clock drives keep-alives, deadlines and backoff.

use std::time::Duration;

/// Converts between tokio's clock and the core's microsecond instants, with
/// the epoch at the clock's creation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    start: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock { start: tokio::time::Instant::now() }
    }

    /// Now, for the core.
    pub(crate) fn now(self) -> mf_core::Instant {
        self.to_core(tokio::time::Instant::now())
    }

    pub(crate) fn to_core(self, t: tokio::time::Instant) -> mf_core::Instant {
        let us = t.saturating_duration_since(self.start).as_micros();
        mf_core::Instant::from_micros(u64::try_from(us).unwrap_or(u64::MAX - 1))
    }

    /// A core instant on tokio's clock (far future for `NEVER`).
    pub(crate) fn to_tokio(self, t: mf_core::Instant) -> tokio::time::Instant {
        // Clamp "never" to a year: far enough, and no overflow.
        let us = t.as_micros().min(365 * 24 * 3600 * 1_000_000);
        self.start + Duration::from_micros(us)
    }
}
