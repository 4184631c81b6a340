//! Errors of the async API. Outcomes reported by the core ([`Failure`],
//! [`SendError`]) pass through unchanged.

use mf_core::{CloseReason, ConfigError, Failure, SendError};
use std::fmt;

/// A call ended without a response.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// The request was not accepted (too large, or the session is closing
    /// or over); it comes back inside. It was not sent.
    Refused(SendError),
    /// The call's one failure: deadline, rejected by the server, session
    /// lost, cancelled, with whether the server could have seen it.
    Failed(Failure),
    /// The driver task stopped (its runtime shut down) before an outcome.
    Stopped,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Refused(e) => write!(f, "call refused: {e}"),
            CallError::Failed(e) => write!(f, "call failed: {e}"),
            CallError::Stopped => f.write_str("call failed: the driver stopped"),
        }
    }
}

impl std::error::Error for CallError {}

/// A message's receipt will not come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The message's one failure, with whether it could have arrived.
    Failed(Failure),
    /// The driver task stopped (its runtime shut down) before an outcome.
    Stopped,
}

impl fmt::Display for ReceiptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceiptError::Failed(e) => write!(f, "message failed: {e}"),
            ReceiptError::Stopped => f.write_str("message outcome unknown: the driver stopped"),
        }
    }
}

impl std::error::Error for ReceiptError {}

/// A session could not be started or established.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// The session ended before it was established (the server refused it,
    /// or it stayed unreachable for `resume_timeout_ms`).
    SessionLost(CloseReason),
    /// The driver task stopped (its runtime shut down).
    Stopped,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Config(e) => write!(f, "{e}"),
            ConnectError::SessionLost(r) => write!(f, "session lost before it was established: {r}"),
            ConnectError::Stopped => f.write_str("the driver stopped"),
        }
    }
}

impl std::error::Error for ConnectError {}
