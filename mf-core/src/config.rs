//! Limits and timers. Every queue and buffer in the core has a bound here.
//!
//! Memory a session can hold, worst case, in terms of these settings:
//! - receive side: `window_bytes_max + message_bytes_max` of message bodies
//!   (a message may always start when nothing is outstanding, so one message of
//!   up to `message_bytes_max` can exceed the window), plus one partial frame
//!   (at most [`FRAME_BODY_MAX`](crate::wire::FRAME_BODY_MAX) + 8 bytes);
//! - send side: `send_queue_bytes_max` of queued bodies, plus the
//!   retransmission log, which holds frames until acknowledged and is bounded
//!   by the peer's window plus unacknowledged responses.
//!
//! An idle session (nothing queued, nothing in flight) holds only the
//! [`Session`](crate::session::Session) struct itself: see the `idle_session_size`
//! test.

use crate::wire::{EARLY_WINDOW_BYTES, EARLY_WINDOW_MSGS, FRAME_PAYLOAD_MAX};

/// Protocol limits and timers for one side. `Config::default()` suits a LAN.
///
/// ```
/// let mut config = mf_core::Config::default();
/// config.idle_timeout_ms = 2_000;
/// config.keepalive_interval_ms = 500;
/// config.validate().unwrap();
/// ```
///
/// Fields are public so struct-update syntax works:
///
/// ```
/// let c = mf_core::Config { idle_timeout_ms: 30_000, ..Default::default() };
/// assert!(c.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest message body accepted or sent. Default 16 MiB.
    pub message_bytes_max: u32,
    /// Payload bytes per frame; larger messages are fragmented into frames of
    /// this size and interleaved with other channels. At most 64 KiB. Default 64 KiB.
    pub fragment_bytes: u32,
    /// Messages the peer may have outstanding (sent, not yet taken by our
    /// application). At least 64. Default 1024.
    pub window_msgs_max: u32,
    /// Bytes the peer may have outstanding. At least 64 KiB. Default 4 MiB.
    pub window_bytes_max: u32,
    /// Messages accepted by `send`/`call` and not yet fully transmitted. Default 4096.
    pub send_queue_msgs_max: u32,
    /// Bytes accepted by `send`/`call` and not yet fully transmitted. Default 32 MiB.
    pub send_queue_bytes_max: u64,
    /// Client: calls outstanding (queued or awaiting a response). Default 1024.
    pub calls_in_flight_max: u32,
    /// Server: requests per session received and not yet answered. At least 16. Default 1024.
    pub requests_open_max: u32,
    /// Fragmented messages we accept in reassembly at once (per session). Default 8.
    pub reassembly_max: u16,
    /// Delay before a standalone acknowledgement is sent. Default 1 ms.
    pub ack_delay_ms: u64,
    /// Acknowledge at once after this many unacknowledged frames. Default 64.
    pub ack_frames_max: u32,
    /// Send a ping when nothing has been received for this long. Default 5 s.
    pub keepalive_interval_ms: u64,
    /// Declare the connection dead when nothing has been received for this long. Default 15 s.
    pub idle_timeout_ms: u64,
    /// A new connection must complete its handshake within this. Default 5 s.
    pub handshake_timeout_ms: u64,
    /// Server: how long a session without a connection is kept for resumption. Default 60 s.
    pub session_linger_ms: u64,
    /// Client: how long to keep trying to resume before declaring the session lost. Default 30 s.
    pub resume_timeout_ms: u64,
    /// Client: first reconnect delay; doubles per failed attempt, with jitter. Default 10 ms.
    pub reconnect_backoff_min_ms: u64,
    /// Client: cap on the reconnect delay. Default 1 s.
    pub reconnect_backoff_max_ms: u64,
    /// Graceful close waits this long for outstanding work. Default 5 s.
    pub close_timeout_ms: u64,
    /// Server: sessions alive at once. Default 10 000.
    pub sessions_max: u32,
    /// Server: connections still in their handshake at once. Default 1024.
    pub handshakes_max: u32,
    /// Bytes one `poll_transmit` call may append. Default 256 KiB.
    pub transmit_bytes_max: u32,
    /// Test-only fault: deliver duplicate frames instead of dropping them, so
    /// tests can prove the invariant checker catches duplicates.
    #[cfg(feature = "testing")]
    pub fault_disable_dedup: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            message_bytes_max: 16 << 20,
            fragment_bytes: 64 << 10,
            window_msgs_max: 1024,
            window_bytes_max: 4 << 20,
            send_queue_msgs_max: 4096,
            send_queue_bytes_max: 32 << 20,
            calls_in_flight_max: 1024,
            requests_open_max: 1024,
            reassembly_max: 8,
            ack_delay_ms: 1,
            ack_frames_max: 64,
            keepalive_interval_ms: 5_000,
            idle_timeout_ms: 15_000,
            handshake_timeout_ms: 5_000,
            session_linger_ms: 60_000,
            resume_timeout_ms: 30_000,
            reconnect_backoff_min_ms: 10,
            reconnect_backoff_max_ms: 1_000,
            close_timeout_ms: 5_000,
            sessions_max: 10_000,
            handshakes_max: 1024,
            transmit_bytes_max: 256 << 10,
            #[cfg(feature = "testing")]
            fault_disable_dedup: false,
        }
    }
}

/// A setting outside what the protocol allows. Returned by [`Config::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub &'static str);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The most memory one session may hold under these settings, in bytes
    /// (what `Client::memory_bytes` and `Endpoint::session_memory_bytes`
    /// report never exceeds it). Tests check it under random load.
    ///
    /// ```
    /// let c = mf_core::Config::default();
    /// assert!(c.session_memory_bytes_max() < 256 << 20);
    /// ```
    pub fn session_memory_bytes_max(&self) -> usize {
        crate::session::Session::memory_bound(self)
    }

    /// Check the settings against the protocol's minimums.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let e = |m| Err(ConfigError(m));
        if self.fragment_bytes == 0 || self.fragment_bytes as usize > FRAME_PAYLOAD_MAX {
            return e("fragment_bytes must be in 1..=65536");
        }
        if (self.message_bytes_max as u64) < EARLY_WINDOW_BYTES {
            return e("message_bytes_max must be at least 64 KiB");
        }
        if self.window_msgs_max < EARLY_WINDOW_MSGS as u32 {
            return e("window_msgs_max must be at least 64");
        }
        if (self.window_bytes_max as u64) < EARLY_WINDOW_BYTES {
            return e("window_bytes_max must be at least 64 KiB");
        }
        if self.requests_open_max < crate::wire::EARLY_REQUESTS_OPEN {
            return e("requests_open_max must be at least 16");
        }
        if self.reassembly_max == 0 {
            return e("reassembly_max must be at least 1");
        }
        if self.send_queue_msgs_max == 0 || self.calls_in_flight_max == 0 {
            return e("send_queue_msgs_max and calls_in_flight_max must be at least 1");
        }
        if self.calls_in_flight_max > crate::session::calls::CALLS_IN_FLIGHT_LIMIT {
            return e("calls_in_flight_max must be at most 1,048,576");
        }
        if self.keepalive_interval_ms == 0 || self.idle_timeout_ms <= self.keepalive_interval_ms {
            return e("idle_timeout_ms must exceed keepalive_interval_ms, which must be > 0");
        }
        if self.reconnect_backoff_min_ms == 0 || self.reconnect_backoff_max_ms < self.reconnect_backoff_min_ms
        {
            return e("reconnect backoff: 0 < min <= max");
        }
        if self.transmit_bytes_max < 16 << 10 {
            return e("transmit_bytes_max must be at least 16 KiB");
        }
        if self.sessions_max == 0 || self.handshakes_max == 0 {
            return e("sessions_max and handshakes_max must be at least 1");
        }
        Ok(())
    }
}
