//! The driver's one error type.

use bytes::Bytes;
use mf_core::{CloseReason, ConfigError, FailReason, Failure, Fate, SendError};
use std::fmt;
use std::io;

/// Why an operation did not succeed. Variants that carry [`Bytes`] hand the
/// refused message back to the caller (contract C5).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The send queue (or the calls in flight) is at its limit: `try_send`,
    /// or a timed send whose time ran out. Nothing was queued.
    Full(Bytes),
    /// The message exceeds `message_bytes_max` (ours or the peer's).
    TooLarge(Bytes),
    /// This handle was closed by the application (`close`, or the server
    /// shutting down); nothing was queued.
    Closed(Bytes),
    /// A timed wait (`recv_timeout`, `Receipt::wait_timeout`) ran out.
    /// Nothing was lost: the operation may still complete later.
    Timeout,
    /// `try_recv` found nothing.
    Empty,
    /// The call's deadline passed before its response came. `fate` tells
    /// whether the server could have seen the request.
    Deadline {
        /// Whether the request could have reached the server application.
        fate: Fate,
    },
    /// The session is over (server restarted, session expired, resume timed
    /// out, protocol violation, graceful close): this operation failed.
    /// `message` is the refused message when the operation was never
    /// accepted (then `fate` is `NotDelivered`).
    SessionLost {
        /// Why the session ended.
        reason: CloseReason,
        /// Whether the message or request could have reached the peer.
        fate: Fate,
        /// The refused message, for an operation started after the end.
        message: Option<Bytes>,
    },
    /// The server application rejected the request with this code.
    Rejected(u16),
    /// The request exceeded the peer's `message_bytes_max` (learned after it
    /// was accepted).
    PeerTooLarge,
    /// The server is shutting down (pull API).
    Stopped,
    /// An operating-system error (resolving, connecting, binding).
    Io(io::Error),
    /// The configuration is invalid.
    Config(ConfigError),
}

impl Error {
    /// The refused message, if this error carries one.
    pub fn into_message(self) -> Option<Bytes> {
        match self {
            Error::Full(b) | Error::TooLarge(b) | Error::Closed(b) => Some(b),
            Error::SessionLost { message, .. } => message,
            _ => None,
        }
    }

    /// True if the session is over (no later operation on it can succeed).
    pub fn is_session_lost(&self) -> bool {
        matches!(self, Error::SessionLost { .. })
    }

    pub(crate) fn from_send(e: SendError, ended: Option<CloseReason>) -> Error {
        match e {
            SendError::Full(b) => Error::Full(b),
            SendError::TooLarge(b) => Error::TooLarge(b),
            SendError::Closed(b) => match ended {
                Some(reason) => Error::SessionLost { reason, fate: Fate::NotDelivered, message: Some(b) },
                None => Error::Closed(b),
            },
            // SendError is non_exhaustive: a future refusal still hands the message back.
            other => Error::Closed(other.into_inner()),
        }
    }

    pub(crate) fn from_failure(f: Failure) -> Error {
        match f.reason {
            FailReason::SessionLost(reason) => Error::SessionLost { reason, fate: f.fate, message: None },
            FailReason::Deadline => Error::Deadline { fate: f.fate },
            FailReason::Rejected(code) => Error::Rejected(code),
            FailReason::TooLarge => Error::PeerTooLarge,
            // Cancelled is only produced by an explicit cancel, which this
            // driver issues only when the caller's wait ended: report the deadline.
            _ => Error::Deadline { fate: f.fate },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Full(_) => f.write_str("send queue full; message returned"),
            Error::TooLarge(b) => write!(f, "message of {} bytes exceeds the limit", b.len()),
            Error::Closed(_) => f.write_str("closed by the application; message returned"),
            Error::Timeout => f.write_str("timed out waiting"),
            Error::Empty => f.write_str("nothing to receive"),
            Error::Deadline { fate } => write!(f, "call deadline passed ({fate:?})"),
            Error::SessionLost { reason, fate, .. } => write!(f, "session lost: {reason} ({fate:?})"),
            Error::Rejected(c) => write!(f, "request rejected by the server (code {c})"),
            Error::PeerTooLarge => f.write_str("request larger than the server accepts"),
            Error::Stopped => f.write_str("server shutting down"),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Config(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}
