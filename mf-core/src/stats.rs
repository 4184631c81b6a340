//! Per-session counters.

/// Counters for one session, cumulative over all its connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Messages and requests accepted by `send`/`call`/`respond`.
    pub msgs_sent: u64,
    /// Payload bytes of those.
    pub bytes_sent: u64,
    /// Messages, requests and responses received whole (duplicates excluded).
    pub msgs_received: u64,
    /// Payload bytes of those.
    pub bytes_received: u64,
    /// Data frames sent (first transmissions).
    pub frames_sent: u64,
    /// Data frames sent again after a resume.
    pub frames_retransmitted: u64,
    /// Data frames received that had been received before, dropped.
    pub duplicates_dropped: u64,
    /// Messages whose receipt came back.
    pub receipts: u64,
    /// Connections that resumed this session (the first one does not count).
    pub resumes: u64,
    /// Connections lost or closed while the session lived.
    pub disconnects: u64,
    /// Times the session was created afresh because the server proved it never
    /// saw the first HELLO (a cut during the very first handshake).
    pub recreated: u64,
    /// Responses that arrived after their call had ended (deadline, cancel).
    pub late_responses: u64,
    /// Smoothed round-trip time from PING/PONG and handshakes, in microseconds (0 before any sample).
    pub rtt_us: u64,
    /// Bytes appended by `poll_transmit`.
    pub wire_bytes_out: u64,
    /// Bytes passed to `handle_input`.
    pub wire_bytes_in: u64,
}

/// A snapshot of queue depths, from `Client::queues` or `Endpoint::queues`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Queues {
    /// Messages accepted and not yet fully transmitted.
    pub send_queued_msgs: u32,
    /// Bytes of those.
    pub send_queued_bytes: u64,
    /// Data frames transmitted and not yet acknowledged.
    pub unacked_frames: u64,
    /// Messages sent whose receipt has not come back.
    pub awaiting_receipt: u64,
    /// Calls queued or awaiting a response.
    pub calls_in_flight: u32,
    /// Messages waiting in the inbox for the application.
    pub inbox_msgs: u32,
}
