//! A seeded simulated network: clients and one server endpoint joined by
//! byte pipes with latency and jitter, writes split at random offsets, and
//! faults: reset at any byte offset, silent stall, partition, server restart.

use crate::wire::TransmitBuf;
use crate::{Client, Config, ConnId, Endpoint, Event, Instant, ServerEvent, seed_from_u64};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Network behaviour.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// One-way latency.
    pub latency_us: u64,
    /// Extra random latency, 0..=jitter_us (FIFO order is kept).
    pub jitter_us: u64,
    /// Split each write into random chunks of at most this many bytes (0: never).
    pub chunk_bytes_max: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig { latency_us: 50, jitter_us: 20, chunk_bytes_max: 0 }
    }
}

/// Which way bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

enum Chunk {
    Data(Vec<u8>),
    /// The sender closed its end after the bytes before this.
    Eof,
}

#[derive(Default)]
struct Pipe {
    chunks: VecDeque<(Instant, Chunk)>,
    last_at: Instant,
    delivered: u64,
}

struct Link {
    conn: ConnId,
    up: Pipe,
    down: Pipe,
    /// Reset the connection once this many bytes have been delivered that way.
    cut_at: Option<(Dir, u64)>,
    /// Bytes are silently lost and nobody is told.
    stalled: bool,
    client_closed: bool,
    server_closed: bool,
}

struct SimClient {
    client: Client,
    link: Option<Link>,
    partitioned: bool,
}

/// Something that happened, for the test to inspect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// An event of client `n`.
    Client(usize, Event),
    /// An event of the server endpoint.
    Server(ServerEvent),
}

/// The simulated network. Every run is a function of its seed.
///
/// ```
/// use mf_core::testing::{NetConfig, SimNet};
/// use mf_core::{Config, Event};
/// let mut net = SimNet::new(7, Config::default(), NetConfig::default());
/// let c = net.add_client(Config::default());
/// let id = net.client(c).send(1, "hi").unwrap();
/// net.connect(c);
/// net.run_until(1_000_000, |net| net.server.session_count() == 1);
/// let (_, msg) = net.server_recv().unwrap();
/// assert_eq!(&msg.body()[..], b"hi");
/// // The receipt comes back once the server took it.
/// net.run_until(1_000_000, |net| net.events().iter().any(|e| *e == mf_core::testing::NetEvent::Client(c, Event::Delivered(id))));
/// ```
pub struct SimNet {
    now: Instant,
    rng: ChaCha8Rng,
    /// The server endpoint.
    pub server: Endpoint,
    server_config: Config,
    net: NetConfig,
    clients: Vec<SimClient>,
    by_conn: BTreeMap<ConnId, usize>,
    events: Vec<NetEvent>,
    buf: TransmitBuf,
    scratch: Vec<u8>,
    steps: u64,
}

impl SimNet {
    /// A network with one server. `seed` decides everything random.
    pub fn new(seed: u64, server_config: Config, net: NetConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let server = Endpoint::new_at(server_config.clone(), seed_from_u64(rng.next_u64()), Instant::ZERO)
            .expect("valid server config");
        SimNet {
            now: Instant::ZERO,
            rng,
            server,
            server_config,
            net,
            clients: Vec::new(),
            by_conn: BTreeMap::new(),
            events: Vec::new(),
            buf: TransmitBuf::new(),
            scratch: Vec::new(),
            steps: 0,
        }
    }

    /// Simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// A random number from the network's generator (for workloads that must
    /// replay with the run).
    pub fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Add a client (not yet connected). Returns its index.
    pub fn add_client(&mut self, config: Config) -> usize {
        let seed = seed_from_u64(self.rng.next_u64());
        let client = Client::new(config, seed).expect("valid client config");
        self.clients.push(SimClient { client, link: None, partitioned: false });
        self.clients.len() - 1
    }

    /// Replace client `i`'s session with a new one (after its session ended).
    pub fn renew_client(&mut self, i: usize, config: Config) {
        self.drop_link(i, true);
        let seed = seed_from_u64(self.rng.next_u64());
        self.clients[i].client = Client::new(config, seed).expect("valid client config");
    }

    /// Client `i`'s core.
    pub fn client(&mut self, i: usize) -> &mut Client {
        &mut self.clients[i].client
    }

    /// The server-side session of client `i`, if the server holds it.
    pub fn session_of(&self, i: usize) -> Option<crate::SessionId> {
        self.server.session_by_token(&self.clients[i].client.token())
    }

    /// Number of clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// True if client `i` has a connection (possibly stalled).
    pub fn is_linked(&self, i: usize) -> bool {
        self.clients[i].link.is_some()
    }

    /// Events so far (cleared by [`SimNet::take_events`]).
    pub fn events(&self) -> &[NetEvent] {
        &self.events
    }

    /// Take the events so far.
    pub fn take_events(&mut self) -> Vec<NetEvent> {
        std::mem::take(&mut self.events)
    }

    /// Take the next message or request from any session at the server.
    pub fn server_recv(&mut self) -> Option<(crate::SessionId, crate::Incoming)> {
        self.server.recv(self.now)
    }

    /// Open a connection for client `i` (fails at once if partitioned).
    pub fn connect(&mut self, i: usize) {
        self.drop_link(i, true);
        let now = self.now;
        let c = &mut self.clients[i];
        if c.partitioned {
            c.client.connect_failed(now);
            return;
        }
        c.client.connected(now);
        let conn = self.server.accept(now);
        self.by_conn.insert(conn, i);
        self.clients[i].link = Some(Link {
            conn,
            up: Pipe { last_at: now, ..Default::default() },
            down: Pipe { last_at: now, ..Default::default() },
            cut_at: None,
            stalled: false,
            client_closed: false,
            server_closed: false,
        });
    }

    /// Reset client `i`'s connection now: both ends see it fail.
    pub fn cut(&mut self, i: usize) {
        self.drop_link(i, true);
    }

    /// Reset client `i`'s connection once `bytes` more bytes have been
    /// delivered in direction `dir` (mid-frame, typically).
    pub fn cut_after(&mut self, i: usize, dir: Dir, bytes: u64) {
        if let Some(l) = self.clients[i].link.as_mut() {
            let done = match dir {
                Dir::Up => l.up.delivered,
                Dir::Down => l.down.delivered,
            };
            l.cut_at = Some((dir, done + bytes));
        }
    }

    /// Client `i`'s connection silently stops delivering; nobody is told.
    /// Only keep-alive and the idle timeout can notice.
    pub fn stall(&mut self, i: usize) {
        if let Some(l) = self.clients[i].link.as_mut() {
            l.stalled = true;
            l.up.chunks.clear();
            l.down.chunks.clear();
        }
    }

    /// Partition client `i` from the server: bytes in flight wait, new
    /// connections fail. Healing lets waiting bytes through (as TCP would).
    pub fn partition(&mut self, i: usize, on: bool) {
        self.clients[i].partitioned = on;
    }

    /// The server process restarts: every connection resets and every
    /// session is forgotten.
    pub fn restart_server(&mut self) {
        for i in 0..self.clients.len() {
            if let Some(l) = self.clients[i].link.take() {
                self.by_conn.remove(&l.conn);
                let now = self.now;
                self.clients[i].client.connection_lost(now);
            }
        }
        let seed = seed_from_u64(self.rng.next_u64());
        self.server =
            Endpoint::new_at(self.server_config.clone(), seed, self.now).expect("valid server config");
    }

    fn drop_link(&mut self, i: usize, notify: bool) {
        if let Some(l) = self.clients[i].link.take() {
            self.by_conn.remove(&l.conn);
            if notify {
                let now = self.now;
                self.clients[i].client.connection_lost(now);
                self.server.connection_lost(now, l.conn);
            }
        }
    }

    fn push(pipe: &mut Pipe, rng: &mut ChaCha8Rng, net: &NetConfig, now: Instant, data: &[u8]) {
        let jitter = if net.jitter_us > 0 { rng.next_u64() % (net.jitter_us + 1) } else { 0 };
        let at = (now + Duration::from_micros(net.latency_us + jitter)).max(pipe.last_at);
        pipe.last_at = at;
        if net.chunk_bytes_max == 0 {
            pipe.chunks.push_back((at, Chunk::Data(data.to_vec())));
            return;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let n = 1 + (rng.next_u64() as usize % net.chunk_bytes_max).min(rest.len() - 1);
            pipe.chunks.push_back((at, Chunk::Data(rest[..n].to_vec())));
            rest = &rest[n..];
        }
    }

    /// Move every byte the ends want to send into the pipes, and act on
    /// connection events (reconnect, close).
    fn pump(&mut self) {
        let now = self.now;
        for _round in 0..64 {
            let mut moved = false;
            for i in 0..self.clients.len() {
                // Client output.
                loop {
                    self.clients[i].client.poll_transmit(now, &mut self.buf);
                    if self.buf.is_empty() {
                        break;
                    }
                    self.scratch.clear();
                    self.buf.copy_to_vec(&mut self.scratch);
                    moved = true;
                    let c = &mut self.clients[i];
                    if let Some(l) = c.link.as_mut().filter(|l| !l.stalled && !l.client_closed) {
                        Self::push(&mut l.up, &mut self.rng, &self.net, now, &self.scratch);
                    }
                }
                while let Some(e) = self.clients[i].client.poll_event() {
                    moved = true;
                    match &e {
                        Event::Reconnect => self.connect(i),
                        Event::ConnectionClosed { .. } => {
                            if let Some(l) = self.clients[i].link.as_mut() {
                                l.client_closed = true;
                                let at = l.up.last_at.max(now);
                                l.up.chunks.push_back((at, Chunk::Eof));
                            }
                        }
                        _ => {}
                    }
                    self.events.push(NetEvent::Client(i, e));
                }
            }
            // Server output.
            while let Some(conn) = self.server.poll_dirty() {
                loop {
                    self.server.poll_transmit(now, conn, &mut self.buf);
                    if self.buf.is_empty() {
                        break;
                    }
                    self.scratch.clear();
                    self.buf.copy_to_vec(&mut self.scratch);
                    moved = true;
                    if let Some(&i) = self.by_conn.get(&conn) {
                        if let Some(l) =
                            self.clients[i].link.as_mut().filter(|l| !l.stalled && !l.server_closed)
                        {
                            Self::push(&mut l.down, &mut self.rng, &self.net, now, &self.scratch);
                        }
                    }
                }
            }
            while let Some(e) = self.server.poll_event() {
                moved = true;
                if let ServerEvent::CloseConnection { conn, .. } = &e {
                    match self.by_conn.get(conn).copied() {
                        Some(i) => {
                            if let Some(l) = self.clients[i].link.as_mut() {
                                l.server_closed = true;
                                let at = l.down.last_at.max(now);
                                l.down.chunks.push_back((at, Chunk::Eof));
                            }
                        }
                        None => self.server.connection_lost(now, *conn),
                    }
                }
                self.events.push(NetEvent::Server(e));
            }
            if !moved {
                break;
            }
        }
    }

    fn next_time(&self) -> Option<Instant> {
        let mut t = self.server.poll_timeout();
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for c in &self.clients {
            min(c.client.poll_timeout());
            if let Some(l) = &c.link {
                if !c.partitioned {
                    min(l.up.chunks.front().map(|c| c.0));
                    min(l.down.chunks.front().map(|c| c.0));
                }
            }
        }
        t
    }

    /// Deliver what is due on client `i`'s link.
    fn deliver(&mut self, i: usize) {
        let now = self.now;
        if self.clients[i].partitioned {
            return;
        }
        for dir in [Dir::Up, Dir::Down] {
            loop {
                let Some(l) = self.clients[i].link.as_mut() else {
                    return;
                };
                let pipe = match dir {
                    Dir::Up => &mut l.up,
                    Dir::Down => &mut l.down,
                };
                if pipe.chunks.front().is_none_or(|c| c.0 > now) {
                    break;
                }
                let Some((_, chunk)) = pipe.chunks.pop_front() else {
                    break;
                };
                let conn = l.conn;
                let mut data = match chunk {
                    Chunk::Eof => {
                        // One end closed after its last bytes; the other reads
                        // EOF and closes too.
                        self.drop_link(i, true);
                        return;
                    }
                    Chunk::Data(d) => d,
                };
                let mut cut = false;
                if let Some((cdir, at)) = l.cut_at {
                    if cdir == dir {
                        let room = at.saturating_sub(pipe.delivered) as usize;
                        if data.len() >= room {
                            data.truncate(room);
                            cut = true;
                        }
                    }
                }
                pipe.delivered += data.len() as u64;
                match dir {
                    Dir::Up => self.server.handle_input(now, conn, &data),
                    Dir::Down => self.clients[i].client.handle_input(now, &data),
                }
                if cut {
                    self.drop_link(i, true);
                    return;
                }
            }
        }
    }

    /// One step: flush outputs, advance time to the next delivery or timer,
    /// deliver and fire. False if nothing is left to happen.
    pub fn step(&mut self) -> bool {
        self.steps += 1;
        self.pump();
        let Some(t) = self.next_time() else {
            return false;
        };
        self.now = self.now.max(t);
        for i in 0..self.clients.len() {
            self.deliver(i);
        }
        let now = self.now;
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        for c in &mut self.clients {
            if c.client.poll_timeout().is_some_and(|t| t <= now) {
                c.client.handle_timeout(now);
            }
        }
        self.pump();
        true
    }

    /// Step until `done` holds, nothing is left to happen, `max_steps` steps
    /// pass, or simulated time passes `deadline`. Returns whether `done` held.
    pub fn run_until_at(
        &mut self,
        max_steps: u64,
        deadline: Instant,
        mut done: impl FnMut(&mut SimNet) -> bool,
    ) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            if self.now > deadline || !self.step() {
                return done(self);
            }
        }
        done(self)
    }

    /// [`SimNet::run_until_at`] without a time limit.
    pub fn run_until(&mut self, max_steps: u64, done: impl FnMut(&mut SimNet) -> bool) -> bool {
        self.run_until_at(max_steps, Instant::NEVER, done)
    }

    /// Step until simulated time reaches `t` (or nothing is left to happen).
    pub fn run_for(&mut self, d: Duration, max_steps: u64) {
        let until = self.now + d;
        for _ in 0..max_steps {
            match self.next_time() {
                Some(t) if t <= until => {
                    self.step();
                }
                _ => {
                    self.pump();
                    if self.next_time().is_none_or(|t| t > until) {
                        break;
                    }
                }
            }
        }
        self.now = self.now.max(until);
    }
}
