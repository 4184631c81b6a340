//! # mf-core: the MessageFirst protocol, without I/O
//!
//! A pure state machine: bytes in, bytes out, time and randomness passed in.
//! It owns the wire format ([`wire`]), sessions that outlive TCP connections,
//! exactly-once delivery through reconnects, per-channel order, fragmentation,
//! credit flow control, request/response, one timer table per session, and
//! statistics. Drivers (mio, tokio, the simulator) run it on sockets.
//!
//! ## The driver loop (every driver follows this contract)
//!
//! The API falls into four groups, as in quinn-proto:
//!
//! - **A. getters**: `state`, `stats`, `queues`, `inbox_len`, ...;
//! - **B. inputs**: `connected` / [`Endpoint::accept`], `handle_input`,
//!   `connection_lost`, `handle_timeout`;
//! - **C. application commands**: `send`, `call`, `cancel`, `recv`,
//!   `respond`, `reject`, `close`;
//! - **D. outputs**: `poll_transmit`, `poll_timeout`, `poll_event`.
//!
//! After **every** B or C call, a driver drains D in this order:
//!
//! 1. `poll_transmit` into the connection's [`TransmitBuf`] and write it
//!    (for an [`Endpoint`]: for each connection from `poll_dirty`). If the
//!    socket is full, keep the unsent bytes and stop pulling more until it is
//!    writable; events and timers still run meanwhile.
//! 2. `poll_event` until `None`, acting on each: wake the waiter of a
//!    `Response` or `Delivered`, close the socket on `ConnectionClosed` /
//!    `CloseConnection` (after writing what `poll_transmit` still gives, then
//!    call `connection_lost`), open a new connection on `Reconnect`.
//! 3. `poll_timeout`, and arm the driver's timer for it; when it fires, call
//!    `handle_timeout(now)` and start again at 1.
//!
//! `now` is an [`Instant`] in microseconds from an epoch of the driver's
//! choosing; the core never reads a clock, never spawns, never locks, and its
//! only randomness is a ChaCha20 stream from the seed given at construction.
//!
//! ## Example: a call over an in-memory pipe
//!
//! ```
//! use mf_core::{Client, Config, Endpoint, Event, Incoming, Instant, TransmitBuf, seed_from_u64};
//!
//! let now = Instant::ZERO;
//! let mut server = Endpoint::new(Config::default(), seed_from_u64(1)).unwrap();
//! let mut client = Client::new(Config::default(), seed_from_u64(2)).unwrap();
//!
//! // The call is queued before the connection exists; it leaves in the same
//! // write as the handshake.
//! let call = client.call(0, "2+2", None).unwrap();
//! client.connected(now);
//! let conn = server.accept(now);
//!
//! let (mut wire, mut bytes) = (TransmitBuf::new(), Vec::new());
//! client.poll_transmit(now, &mut wire);
//! wire.copy_to_vec(&mut bytes);
//! server.handle_input(now, conn, &bytes);
//!
//! let (session, Incoming::Request { id, body, .. }) = server.recv(now).unwrap() else { panic!() };
//! assert_eq!(&body[..], b"2+2");
//! server.respond(now, session, id, "4").unwrap();
//!
//! bytes.clear();
//! server.poll_transmit(now, conn, &mut wire);
//! wire.copy_to_vec(&mut bytes);
//! client.handle_input(now, &bytes);
//! let answer = std::iter::from_fn(|| client.poll_event()).find_map(|e| match e {
//!     Event::Response { id, body } if id == call => Some(body),
//!     _ => None,
//! });
//! assert_eq!(answer.as_deref(), Some(&b"4"[..]));
//! ```
//!
//! The [`testing`] module (feature `testing`) runs clients and a server over a
//! seeded simulated network that can delay bytes and cut connections at any
//! byte offset; tests, fuzz targets and `mf-sim` share it.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod config;
mod endpoint;
pub mod error;
mod session;
mod stats;
mod time;
pub mod timer;
mod token;
pub mod wire;

#[cfg(feature = "testing")]
pub mod testing;

pub use client::{Client, ClientState};
pub use config::{Config, ConfigError};
pub use endpoint::{ConnId, Endpoint, ServerEvent, SessionId};
pub use error::{ApiMisuse, CloseCode, CloseReason, FailReason, Failure, Fate, SendError};
pub use session::{Event, Incoming, MsgId, ReqId};
pub use stats::{Queues, Stats};
pub use time::Instant;
pub use token::{Token, seed_from_u64};
pub use wire::TransmitBuf;
