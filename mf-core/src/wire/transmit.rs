//! The caller-owned output buffer.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::IoSlice;

/// Payloads at least this long are referenced, not copied, so a driver can
/// hand them to `writev` straight from the application's buffer.
const SHARED_MIN_BYTES: usize = 2048;

#[derive(Debug)]
enum Part {
    /// The next `n` bytes of `inline`.
    Inline(usize),
    Shared(Bytes),
}

/// Bytes for the socket, filled by `poll_transmit` and drained by the driver.
///
/// Small frames are copied into one contiguous buffer; large payloads are
/// kept as reference-counted [`Bytes`], so a driver with `writev` sends a
/// 1 MiB message without copying it in user space. A driver without
/// `writev` can use [`TransmitBuf::chunk`], or copy everything with
/// [`TransmitBuf::copy_to_vec`].
///
/// ```
/// use mf_core::wire::TransmitBuf;
/// use std::io::IoSlice;
/// let mut buf = TransmitBuf::new();
/// buf.push_inline(b"head");
/// buf.push_shared(&bytes::Bytes::from(vec![7u8; 4096]));
/// buf.push_inline(b"tail");
/// assert_eq!(buf.len(), 4 + 4096 + 4);
/// let mut iov = [IoSlice::new(&[]); 8];
/// assert_eq!(buf.io_slices(&mut iov), 3);
/// buf.advance(10); // a short write
/// assert_eq!(buf.len(), 4094);
/// assert_eq!(buf.chunk()[0], 7);
/// ```
#[derive(Debug, Default)]
pub struct TransmitBuf {
    inline: Vec<u8>,
    /// Start of the unsent part of `inline`.
    inline_start: usize,
    parts: VecDeque<Part>,
    /// Bytes of the front part already sent.
    front_sent: usize,
    len: usize,
}

impl TransmitBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes not yet sent.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append a copy of `b`.
    pub fn push_inline(&mut self, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        // A driver that never drains completely must not make `inline` grow
        // without bound: drop the sent prefix once it dominates.
        if self.inline_start > 4096 && self.inline_start * 2 > self.inline.len() {
            self.inline.drain(..self.inline_start);
            self.inline_start = 0;
        }
        self.inline.extend_from_slice(b);
        self.len += b.len();
        match self.parts.back_mut() {
            Some(Part::Inline(n)) => *n += b.len(),
            _ => self.parts.push_back(Part::Inline(b.len())),
        }
    }

    /// Append copies of `a` then `b` (a small frame's header and body).
    pub fn push_inline2(&mut self, a: &[u8], b: &[u8]) {
        let n = a.len() + b.len();
        if n == 0 {
            return;
        }
        if self.inline_start > 4096 && self.inline_start * 2 > self.inline.len() {
            self.inline.drain(..self.inline_start);
            self.inline_start = 0;
        }
        self.inline.reserve(n);
        self.inline.extend_from_slice(a);
        self.inline.extend_from_slice(b);
        self.len += n;
        match self.parts.back_mut() {
            Some(Part::Inline(k)) => *k += n,
            _ => self.parts.push_back(Part::Inline(n)),
        }
    }

    /// Append `b`, by reference if it is large.
    pub fn push_shared(&mut self, b: &Bytes) {
        if b.len() < SHARED_MIN_BYTES {
            self.push_inline(b);
        } else {
            self.len += b.len();
            self.parts.push_back(Part::Shared(b.clone()));
        }
    }

    /// Fill `dst` with the unsent bytes in order; returns how many slices
    /// were written.
    pub fn io_slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut at = self.inline_start;
        let mut n = 0;
        for (i, p) in self.parts.iter().enumerate() {
            if n == dst.len() {
                break;
            }
            let skip = if i == 0 { self.front_sent } else { 0 };
            let s: &[u8] = match p {
                Part::Inline(len) => {
                    let s = &self.inline[at..at + len];
                    at += len;
                    s
                }
                Part::Shared(b) => b,
            };
            // Inline offsets already account for what was sent.
            let s = if matches!(p, Part::Inline(_)) { s } else { &s[skip..] };
            dst[n] = IoSlice::new(s);
            n += 1;
        }
        n
    }

    /// The first contiguous run of unsent bytes.
    pub fn chunk(&self) -> &[u8] {
        match self.parts.front() {
            None => &[],
            Some(Part::Inline(len)) => &self.inline[self.inline_start..self.inline_start + len],
            Some(Part::Shared(b)) => &b[self.front_sent..],
        }
    }

    /// Mark `n` bytes as sent.
    ///
    /// # Panics
    /// If `n` exceeds [`TransmitBuf::len`] (a driver bug).
    pub fn advance(&mut self, mut n: usize) {
        assert!(n <= self.len, "advance past the end of the transmit buffer");
        self.len -= n;
        while n > 0 {
            let Some(front) = self.parts.front_mut() else {
                break;
            };
            match front {
                Part::Inline(len) => {
                    let k = n.min(*len);
                    *len -= k;
                    self.inline_start += k;
                    n -= k;
                    if *len == 0 {
                        self.parts.pop_front();
                    }
                }
                Part::Shared(b) => {
                    let k = n.min(b.len() - self.front_sent);
                    self.front_sent += k;
                    n -= k;
                    if self.front_sent == b.len() {
                        self.front_sent = 0;
                        self.parts.pop_front();
                    }
                }
            }
        }
        if self.len == 0 {
            self.clear();
        }
    }

    /// Drop everything unsent, keeping the allocation.
    pub fn clear(&mut self) {
        self.inline.clear();
        self.inline_start = 0;
        self.parts.clear();
        self.front_sent = 0;
        self.len = 0;
    }

    /// Append all unsent bytes to `out` and clear the buffer.
    pub fn copy_to_vec(&mut self, out: &mut Vec<u8>) {
        out.reserve(self.len);
        while !self.is_empty() {
            let c = self.chunk();
            let k = c.len();
            out.extend_from_slice(c);
            self.advance(k);
        }
    }

    /// Heap bytes held (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        self.inline.capacity() + self.parts.capacity() * std::mem::size_of::<Part>()
    }
}
