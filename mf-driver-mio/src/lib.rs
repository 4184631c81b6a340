//! # mf-driver-mio: the blocking MessageFirst API
//!
//! Whole messages and request -> response over TCP, exactly once through
//! connection loss, with blocking, timed and non-blocking modes. Runs the
//! sans-IO [`mf_core`] state machine on mio sockets.
//!
//! Crate docs are completed below.

#![deny(missing_docs)]

mod client;
mod config;
mod error;
mod io;
mod server;
mod sync;
mod waiters;

pub use client::{Channel, Client, ClientStats, Message, PendingCall, Receipt};
pub use config::{ClientConfig, ServerConfig, TcpOptions};
pub use error::Error;
pub use io::IoStats;
pub use mf_core::{ClientState, CloseCode, CloseReason, Config, FailReason, Failure, Fate, MsgId, ReqId};
pub use server::{Inbound, REJECT_NO_RESPONSE, Reply, Server, ServerStats, SessionRef};
