//! Session tokens and the seeded generator that makes them.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use std::fmt;

/// A session's secret: 128 bits from a seeded ChaCha20 generator.
///
/// Whoever holds the token can resume the session, so it is never logged in
/// full: `Debug` shows only its first four bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub [u8; 16]);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({:02x}{:02x}{:02x}{:02x}..)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// The core's only source of randomness: a ChaCha20 stream from a seed the
/// driver passes in (from the OS in production, from the run's seed in tests).
pub(crate) struct Rng(ChaCha20Rng);

impl Rng {
    pub(crate) fn new(seed: [u8; 32]) -> Self {
        Rng(ChaCha20Rng::from_seed(seed))
    }

    pub(crate) fn token(&mut self) -> Token {
        let mut t = [0u8; 16];
        self.0.fill_bytes(&mut t);
        Token(t)
    }

    /// Uniform in `0..=max`.
    pub(crate) fn below_inclusive(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.0.next_u64();
        }
        // Modulo bias is at most max/2^64: irrelevant for jitter.
        self.0.next_u64() % (max + 1)
    }
}

/// Expand a 64-bit seed (what tests print and replay) into the 32-byte seed
/// the generator takes.
///
/// ```
/// let a = mf_core::seed_from_u64(7);
/// assert_eq!(a, mf_core::seed_from_u64(7));
/// assert_ne!(a, mf_core::seed_from_u64(8));
/// ```
pub fn seed_from_u64(seed: u64) -> [u8; 32] {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut out = [0u8; 32];
    rng.fill_bytes(&mut out);
    out
}
