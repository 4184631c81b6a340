//! Time as the core sees it: a number the driver passes in.
//!
//! The core never reads a clock. Every entry point takes `now`, an [`Instant`]
//! counted in microseconds from an epoch the driver chooses (its start, say).
//! Simulations pass simulated time, so runs replay exactly.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time, in microseconds since a driver-chosen epoch.
///
/// ```
/// use mf_core::Instant;
/// use std::time::Duration;
/// let t = Instant::from_millis(5);
/// assert_eq!(t + Duration::from_micros(250), Instant::from_micros(5_250));
/// assert_eq!((t + Duration::from_millis(1)) - t, Duration::from_millis(1));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The epoch.
    pub const ZERO: Instant = Instant(0);
    /// Later than any real time; used as "never".
    pub const NEVER: Instant = Instant(u64::MAX);

    /// `us` microseconds after the epoch.
    pub const fn from_micros(us: u64) -> Self {
        Instant(us)
    }

    /// `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms.saturating_mul(1000))
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// `self + ms` milliseconds, saturating at [`Instant::NEVER`].
    pub const fn add_millis(self, ms: u64) -> Self {
        Instant(self.0.saturating_add(ms.saturating_mul(1000)))
    }

    /// Time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(us))
    }
}

impl Sub for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_since(rhs)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Instant::NEVER {
            return f.write_str("never");
        }
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}
