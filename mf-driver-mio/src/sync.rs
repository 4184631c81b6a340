//! The cross-thread primitives, swapped for loom's models under `cfg(loom)`
//! so `RUSTFLAGS="--cfg loom" cargo test --release -p mf-driver-mio loom`
//! explores every interleaving of the wake-up protocol in [`crate::waiters`].

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(loom)]
#[allow(unused_imports)] // Arc: used by the loom models only
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(loom)]
pub(crate) use loom::thread::{Thread, current};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(not(loom))]
#[allow(unused_imports)] // Arc: used by the loom models' std twin only
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::thread::{Thread, current};

/// Park the current thread until unparked or, outside loom, `timeout` passes
/// (loom has no clock: its models only use untimed waits).
pub(crate) fn park(timeout: Option<std::time::Duration>) {
    #[cfg(loom)]
    {
        let _ = timeout;
        loom::thread::park();
    }
    #[cfg(not(loom))]
    match timeout {
        Some(d) => std::thread::park_timeout(d),
        None => std::thread::park(),
    }
}

/// Lock, ignoring poisoning: every critical section leaves the state
/// consistent before it can panic, and a panicking application thread must
/// not take the whole client or server down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
