//! # mf-driver-mio
//!
//! The blocking MessageFirst API on mio: `connect`, `call`, `send`, `recv`
//! in blocking, timeout and non-blocking modes; a server with one event loop
//! per core. Built by the mf-driver-mio issue on top of `mf-core`.
