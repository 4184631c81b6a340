//! # mf-driver-tokio: the async MessageFirst API
//!
//! Whole messages and request/response over TCP, exactly once through
//! connection loss, on tokio. The protocol lives in [`mf_core`]; this crate
//! runs its driver loop on sockets and timers:
//!
//! - [`Client`]: `connect`, `send` (waits for room) / `try_send` (hands the
//!   message back) / `send_timeout`, [`Receipt`]s, `call` with or without a
//!   deadline, `recv` / `try_recv` / [`Client::messages`] (a `Stream`),
//!   channels, `close`. The session resumes by itself after a connection
//!   fails; if it cannot, every pending message and call gets its failure.
//! - [`Server`]: a pull API ([`Server::recv`], `respond`, `reject`, `send`)
//!   or an async [`Handler`] via [`Server::serve`]; bounded sessions,
//!   connections and handler concurrency; graceful [`Server::shutdown`].
//! - [`transport`]: the small connect/listen traits the driver is generic
//!   over, for tokio's TCP and (feature `turmoil`) turmoil's simulated TCP,
//!   so `mf-sim` runs this very code under network faults.
//!
//! All time comes from `tokio::time`: a paused test runtime or turmoil's
//! clock drives keep-alives, deadlines and reconnect backoff.
//!
//! ## What a call costs
//!
//! An awaited `call` writes its request itself (one `writev`, no task
//! switch) and reads its own response, so in ping-pong a call is one write
//! and one read on each side, as on a raw socket. Output queued without
//! waiting (`send`, `try_call`) leaves in one write per turn of the driver
//! task; the server answers every request of one read in one write, polling
//! each handler future once in the connection's own task (a task is spawned
//! only for a future still pending). `ClientOptions::write_batch_us` and
//! `ServerOptions::write_batch_us` turn batching off or hold output longer;
//! [`Client::io_stats`] and [`Server::io_stats`] count reads, writes and
//! wake-ups ([`IoStats`]). For a short-lived connection, [`Client::start`]
//! and a first call send the HELLO and the request in one write, and
//! [`Client::close`] returns once the CLOSE frame is written.
//!
//! Every async method documents its cancel safety. In short: dropping a
//! `send` future before it returns means the message was not queued;
//! dropping a `call` future cancels the call (the server application sees
//! the request at most once, and a late response is discarded); dropping a
//! `recv` future loses nothing.
//!
//! ## Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use mf_driver_tokio::transport::{TcpConnector, TcpListener};
//! use mf_driver_tokio::{Client, ClientOptions, Request, Server, ServerOptions};
//!
//! let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
//! let addr = listener.local_addr().unwrap();
//! let server = Server::start(listener, ServerOptions::default()).unwrap();
//! server.serve(|req: Request| async move { Ok(req.body) }); // echo
//!
//! let client = Client::connect(TcpConnector::new(addr), ClientOptions::default()).await.unwrap();
//! // A one-way message, and its receipt: the server application took it.
//! client.send(1, "note").await.unwrap().await.unwrap();
//! // A call.
//! assert_eq!(&client.call(0, "ping").await.unwrap()[..], b"ping");
//! client.close().await;
//! server.shutdown().await;
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod calls;
mod client;
mod clock;
mod error;
mod io_stats;
mod read_buf;
mod server;
pub mod transport;

pub use client::{Client, ClientOptions, PendingCall, Receipt, SessionOver};
pub use error::{CallError, ConnectError, ReceiptError};
pub use io_stats::IoStats;
pub use server::{Handler, Message, Request, Server, ServerOptions};

pub use mf_core::{
    ClientState, CloseCode, CloseReason, Config, FailReason, Failure, Fate, Incoming, MsgId, ReqId,
    SendError, SessionId,
};
