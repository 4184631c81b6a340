//! A transport wrapper that can break its connection on command: the
//! "connection break" fault. Both ends see it (the client's reads and writes
//! fail; dropping the halves sends the server a FIN or RST), unlike a
//! partition, which only stalls.
//!
//! It is also the proof that the driver is generic over its transport: the
//! simulation wraps turmoil's TCP without touching the driver.

use mf_driver_tokio::transport::{Connect, Stream};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Default)]
struct Kill {
    killed: AtomicBool,
    wakers: Mutex<[Option<Waker>; 2]>,
}

impl Kill {
    fn check(&self, cx: &mut Context<'_>, half: usize) -> io::Result<()> {
        if !self.killed.load(Ordering::Acquire) {
            if let Ok(mut w) = self.wakers.lock() {
                w[half] = Some(cx.waker().clone());
            }
            if !self.killed.load(Ordering::Acquire) {
                return Ok(());
            }
        }
        Err(io::Error::new(io::ErrorKind::ConnectionReset, "connection broken by the simulation"))
    }

    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        if let Ok(mut w) = self.wakers.lock() {
            for w in w.iter_mut().filter_map(Option::take) {
                w.wake();
            }
        }
    }
}

/// Breaks every connection opened through the connectors that share it.
#[derive(Clone, Default)]
pub struct BreakSwitch {
    live: Arc<Mutex<Vec<Weak<Kill>>>>,
}

impl BreakSwitch {
    /// Break every open connection. Returns how many were open.
    pub fn break_all(&self) -> usize {
        let Ok(mut live) = self.live.lock() else { return 0 };
        let mut n = 0;
        for k in live.drain(..).filter_map(|w| w.upgrade()) {
            k.kill();
            n += 1;
        }
        n
    }

    fn register(&self) -> Arc<Kill> {
        let k = Arc::new(Kill::default());
        if let Ok(mut live) = self.live.lock() {
            live.retain(|w| w.strong_count() > 0);
            live.push(Arc::downgrade(&k));
        }
        k
    }
}

/// A [`Connect`] whose connections a [`BreakSwitch`] can break.
pub struct Breakable<C> {
    inner: C,
    switch: BreakSwitch,
}

impl<C> Breakable<C> {
    /// Wrap `inner`; `switch` breaks its connections.
    pub fn new(inner: C, switch: BreakSwitch) -> Self {
        Breakable { inner, switch }
    }
}

/// A stream opened by [`Breakable`].
pub struct BreakableStream<S> {
    inner: S,
    kill: Arc<Kill>,
}

/// Read half of a [`BreakableStream`].
pub struct BreakRead<R> {
    inner: R,
    kill: Arc<Kill>,
}

/// Write half of a [`BreakableStream`].
pub struct BreakWrite<W> {
    inner: W,
    kill: Arc<Kill>,
}

impl<S: Stream> Stream for BreakableStream<S> {
    type Read = BreakRead<S::Read>;
    type Write = BreakWrite<S::Write>;
    fn into_split(self) -> (Self::Read, Self::Write) {
        let (r, w) = self.inner.into_split();
        (BreakRead { inner: r, kill: self.kill.clone() }, BreakWrite { inner: w, kill: self.kill })
    }
}

impl<C: Connect> Connect for Breakable<C> {
    type Stream = BreakableStream<C::Stream>;
    async fn connect(&self) -> io::Result<Self::Stream> {
        let s = self.inner.connect().await?;
        Ok(BreakableStream { inner: s, kill: self.switch.register() })
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for BreakRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.kill.check(cx, 0)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for BreakWrite<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.kill.check(cx, 1)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.kill.check(cx, 1)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
