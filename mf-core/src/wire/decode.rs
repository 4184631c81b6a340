//! Incremental decoding: bytes split anywhere, every length checked before
//! anything is buffered, never a panic.

use super::*;
use crate::error::CloseCode;
use crate::token::Token;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn handshake(flags: u8, body: &[u8]) -> Result<Handshake, CloseCode> {
    if body.len() != HANDSHAKE_BODY_LEN {
        return Err(CloseCode::MalformedFrame);
    }
    if body[0..4] != MAGIC {
        return Err(CloseCode::VersionMismatch);
    }
    if flags & !FLAG_RESUME != 0 || u16_at(body, 6) != 0 {
        return Err(CloseCode::MalformedFrame);
    }
    let mut token = [0u8; 16];
    token.copy_from_slice(&body[8..24]);
    Ok(Handshake {
        version: u16_at(body, 4),
        resume: flags & FLAG_RESUME != 0,
        token: Token(token),
        recv_seq: u64_at(body, 24),
        send_start_seq: u64_at(body, 32),
        consumed_msgs: u64_at(body, 40),
        consumed_bytes: u64_at(body, 48),
        window_msgs: u32_at(body, 56),
        window_bytes: u32_at(body, 60),
        message_bytes_max: u32_at(body, 64),
        reassembly_max: u16_at(body, 68),
        requests_open_max: u16_at(body, 70),
    })
}

/// Parse one frame from its header and complete body.
///
/// Checks every length and flag; returns the close code to send on any error.
///
/// ```
/// use mf_core::wire::{decode_frame, Frame, Header};
/// let h = Header { ty: 0x04, flags: 0, channel: 0, len: 8 };
/// assert_eq!(decode_frame(h, &7u64.to_le_bytes()), Ok(Frame::Ping(7)));
/// let bad = Header { ty: 0x04, flags: 0, channel: 0, len: 3 };
/// assert!(decode_frame(bad, &[1, 2, 3]).is_err());
/// ```
pub fn decode_frame(h: Header, body: &[u8]) -> Result<Frame<'_>, CloseCode> {
    use CloseCode::MalformedFrame as Bad;
    let Some(ty) = FrameType::from_u8(h.ty) else {
        return Err(CloseCode::UnknownFrameType);
    };
    if body.len() != h.len as usize || body.len() > FRAME_BODY_MAX {
        return Err(Bad);
    }
    if !ty.is_data() && h.channel != 0 {
        return Err(Bad);
    }
    let fixed = |n: usize| if body.len() == n { Ok(()) } else { Err(Bad) };
    let no_flags = || if h.flags == 0 { Ok(()) } else { Err(Bad) };
    Ok(match ty {
        FrameType::Hello => Frame::Hello(handshake(h.flags, body)?),
        FrameType::Welcome => Frame::Welcome(handshake(h.flags, body)?),
        FrameType::Close => {
            no_flags()?;
            if body.len() < 2 || body.len() > 2 + CLOSE_DETAIL_MAX {
                return Err(Bad);
            }
            Frame::Close { code: CloseCode::from_u16(u16_at(body, 0)), detail: &body[2..] }
        }
        FrameType::Ping | FrameType::Pong | FrameType::Ack | FrameType::Cancel => {
            no_flags()?;
            fixed(8)?;
            let v = u64_at(body, 0);
            match ty {
                FrameType::Ping => Frame::Ping(v),
                FrameType::Pong => Frame::Pong(v),
                FrameType::Ack => Frame::Ack(v),
                _ => Frame::Cancel { req: v },
            }
        }
        FrameType::Credit => {
            no_flags()?;
            fixed(16)?;
            Frame::Credit { msgs: u64_at(body, 0), bytes: u64_at(body, 8) }
        }
        FrameType::Reject => {
            no_flags()?;
            fixed(10)?;
            Frame::Reject { req: u64_at(body, 0), code: u16_at(body, 8) }
        }
        FrameType::Message | FrameType::Request | FrameType::Response => {
            if h.flags & !FLAG_MORE != 0 {
                return Err(Bad);
            }
            let mut at = 0;
            let kind = match ty {
                FrameType::Message => DataKind::Message,
                _ => {
                    if body.len() < 8 {
                        return Err(Bad);
                    }
                    at = 8;
                    let id = u64_at(body, 0);
                    if ty == FrameType::Request { DataKind::Request(id) } else { DataKind::Response(id) }
                }
            };
            let total_len = if h.flags & FLAG_MORE != 0 {
                if body.len() < at + 4 {
                    return Err(Bad);
                }
                let t = u32_at(body, at);
                at += 4;
                // A fragmented message is longer than its first piece.
                if (t as usize) <= body.len() - at {
                    return Err(Bad);
                }
                Some(t)
            } else {
                None
            };
            let payload = &body[at..];
            if payload.len() > FRAME_PAYLOAD_MAX {
                return Err(Bad);
            }
            Frame::Data(Data { kind, channel: h.channel, total_len, payload })
        }
        FrameType::Fragment => {
            if h.flags & !(FLAG_LAST | FLAG_RESPONSE_STREAM) != 0 {
                return Err(Bad);
            }
            if body.is_empty() || body.len() > FRAME_PAYLOAD_MAX {
                return Err(Bad);
            }
            Frame::Fragment {
                channel: h.channel,
                response: h.flags & FLAG_RESPONSE_STREAM != 0,
                last: h.flags & FLAG_LAST != 0,
                payload: body,
            }
        }
    })
}

/// What a frame handler tells the decoder.
pub type Flow = Result<bool, CloseCode>;

/// An incremental frame decoder for one connection.
///
/// Whole frames in the input are parsed in place; only a frame split across
/// two inputs is copied, into a buffer that never exceeds one frame.
///
/// ```
/// use mf_core::wire::{Decoder, Frame};
/// let mut bytes = vec![0x04, 0, 0, 0, 8, 0, 0, 0];
/// bytes.extend_from_slice(&42u64.to_le_bytes());
/// let mut dec = Decoder::new(1024);
/// let mut seen = Vec::new();
/// // Feed the frame in two pieces split mid-header.
/// for piece in [&bytes[..3], &bytes[3..]] {
///     dec.decode(piece, |f| {
///         if let Frame::Ping(n) = f { seen.push(n) }
///         Ok(true)
///     }).unwrap();
/// }
/// assert_eq!(seen, [42]);
/// ```
#[derive(Debug, Default)]
pub struct Decoder {
    partial: Vec<u8>,
    body_max: usize,
}

/// Keep at most this much spare capacity in the partial-frame buffer once it
/// empties, so idle connections cost little.
const PARTIAL_KEEP_BYTES: usize = 4096;

impl Decoder {
    /// A decoder that rejects any frame body longer than `body_max` (at most
    /// [`FRAME_BODY_MAX`]).
    pub fn new(body_max: usize) -> Self {
        Decoder { partial: Vec::new(), body_max: body_max.min(FRAME_BODY_MAX) }
    }

    /// Change the body limit (after a handshake, say).
    pub fn set_body_max(&mut self, body_max: usize) {
        self.body_max = body_max.min(FRAME_BODY_MAX);
    }

    /// Bytes of an incomplete frame held from earlier input.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Forget any partial frame (the connection it came from is gone).
    pub fn reset(&mut self) {
        self.partial.clear();
        if self.partial.capacity() > PARTIAL_KEEP_BYTES {
            self.partial = Vec::new();
        }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.partial.capacity()
    }

    fn header(&self, b: &[u8]) -> Result<Header, CloseCode> {
        let mut a = [0u8; HEADER_LEN];
        a.copy_from_slice(&b[..HEADER_LEN]);
        let h = Header::parse(&a);
        if FrameType::from_u8(h.ty).is_none() {
            return Err(CloseCode::UnknownFrameType);
        }
        if h.len as usize > self.body_max {
            return Err(CloseCode::FrameTooLarge);
        }
        Ok(h)
    }

    /// Decode every complete frame in `data`, calling `on_frame` for each in
    /// order. `on_frame` returns `Ok(true)` to continue, `Ok(false)` to stop
    /// (the rest of the input is dropped), or a close code. Returns the number
    /// of bytes of `data` used (all of it unless stopped early).
    pub fn decode<F>(&mut self, mut data: &[u8], mut on_frame: F) -> Result<usize, CloseCode>
    where
        F: FnMut(Frame<'_>) -> Flow,
    {
        let total = data.len();
        // Finish a frame left over from the previous input.
        if !self.partial.is_empty() {
            if self.partial.len() < HEADER_LEN {
                let take = (HEADER_LEN - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.partial.len() < HEADER_LEN {
                    return Ok(total);
                }
            }
            let h = self.header(&self.partial)?;
            let frame_len = HEADER_LEN + h.len as usize;
            let take = (frame_len - self.partial.len()).min(data.len());
            self.partial.reserve_exact(take);
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < frame_len {
                return Ok(total);
            }
            let partial = std::mem::take(&mut self.partial);
            let res = decode_frame(h, &partial[HEADER_LEN..]).and_then(&mut on_frame);
            self.partial = partial;
            self.partial.clear();
            if self.partial.capacity() > PARTIAL_KEEP_BYTES {
                self.partial = Vec::new();
            }
            if !res? {
                return Ok(total - data.len());
            }
        }
        // Whole frames straight from the input.
        while data.len() >= HEADER_LEN {
            let h = self.header(data)?;
            let frame_len = HEADER_LEN + h.len as usize;
            if data.len() < frame_len {
                break;
            }
            let go = on_frame(decode_frame(h, &data[HEADER_LEN..frame_len])?)?;
            data = &data[frame_len..];
            if !go {
                return Ok(total - data.len());
            }
        }
        // Keep the tail of a split frame; its length was checked above (or
        // will be, once its header is complete).
        if !data.is_empty() {
            if data.len() >= HEADER_LEN {
                let h = self.header(data)?;
                self.partial.reserve_exact(HEADER_LEN + h.len as usize);
            }
            self.partial.extend_from_slice(data);
        }
        Ok(total)
    }
}

/// Look at the start of a new connection's bytes for its HELLO, without
/// consuming anything. Drivers use it to route a connection to the worker
/// that owns its session.
///
/// Returns `Ok(None)` while more bytes are needed, the handshake once the
/// HELLO is complete, or the close code if these bytes cannot start a session.
pub fn peek_hello(data: &[u8]) -> Result<Option<Handshake>, CloseCode> {
    if data.len() < HEADER_LEN {
        if !data.is_empty() && data[0] != FrameType::Hello as u8 {
            return Err(CloseCode::UnexpectedFrame);
        }
        return Ok(None);
    }
    let mut a = [0u8; HEADER_LEN];
    a.copy_from_slice(&data[..HEADER_LEN]);
    let h = Header::parse(&a);
    if h.ty != FrameType::Hello as u8 {
        return Err(CloseCode::UnexpectedFrame);
    }
    // The same codes the endpoint's handshake decoder gives for these bytes.
    if h.len as usize > HANDSHAKE_BODY_LEN {
        return Err(CloseCode::FrameTooLarge);
    }
    if h.len as usize != HANDSHAKE_BODY_LEN || h.channel != 0 {
        return Err(CloseCode::MalformedFrame);
    }
    if data.len() < HEADER_LEN + HANDSHAKE_BODY_LEN {
        return Ok(None);
    }
    handshake(h.flags, &data[HEADER_LEN..HEADER_LEN + HANDSHAKE_BODY_LEN]).map(Some)
}
