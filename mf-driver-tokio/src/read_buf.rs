//! The read buffer: small for a connection that sees small messages (a
//! short connection costs no 64 KiB to allocate and clear), growing for one
//! that fills it, so a 1 MiB message takes a few reads, not dozens.

/// Bytes a read buffer starts with.
pub(crate) const READ_BUF_MIN_BYTES: usize = 16 << 10;
/// Bytes a read buffer grows to at most.
pub(crate) const READ_BUF_MAX_BYTES: usize = 256 << 10;

/// A new read buffer.
pub(crate) fn new() -> Box<[u8]> {
    vec![0u8; READ_BUF_MIN_BYTES].into_boxed_slice()
}

/// A read of `n` bytes filled `buf`: make it four times larger, up to the
/// maximum (the socket had more than it could take).
pub(crate) fn grow_if_filled(buf: &mut Box<[u8]>, n: usize) {
    if n == buf.len() && buf.len() < READ_BUF_MAX_BYTES {
        *buf = vec![0u8; (buf.len() * 4).min(READ_BUF_MAX_BYTES)].into_boxed_slice();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grows_when_filled_up_to_the_maximum() {
        let mut b = super::new();
        super::grow_if_filled(&mut b, 100);
        assert_eq!(b.len(), super::READ_BUF_MIN_BYTES);
        while b.len() < super::READ_BUF_MAX_BYTES {
            let n = b.len();
            super::grow_if_filled(&mut b, n);
            assert!(b.len() > n);
        }
        let n = b.len();
        super::grow_if_filled(&mut b, n);
        assert_eq!(b.len(), super::READ_BUF_MAX_BYTES);
    }
}
