//! The wire format, version 1. Everything here is documented byte by byte in
//! `WIRE.md` at the repository root.
//!
//! A connection carries a sequence of frames. Each frame is an 8-byte header
//! and a body; all integers are little-endian:
//!
//! ```text
//! offset size field
//! 0      1    type      (FrameType)
//! 1      1    flags     (per type; unknown bits are a protocol violation)
//! 2      2    channel   (data frames; 0 otherwise)
//! 4      4    length    (body bytes, at most FRAME_BODY_MAX)
//! ```
//!
//! Data frames (MESSAGE, REQUEST, RESPONSE, FRAGMENT, REJECT, CANCEL) are
//! numbered implicitly: the first one on a connection has the sequence number
//! its sender announced in the handshake (`send_start_seq`), each next one the
//! number after. Nothing else is numbered.

mod decode;
mod frame;
mod transmit;

pub use decode::{Decoder, decode_frame, peek_hello};
pub(crate) use frame::encode;
pub use frame::{Data, DataKind, Frame, FrameType, Handshake, Header};
pub use transmit::TransmitBuf;

/// Protocol version spoken by this crate.
pub const PROTOCOL_VERSION: u16 = 1;
/// First four bytes of a handshake body.
pub const MAGIC: [u8; 4] = *b"MFP\x01";
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;
/// The most payload one frame may carry.
pub const FRAME_PAYLOAD_MAX: usize = 64 * 1024;
/// The largest body any frame may announce: a payload plus the longest fixed
/// prefix (request id and total length).
pub const FRAME_BODY_MAX: usize = FRAME_PAYLOAD_MAX + 12;
/// Bytes in a HELLO or WELCOME body.
pub const HANDSHAKE_BODY_LEN: usize = 72;
/// Longest free-text detail a CLOSE frame may carry.
pub const CLOSE_DETAIL_MAX: usize = 256;

/// Before the first WELCOME, a client may send this many messages ...
pub const EARLY_WINDOW_MSGS: u64 = 64;
/// ... of at most this many bytes in all (every server grants at least this);
/// messages larger than this wait for the WELCOME.
pub const EARLY_WINDOW_BYTES: u64 = 64 * 1024;
/// Before the first WELCOME, at most this many requests are sent.
pub const EARLY_REQUESTS_OPEN: u32 = 16;
/// Before the first WELCOME, at most this many fragmented messages at once.
pub const EARLY_REASSEMBLY: u16 = 1;

/// Flag on MESSAGE/REQUEST/RESPONSE: the first frame of a fragmented message;
/// the body carries the total length and more FRAGMENT frames follow.
pub const FLAG_MORE: u8 = 0x01;
/// Flag on FRAGMENT: the last fragment of its message.
pub const FLAG_LAST: u8 = 0x01;
/// Flag on FRAGMENT: continues a RESPONSE (otherwise a MESSAGE or REQUEST).
pub const FLAG_RESPONSE_STREAM: u8 = 0x02;
/// Flag on HELLO: resume an existing session (otherwise create one).
pub const FLAG_RESUME: u8 = 0x01;
