//! Outcomes and errors, sorted by whose fault they are.
//!
//! - [`CloseCode`]: why a connection or session ended. Peer faults (malformed
//!   input, credit overrun) are typed codes that travel in the `CLOSE` frame,
//!   so both sides can read them.
//! - [`Failure`]: the one failure event a message or call gets when it cannot
//!   complete, with its [`Fate`]: certainly not delivered, or unknown.
//! - [`SendError`]: `send`/`call` refused a message; the message comes back.
//! - [`ApiMisuse`]: a bug in the caller, never caused by peer input.

use bytes::Bytes;
use std::fmt;

/// Why a connection or session was closed. Carried on the wire as a `u16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// Graceful close by the application.
    Normal,
    /// The server is shutting down.
    Shutdown,
    /// Nothing was received for `idle_timeout_ms`.
    IdleTimeout,
    /// The handshake did not complete within `handshake_timeout_ms`.
    HandshakeTimeout,
    /// A resume named a session the server does not have (expired, or the
    /// server restarted).
    SessionUnknown,
    /// The server has `sessions_max` sessions already.
    SessionLimit,
    /// The server has `handshakes_max` handshakes in progress already.
    HandshakeLimit,
    /// A newer connection resumed this session.
    Superseded,
    /// The peer speaks another protocol version, or another protocol.
    VersionMismatch,
    /// A frame could not be parsed (bad length, flags or field).
    MalformedFrame,
    /// A frame header announced a body longer than the protocol allows.
    FrameTooLarge,
    /// A message longer than the receiver's `message_bytes_max`.
    MessageTooLarge,
    /// The peer sent beyond the credit window it was granted.
    CreditExceeded,
    /// A frame type this version does not know.
    UnknownFrameType,
    /// A frame that is valid but not allowed here (data before the handshake,
    /// a request to a client, a response to an unknown request, ...).
    UnexpectedFrame,
    /// Resume positions that cannot be right (acknowledging what was never sent).
    ResumeMismatch,
    /// More open requests than `requests_open_max`.
    TooManyRequests,
    /// More fragmented messages in reassembly than `reassembly_max`.
    TooManyFragments,
    /// A new session asked for a token that is already in use.
    TokenInUse,
    /// The client gave up resuming after `resume_timeout_ms`.
    ResumeTimeout,
    /// The server expired the session after `session_linger_ms` without a connection.
    SessionExpired,
    /// A code this version does not know.
    Other(u16),
}

impl CloseCode {
    /// The code's number on the wire.
    pub fn to_u16(self) -> u16 {
        use CloseCode::*;
        match self {
            Normal => 0,
            Shutdown => 1,
            IdleTimeout => 2,
            HandshakeTimeout => 3,
            SessionUnknown => 4,
            SessionLimit => 5,
            HandshakeLimit => 6,
            Superseded => 7,
            VersionMismatch => 8,
            ResumeTimeout => 9,
            SessionExpired => 10,
            MalformedFrame => 16,
            FrameTooLarge => 17,
            MessageTooLarge => 18,
            CreditExceeded => 19,
            UnknownFrameType => 20,
            UnexpectedFrame => 21,
            ResumeMismatch => 22,
            TooManyRequests => 23,
            TooManyFragments => 24,
            TokenInUse => 25,
            Other(c) => c,
        }
    }

    /// Parse a wire code; unknown numbers become [`CloseCode::Other`].
    pub fn from_u16(c: u16) -> Self {
        use CloseCode::*;
        match c {
            0 => Normal,
            1 => Shutdown,
            2 => IdleTimeout,
            3 => HandshakeTimeout,
            4 => SessionUnknown,
            5 => SessionLimit,
            6 => HandshakeLimit,
            7 => Superseded,
            8 => VersionMismatch,
            9 => ResumeTimeout,
            10 => SessionExpired,
            16 => MalformedFrame,
            17 => FrameTooLarge,
            18 => MessageTooLarge,
            19 => CreditExceeded,
            20 => UnknownFrameType,
            21 => UnexpectedFrame,
            22 => ResumeMismatch,
            23 => TooManyRequests,
            24 => TooManyFragments,
            25 => TokenInUse,
            c => Other(c),
        }
    }

    /// True for codes that mean the peer broke the protocol.
    pub fn is_protocol_violation(self) -> bool {
        (16..=31).contains(&self.to_u16())
    }

    /// True if the session survives this code and the client should reconnect
    /// and resume (as opposed to the session being over).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            CloseCode::IdleTimeout
                | CloseCode::HandshakeTimeout
                | CloseCode::Superseded
                | CloseCode::HandshakeLimit
        )
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} ({})", self.to_u16())
    }
}

/// A close code with who sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseReason {
    /// The code.
    pub code: CloseCode,
    /// True if the peer sent this code in a `CLOSE` frame; false if this side
    /// decided it (a timeout, or a violation it detected).
    pub by_peer: bool,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = if self.by_peer { "peer" } else { "local" };
        write!(f, "{} ({who})", self.code)
    }
}

/// What became of a message that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fate {
    /// It certainly did not reach the peer application: it never left this side.
    NotDelivered,
    /// It left this side but no receipt came back before the session ended: the
    /// peer may or may not have taken it.
    Unknown,
}

/// Why a message or call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailReason {
    /// The session ended (closed, expired, refused on resume, or a protocol violation).
    SessionLost(CloseReason),
    /// The call's deadline passed first.
    Deadline,
    /// The server application rejected the request with this code.
    Rejected(u16),
    /// The caller cancelled the call.
    Cancelled,
    /// Larger than the peer's `message_bytes_max` (learned after `send` accepted it).
    TooLarge,
}

/// The failure outcome of one message or call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Why.
    pub reason: FailReason,
    /// Whether it could have reached the peer.
    pub fate: Fate,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fate = match self.fate {
            Fate::NotDelivered => "not delivered",
            Fate::Unknown => "fate unknown",
        };
        match self.reason {
            FailReason::SessionLost(r) => write!(f, "session lost: {r}; {fate}"),
            FailReason::Deadline => write!(f, "deadline passed; {fate}"),
            FailReason::Rejected(c) => write!(f, "rejected by peer (code {c})"),
            FailReason::Cancelled => write!(f, "cancelled; {fate}"),
            FailReason::TooLarge => write!(f, "larger than the peer accepts; {fate}"),
        }
    }
}

impl std::error::Error for Failure {}

/// `send` or `call` refused a message. The message is handed back.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The send queue (or calls in flight) is at its limit; try again later.
    Full(Bytes),
    /// Larger than `message_bytes_max` (ours, or the peer's).
    TooLarge(Bytes),
    /// The session is closing or over.
    Closed(Bytes),
}

impl SendError {
    /// Take the refused message back.
    pub fn into_inner(self) -> Bytes {
        match self {
            SendError::Full(b) | SendError::TooLarge(b) | SendError::Closed(b) => b,
        }
    }
}

impl fmt::Debug for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, b) = match self {
            SendError::Full(b) => ("Full", b),
            SendError::TooLarge(b) => ("TooLarge", b),
            SendError::Closed(b) => ("Closed", b),
        };
        write!(f, "{what}(<{} bytes>)", b.len())
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full(_) => f.write_str("send queue full"),
            SendError::TooLarge(b) => write!(f, "message of {} bytes exceeds the limit", b.len()),
            SendError::Closed(_) => f.write_str("session closed"),
        }
    }
}

impl std::error::Error for SendError {}

/// The caller used the API wrongly. Never caused by peer input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiMisuse {
    /// `respond` or `reject` for a request that is not open (already answered,
    /// or never received).
    UnknownRequest,
    /// An operation on a session id the endpoint does not hold.
    UnknownSession,
    /// An operation on a connection id the endpoint does not hold.
    UnknownConnection,
}

impl fmt::Display for ApiMisuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for ApiMisuse {}
