//! Frame types, parsed frames, and encoders.

use super::*;
use crate::error::CloseCode;
use crate::token::Token;

/// The frame types of version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Client -> server, first frame of every connection.
    Hello = 0x01,
    /// Server -> client, answer to HELLO.
    Welcome = 0x02,
    /// Either way: the sender is closing; body: code u16, detail text.
    Close = 0x03,
    /// Either way: nonce u64, to be echoed in a PONG.
    Ping = 0x04,
    /// Either way: the nonce of the PING it answers.
    Pong = 0x05,
    /// Either way: recv_seq u64, data frames received so far.
    Ack = 0x06,
    /// Either way: consumed_msgs u64, consumed_bytes u64, taken by the application so far.
    Credit = 0x07,
    /// Data: a one-way message (or its first fragment).
    Message = 0x10,
    /// Data, client -> server: a request (or its first fragment).
    Request = 0x11,
    /// Data, server -> client: a response (or its first fragment).
    Response = 0x12,
    /// Data: the next piece of the fragmented message in progress on this channel.
    Fragment = 0x13,
    /// Data, server -> client: request refused by the application; req_id u64, code u16.
    Reject = 0x14,
    /// Data, client -> server: the client no longer wants this response; req_id u64.
    Cancel = 0x15,
}

impl FrameType {
    /// Parse a type byte.
    pub fn from_u8(b: u8) -> Option<FrameType> {
        use FrameType::*;
        Some(match b {
            0x01 => Hello,
            0x02 => Welcome,
            0x03 => Close,
            0x04 => Ping,
            0x05 => Pong,
            0x06 => Ack,
            0x07 => Credit,
            0x10 => Message,
            0x11 => Request,
            0x12 => Response,
            0x13 => Fragment,
            0x14 => Reject,
            0x15 => Cancel,
            _ => return None,
        })
    }

    /// True for frames that carry a sequence number (implicitly) and are
    /// retransmitted after a resume.
    pub fn is_data(self) -> bool {
        (self as u8) >= 0x10
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Frame type byte.
    pub ty: u8,
    /// Flags byte.
    pub flags: u8,
    /// Channel (data frames).
    pub channel: u16,
    /// Body length.
    pub len: u32,
}

impl Header {
    /// Parse the 8 header bytes.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            ty: b[0],
            flags: b[1],
            channel: u16::from_le_bytes([b[2], b[3]]),
            len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// The HELLO and WELCOME body: where each side stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// Protocol version.
    pub version: u16,
    /// HELLO: resume (true) or create. WELCOME: the session was resumed.
    pub resume: bool,
    /// The session token.
    pub token: Token,
    /// Data frames the sender has received in this session.
    pub recv_seq: u64,
    /// Sequence number of the first data frame the sender sends on this connection.
    pub send_start_seq: u64,
    /// Messages the sender's application has taken, in all.
    pub consumed_msgs: u64,
    /// Bytes of those messages.
    pub consumed_bytes: u64,
    /// Messages the peer may have outstanding towards the sender.
    pub window_msgs: u32,
    /// Bytes the peer may have outstanding towards the sender.
    pub window_bytes: u32,
    /// Largest message the sender accepts.
    pub message_bytes_max: u32,
    /// Fragmented messages the sender reassembles at once.
    pub reassembly_max: u16,
    /// Requests the sender (a server) keeps open per session; 0 from a client.
    pub requests_open_max: u16,
}

/// What a data frame's first frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// A one-way message.
    Message,
    /// A request with its id.
    Request(u64),
    /// A response to the request with this id.
    Response(u64),
}

/// A MESSAGE, REQUEST or RESPONSE frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Data<'a> {
    /// Which kind, with the request id where there is one.
    pub kind: DataKind,
    /// The channel.
    pub channel: u16,
    /// `Some(total)` if this is the first of several frames.
    pub total_len: Option<u32>,
    /// The payload carried by this frame.
    pub payload: &'a [u8],
}

/// A parsed frame; payloads borrow from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// HELLO.
    Hello(Handshake),
    /// WELCOME.
    Welcome(Handshake),
    /// CLOSE with its code and UTF-8 detail (not trusted to be UTF-8).
    Close {
        /// Why.
        code: CloseCode,
        /// Free text.
        detail: &'a [u8],
    },
    /// PING.
    Ping(u64),
    /// PONG.
    Pong(u64),
    /// ACK: data frames received.
    Ack(u64),
    /// CREDIT: messages and bytes consumed.
    Credit {
        /// Messages taken by the application.
        msgs: u64,
        /// Bytes taken by the application.
        bytes: u64,
    },
    /// MESSAGE, REQUEST or RESPONSE.
    Data(Data<'a>),
    /// FRAGMENT.
    Fragment {
        /// Channel of the message it continues.
        channel: u16,
        /// Continues a response (true) or a message/request.
        response: bool,
        /// The last piece.
        last: bool,
        /// The piece.
        payload: &'a [u8],
    },
    /// REJECT.
    Reject {
        /// The refused request.
        req: u64,
        /// The application's code.
        code: u16,
    },
    /// CANCEL.
    Cancel {
        /// The cancelled request.
        req: u64,
    },
}

impl Frame<'_> {
    /// Append this frame's encoding (header and body) to `out`.
    ///
    /// ```
    /// use mf_core::wire::{Decoder, Frame, TransmitBuf};
    /// let f = Frame::Credit { msgs: 3, bytes: 300 };
    /// let mut buf = TransmitBuf::new();
    /// f.encode(&mut buf);
    /// let mut bytes = Vec::new();
    /// buf.copy_to_vec(&mut bytes);
    /// let mut back = None;
    /// Decoder::new(1024).decode(&bytes, |g| { back = Some(format!("{g:?}")); Ok(true) }).unwrap();
    /// assert_eq!(back, Some(format!("{f:?}")));
    /// ```
    pub fn encode(&self, out: &mut TransmitBuf) {
        match *self {
            Frame::Hello(h) => encode::handshake(out, FrameType::Hello, &h),
            Frame::Welcome(h) => encode::handshake(out, FrameType::Welcome, &h),
            Frame::Close { code, detail } => encode::close(out, code, detail),
            Frame::Ping(n) => encode::u64_frame(out, FrameType::Ping, n),
            Frame::Pong(n) => encode::u64_frame(out, FrameType::Pong, n),
            Frame::Ack(n) => encode::u64_frame(out, FrameType::Ack, n),
            Frame::Credit { msgs, bytes } => encode::credit(out, msgs, bytes),
            Frame::Data(d) => {
                encode::data(out, d.kind, d.channel, d.total_len, &bytes::Bytes::copy_from_slice(d.payload))
            }
            Frame::Fragment { channel, response, last, payload } => {
                encode::fragment(out, channel, response, last, &bytes::Bytes::copy_from_slice(payload))
            }
            Frame::Reject { req, code } => encode::reject(out, req, code),
            Frame::Cancel { req } => encode::u64_frame(out, FrameType::Cancel, req),
        }
    }

    /// True for numbered, retransmitted frames.
    pub fn is_data(&self) -> bool {
        matches!(self, Frame::Data(_) | Frame::Fragment { .. } | Frame::Reject { .. } | Frame::Cancel { .. })
    }
}

/// Frame encoders. Each appends one whole frame to a [`TransmitBuf`].
pub(crate) mod encode {
    use super::*;

    fn header(out: &mut TransmitBuf, ty: FrameType, flags: u8, channel: u16, len: usize) {
        debug_assert!(len <= FRAME_BODY_MAX);
        let mut h = [0u8; HEADER_LEN];
        h[0] = ty as u8;
        h[1] = flags;
        h[2..4].copy_from_slice(&channel.to_le_bytes());
        h[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        out.push_inline(&h);
    }

    pub(crate) fn handshake(out: &mut TransmitBuf, ty: FrameType, h: &Handshake) {
        let flags = if h.resume { FLAG_RESUME } else { 0 };
        header(out, ty, flags, 0, HANDSHAKE_BODY_LEN);
        let mut b = [0u8; HANDSHAKE_BODY_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&h.version.to_le_bytes());
        // 6..8 reserved, zero
        b[8..24].copy_from_slice(&h.token.0);
        b[24..32].copy_from_slice(&h.recv_seq.to_le_bytes());
        b[32..40].copy_from_slice(&h.send_start_seq.to_le_bytes());
        b[40..48].copy_from_slice(&h.consumed_msgs.to_le_bytes());
        b[48..56].copy_from_slice(&h.consumed_bytes.to_le_bytes());
        b[56..60].copy_from_slice(&h.window_msgs.to_le_bytes());
        b[60..64].copy_from_slice(&h.window_bytes.to_le_bytes());
        b[64..68].copy_from_slice(&h.message_bytes_max.to_le_bytes());
        b[68..70].copy_from_slice(&h.reassembly_max.to_le_bytes());
        b[70..72].copy_from_slice(&h.requests_open_max.to_le_bytes());
        out.push_inline(&b);
    }

    pub(crate) fn close(out: &mut TransmitBuf, code: CloseCode, detail: &[u8]) {
        let d = &detail[..detail.len().min(CLOSE_DETAIL_MAX)];
        header(out, FrameType::Close, 0, 0, 2 + d.len());
        out.push_inline(&code.to_u16().to_le_bytes());
        out.push_inline(d);
    }

    pub(crate) fn u64_frame(out: &mut TransmitBuf, ty: FrameType, v: u64) {
        header(out, ty, 0, 0, 8);
        out.push_inline(&v.to_le_bytes());
    }

    pub(crate) fn credit(out: &mut TransmitBuf, msgs: u64, bytes: u64) {
        header(out, FrameType::Credit, 0, 0, 16);
        out.push_inline(&msgs.to_le_bytes());
        out.push_inline(&bytes.to_le_bytes());
    }

    /// A MESSAGE/REQUEST/RESPONSE frame. `payload` is this frame's part.
    pub(crate) fn data(
        out: &mut TransmitBuf,
        kind: DataKind,
        channel: u16,
        total_len: Option<u32>,
        payload: &bytes::Bytes,
    ) {
        let (ty, id) = match kind {
            DataKind::Message => (FrameType::Message, None),
            DataKind::Request(r) => (FrameType::Request, Some(r)),
            DataKind::Response(r) => (FrameType::Response, Some(r)),
        };
        let flags = if total_len.is_some() { FLAG_MORE } else { 0 };
        let prefix = id.map_or(0, |_| 8) + total_len.map_or(0, |_| 4);
        let len = payload.len() + prefix;
        debug_assert!(len <= FRAME_BODY_MAX);
        // Fixed-size pieces, so the copies compile to plain moves.
        let mut h = [0u8; HEADER_LEN];
        h[0] = ty as u8;
        h[1] = flags;
        h[2..4].copy_from_slice(&channel.to_le_bytes());
        h[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        if prefix == 0 && payload.len() < 256 {
            out.push_inline2(&h, payload);
            return;
        }
        let mut p = [0u8; 12];
        let mut n = 0;
        if let Some(id) = id {
            p[..8].copy_from_slice(&id.to_le_bytes());
            n = 8;
        }
        if let Some(t) = total_len {
            p[n..n + 4].copy_from_slice(&t.to_le_bytes());
            n += 4;
        }
        let mut hp = [0u8; HEADER_LEN + 12];
        hp[..HEADER_LEN].copy_from_slice(&h);
        hp[HEADER_LEN..].copy_from_slice(&p);
        if payload.len() < 256 {
            out.push_inline2(&hp[..HEADER_LEN + n], payload);
        } else {
            out.push_inline(&hp[..HEADER_LEN + n]);
            out.push_shared(payload);
        }
    }

    pub(crate) fn fragment(
        out: &mut TransmitBuf,
        channel: u16,
        response: bool,
        last: bool,
        payload: &bytes::Bytes,
    ) {
        let mut flags = 0;
        if last {
            flags |= FLAG_LAST;
        }
        if response {
            flags |= FLAG_RESPONSE_STREAM;
        }
        header(out, FrameType::Fragment, flags, channel, payload.len());
        out.push_shared(payload);
    }

    pub(crate) fn reject(out: &mut TransmitBuf, req: u64, code: u16) {
        header(out, FrameType::Reject, 0, 0, 10);
        out.push_inline(&req.to_le_bytes());
        out.push_inline(&code.to_le_bytes());
    }
}
