//! # mf-driver-mio: the blocking MessageFirst API
//!
//! Whole messages and request -> response over TCP, exactly once through
//! connection loss, with blocking, timed and non-blocking modes: the sans-IO
//! [`mf_core`] state machine driven on mio sockets.
//!
//! ```
//! use mf_driver_mio::{Client, ClientConfig, Server, ServerConfig};
//!
//! // A server on an ephemeral port; `serve` runs the handler on its workers.
//! let server = Server::bind("127.0.0.1:0", ServerConfig::default())?;
//! let addr = server.local_addr();
//! let s = server.clone();
//! let serving = std::thread::spawn(move || s.serve(|req| req.body));
//!
//! let client = Client::connect(addr, ClientConfig::default())?;
//! assert_eq!(&client.call("ping")?[..], b"ping");          // blocks for the answer
//! client.send("one-way")?.wait()?;                         // blocks for the receipt
//!
//! client.close()?;
//! server.shutdown();
//! serving.join().unwrap()?;
//! # Ok::<(), mf_driver_mio::Error>(())
//! ```
//!
//! ## Modes
//!
//! | | blocking | timeout | non-blocking |
//! |---|---|---|---|
//! | request -> response | [`Client::call`] | [`Client::call_timeout`] | [`Client::call_start`] -> [`PendingCall`] |
//! | one-way message | [`Client::send`] | [`Client::send_timeout`] | [`Client::try_send`] |
//! | receipt (C4) | [`Receipt::wait`] | [`Receipt::wait_timeout`] | [`Receipt::poll`] |
//! | receive | [`Client::recv`] | [`Client::recv_timeout`] | [`Client::try_recv`] |
//!
//! A send that cannot be accepted hands the message back inside the error
//! ([`Error::Full`], [`Error::TooLarge`], [`Error::Closed`],
//! [`Error::SessionLost`] with `message: Some(..)`; see
//! [`Error::into_message`]). [`Client::channel`] gives the same operations on
//! another channel; order is kept per channel (C3). The server has the same
//! three modes for pulling ([`Server::recv`], [`Server::recv_timeout`],
//! [`Server::try_recv`]) and answers with [`Server::respond`],
//! [`Server::reject`], or pushes with [`Server::send`] (whose
//! [`ServerReceipt`] waits or polls like a client's); or it runs a handler
//! with [`Server::serve`] (a handler that panics rejects its request with
//! [`REJECT_HANDLER_PANICKED`]; the worker carries on).
//!
//! ## Connection loss and the session's fate
//!
//! A [`Client`] holds one session across TCP connections. When a connection
//! fails the client reconnects after a jittered, capped exponential backoff
//! (`reconnect_backoff_min_ms` .. `reconnect_backoff_max_ms`) and resumes the
//! session: unacknowledged messages and requests are resent and the peer
//! drops duplicates, so each is delivered once (C2, C6). If the session
//! cannot be resumed (the server restarted or expired it, or
//! `resume_timeout_ms` passed), every pending call, receipt and blocked
//! sender fails at once with [`Error::SessionLost`], whose `fate` says
//! whether the item could have reached the peer; [`Client::state`] reports
//! `Ended(reason)` and later operations fail the same way. Every wait has
//! the session's end as a wake-up condition: nothing hangs.
//!
//! ## Threads and the call path
//!
//! - **Client.** One lock-protected state per session. Application threads
//!   do their own I/O: a `call` runs the core's `poll_transmit` and writes the
//!   request itself (one `sendmsg`), then, if no other thread is doing so,
//!   reads the socket itself while it waits ("leader"), so a response wakes
//!   exactly the thread that waits for it, with no hop through another
//!   thread. The connected socket is in blocking mode and every other read
//!   and write passes `MSG_DONTWAIT`, so an untimed wait is one blocking
//!   `recv`, as on raw blocking TCP (a wait with a deadline polls first);
//!   whatever else ends such a wait (a lost connection, the session's end,
//!   [`Client::disconnect`]) shuts the socket down, which wakes the leader.
//!   A ping-pong call is two system calls on the client: `sendmsg`, `recv`.
//!   One process-wide reactor thread (a mio `Poll` over every client's
//!   socket and a min-heap of their timers) does the rest: reads while no
//!   caller leads, the core's timers (keep-alive, idle, acknowledgement
//!   delay, reconnect backoff), reconnects, and writes that batching held
//!   back. A connect-call-close client therefore creates no thread and does
//!   not even register its socket with the reactor (a socket is watched
//!   for READABLE only once application threads have been idle for a tick,
//!   1 ms, or while others wait and nobody leads; WRITABLE only while
//!   connecting or while a write is blocked). While application threads
//!   are busy with a client, the reactor's tick visits take no lock unless
//!   one of the core's deadlines is due, and ticks fall on a shared grid,
//!   so a thousand busy clients cost one reactor wake-up per tick and a
//!   thousand clients do not run a thousand threads. Set
//!   [`ClientConfig::caller_reads`] to `false` to compare.
//! - **Server.** N worker event loops (default: one per available core), each
//!   with its own `SO_REUSEPORT` listener (socket2, backlog 4096), mio `Poll`,
//!   read buffer and [`mf_core::Endpoint`]. Listeners defer accepting a
//!   connection until its first bytes arrive (`TCP_DEFER_ACCEPT`, see
//!   [`TcpOptions::defer_accept_ms`]), and a new connection is read once
//!   before it is registered: a client's HELLO and first request leave in
//!   one write, so a short connection wakes its worker once. A `serve` handler runs on the worker that owns the
//!   session, in batches, with no lock held; the responses to a batch, and
//!   whatever the input itself asked for (the WELCOME, acknowledgements),
//!   leave in one `sendmsg` per connection. A worker reads the clock once
//!   per wake-up and once per handler batch. Pull-API calls (`recv`,
//!   `respond`, `send`) lock the owning worker and write from the calling
//!   thread.
//!
//! ### Resuming onto another worker
//!
//! The kernel spreads connections across the listeners by a hash of their
//! addresses, so a reconnecting client usually lands on a worker that does
//! not hold its session. Sessions never move between workers; connections
//! do. Each worker records `token -> worker` in a shared registry when a
//! session comes up and removes it when the session ends. Before any
//! endpoint sees a new connection, its first frame (the 80-byte HELLO) is
//! routed with [`mf_core::wire::peek_hello`]: a HELLO resuming a session
//! owned by another worker is handed to that worker (the socket and the
//! bytes read so far) through its hand-off queue and mio `Waker`, and the
//! owner feeds those bytes to its endpoint as if it had read them. Anything
//! else (a new session, an unknown token, garbage) stays with the accepting
//! worker, whose endpoint answers it or closes it with a typed reason.
//! [`ServerStats::handoffs`] counts hand-overs.
//!
//! ## Batching and system calls
//!
//! Reads use one large buffer (2 MiB per thread that reads client sockets,
//! [`ServerConfig::read_buffer_bytes`] per server worker), never zeroed, so
//! only the pages reads touch become resident, and the core decodes every
//! frame in it: a 1 MiB message usually arrives in one `recv` call.
//! Everything ready for a connection leaves in one `sendmsg` (up to 64
//! slices; large bodies go by reference, not copied). One-way messages and [`Client::call_start`] hold their output
//! for up to [`ClientConfig::write_batch_us`] (default 200 us) after a write,
//! so a burst shares one `writev`; anything a thread then waits on is
//! written at once. The server's pull API batches the same way
//! ([`ServerConfig::write_batch_us`]); a `serve` handler's answers to one
//! batch of input leave together. [`IoStats`] counts read and write system calls (P7:
//! write calls per message, <= 0.1 when pipelined).
//!
//! ## Limits
//!
//! Every queue is bounded by the protocol [`Config`] (send queue, calls in
//! flight, credit windows, inbox, open requests, sessions and handshakes per
//! server, handshake and idle timeouts); the driver adds only bounded
//! buffers (read buffers per thread, not per connection; one transmit buffer per connection that is kept
//! only while its socket is full, a HELLO that arrives in pieces is
//! completed with exact reads so a slow sender holds at most 80 bytes, a
//! hand-off queue of at most 4096 connections and 16 MiB per worker). [`ServerConfig`] divides `sessions_max` and `handshakes_max`
//! among the workers. Socket options are in [`TcpOptions`].
//!
//! ## Shutdown
//!
//! [`Client::close`] drains (every message receipted, every call answered,
//! within `close_timeout_ms`) and says goodbye; dropping the last clone
//! starts the same close in the background.
//! [`Server::shutdown`] stops accepting, closes every session gracefully
//! (each finishes or fails its in-flight work within `close_timeout_ms`)
//! and joins the workers.
//!
//! ## Verification
//!
//! Unix only (the reactor registers raw descriptors; reads and writes use
//! `MSG_DONTWAIT` and `MSG_NOSIGNAL`; a timed leader polls its socket).
//! The wake-up protocol (completion slots, wait lists, the pull-mode ready
//! signal, the shutdown flag) is modelled with loom:
//! `RUSTFLAGS="--cfg loom" cargo test --release -p mf-driver-mio loom`. The
//! integration tests in `tests/` run over real loopback sockets through a
//! fault-injecting proxy (`tests/common/proxy.rs`) and check every run with
//! `mf_core::testing::checker`.

#![deny(missing_docs)]

mod client;
mod config;
mod error;
mod io;
mod reactor;
mod server;
mod sync;
mod waiters;

pub use client::{Channel, Client, ClientStats, Message, PendingCall, Receipt};
pub use config::{ClientConfig, ServerConfig, TcpOptions};
pub use error::Error;
pub use io::IoStats;
pub use mf_core::{ClientState, CloseCode, CloseReason, Config, FailReason, Failure, Fate, MsgId, ReqId};
pub use server::{
    Inbound, REJECT_HANDLER_PANICKED, REJECT_NO_RESPONSE, Reply, Server, ServerReceipt, ServerStats,
    SessionRef,
};
