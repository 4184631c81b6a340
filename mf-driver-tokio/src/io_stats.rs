//! What the drivers asked of the transport: reads, writes, bytes, wake-ups.

/// I/O counters of a [`Client`](crate::Client) or a [`Server`](crate::Server),
/// named as mf-driver-mio's `IoStats`.
///
/// The driver is generic over the transport, so it counts the calls it makes
/// on it: a read or write that returned (data, end of stream or an error) is
/// one system call on tokio's TCP. A read or write that returned `Pending`
/// (counted apart, in `*_would_block`) cost at most one more system call
/// that found nothing: tokio's TCP makes none when it already knows the
/// socket is drained (a short read) or full (a short write).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use mf_driver_tokio::transport::{TcpConnector, TcpListener};
/// use mf_driver_tokio::{Client, ClientOptions, Request, Server, ServerOptions};
/// let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
/// let addr = listener.local_addr().unwrap();
/// let server = Server::start(listener, ServerOptions::default()).unwrap();
/// server.serve(|req: Request| async move { Ok(req.body) });
/// let client = Client::connect(TcpConnector::new(addr), ClientOptions::default()).await.unwrap();
/// for _ in 0..10 {
///     client.call(0, "ping").await.unwrap();
/// }
/// let io = client.io_stats();
/// assert!(io.write_syscalls >= 10 && io.read_syscalls >= 10);
/// assert_eq!(io.connections, 1);
/// # client.close().await;
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IoStats {
    /// Reads that returned data, end of stream or an error.
    pub read_syscalls: u64,
    /// Reads that found nothing (`Pending`).
    pub read_would_block: u64,
    /// Writes (`writev`) that wrote something or failed.
    pub write_syscalls: u64,
    /// Writes that found the socket full (`Pending`).
    pub write_would_block: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Task wake-ups: client, turns of the driver task; server, turns of
    /// the connection tasks.
    pub wakeups: u64,
    /// Connections opened (client) or accepted (server).
    pub connections: u64,
    /// Client: writes made by the calling task itself (an awaited `call`
    /// writes its request at once when the driver is idle); these are also
    /// counted in `write_syscalls`.
    pub inline_writes: u64,
    /// Client: reads made by a task waiting for its call (it reads its own
    /// response, so the response wakes it directly); also counted in
    /// `read_syscalls`.
    pub inline_reads: u64,
}

impl IoStats {
    pub(crate) fn add(&mut self, o: &IoStats) {
        self.read_syscalls += o.read_syscalls;
        self.read_would_block += o.read_would_block;
        self.write_syscalls += o.write_syscalls;
        self.write_would_block += o.write_would_block;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.wakeups += o.wakeups;
        self.connections += o.connections;
        self.inline_writes += o.inline_writes;
        self.inline_reads += o.inline_reads;
    }
}
