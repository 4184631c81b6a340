//! The workloads (W1-W5 and the size sweep), their request bodies and the
//! check every reply gets.

use bytes::Bytes;
use std::time::Duration;

/// Calls outstanding in W2 (pipeline) at most.
pub const PIPELINE_DEPTH: usize = 256;
/// Client connections in W5 (fan-in).
pub const FAN_IN_CONNECTIONS: usize = 32;
/// Request bytes a pipeline keeps in flight at most, so that a blocking raw
/// client that writes a whole window before reading cannot fill every socket
/// buffer and deadlock against its own responses. The same depth applies to
/// every system.
const PIPELINE_BYTES_MAX: usize = 128 << 10;
/// Distinct request bodies cycled through, at most (a response swapped with
/// another call's is caught because neighbours differ).
const BODIES_MAX: usize = 1024;
/// Bytes of all distinct bodies together, at most.
const BODY_POOL_BYTES_MAX: usize = 8 << 20;
/// Largest message size the bench accepts.
pub const MESSAGE_BYTES_MAX: usize = 16 << 20;

/// The shape of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// W1: one connection, sequential calls.
    PingPong,
    /// W2: one connection, many calls outstanding.
    Pipeline,
    /// W3: connect, one call, close, repeated.
    ShortConn,
    /// W4: large request and response, sequential.
    Large,
    /// W5: many connections doing ping-pong at once.
    FanIn,
}

impl Kind {
    /// W1..W5.
    pub fn id(self) -> &'static str {
        match self {
            Kind::PingPong => "W1",
            Kind::Pipeline => "W2",
            Kind::ShortConn => "W3",
            Kind::Large => "W4",
            Kind::FanIn => "W5",
        }
    }

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::PingPong => "ping-pong",
            Kind::Pipeline => "pipeline",
            Kind::ShortConn => "short connections",
            Kind::Large => "large",
            Kind::FanIn => "fan-in",
        }
    }
}

/// One workload: a shape and a message size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Workload {
    /// Its shape.
    pub kind: Kind,
    /// Request and response bytes (the body; framing is each system's own).
    pub size: usize,
}

impl Workload {
    /// W1: 64 B ping-pong.
    pub fn w1(size: usize) -> Workload {
        Workload { kind: Kind::PingPong, size }
    }
    /// W2: 64 B pipeline.
    pub fn w2(size: usize) -> Workload {
        Workload { kind: Kind::Pipeline, size }
    }
    /// The five standard workloads.
    pub fn standard() -> Vec<Workload> {
        vec![
            Workload::w1(64),
            Workload::w2(64),
            Workload { kind: Kind::ShortConn, size: 64 },
            Workload { kind: Kind::Large, size: 1 << 20 },
            Workload { kind: Kind::FanIn, size: 64 },
        ]
    }

    /// Calls in flight per connection.
    pub fn depth(&self) -> usize {
        match self.kind {
            Kind::Pipeline => PIPELINE_DEPTH.min(1 + PIPELINE_BYTES_MAX / (self.size + 4)),
            _ => 1,
        }
    }

    /// Connections used at once.
    pub fn connections(&self) -> usize {
        match self.kind {
            Kind::FanIn => FAN_IN_CONNECTIONS,
            _ => 1,
        }
    }

    /// For example "W1 ping-pong 64 B".
    pub fn label(&self) -> String {
        format!("{} {} {}", self.kind.id(), self.kind.name(), fmt_size(self.size))
    }
}

/// "64 B", "4 KiB", "1 MiB".
pub fn fmt_size(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

/// Parse "64", "4k", "4KiB", "1m", "1MiB".
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        _ => (t, 1),
    };
    let n: usize = num.trim().parse().map_err(|_| format!("not a size: {s:?}"))?;
    let n = n.checked_mul(mul).ok_or_else(|| format!("size too large: {s:?}"))?;
    if n == 0 || n > MESSAGE_BYTES_MAX {
        return Err(format!("size must be 1 B ..= 16 MiB: {s:?}"));
    }
    Ok(n)
}

/// The distinct request bodies of a run. Call `i` sends `body(i)`; the echo
/// server returns it, and [`Bodies::check`] compares the reply byte for byte.
pub struct Bodies {
    bodies: Vec<Bytes>,
}

impl Bodies {
    /// Bodies of `size` bytes, each different from its neighbours.
    pub fn new(size: usize) -> Bodies {
        let count = (BODY_POOL_BYTES_MAX / size.max(1)).clamp(2, BODIES_MAX);
        let bodies = (0..count)
            .map(|i| {
                let mut v: Vec<u8> =
                    (0..size).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8 ^ 0x5a)).collect();
                let tag = (i as u64).to_le_bytes();
                let n = tag.len().min(size);
                v[..n].copy_from_slice(&tag[..n]);
                let b = Bytes::from(v);
                // Cloning once makes the buffer shared, so later clones (one
                // per call) only bump a count instead of allocating.
                drop(b.clone());
                b
            })
            .collect();
        Bodies { bodies }
    }

    /// The body of call `i`.
    pub fn body(&self, i: u64) -> &Bytes {
        &self.bodies[(i % self.bodies.len() as u64) as usize]
    }

    /// Whether `reply` is call `i`'s body, length and content.
    pub fn check(&self, i: u64, reply: &[u8]) -> Result<(), String> {
        let want = self.body(i);
        if reply.len() != want.len() {
            return Err(format!("call {i}: reply of {} bytes, expected {}", reply.len(), want.len()));
        }
        if reply != &want[..] {
            let at = reply.iter().zip(want.iter()).position(|(a, b)| a != b).unwrap_or(0);
            return Err(format!("call {i}: reply differs from the request at byte {at}"));
        }
        Ok(())
    }
}

/// How long and how much one measured run does.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Calls made before measuring (connections warmed, buffers grown).
    pub warmup_calls: u64,
    /// Warm-up stops after this long, whatever the count.
    pub warmup_time: Duration,
    /// Measured calls at most.
    pub calls_max: u64,
    /// The measured phase stops after this long.
    pub time: Duration,
}

impl Budget {
    /// Scale for a workload: large messages get fewer calls.
    pub fn for_workload(self, w: &Workload) -> Budget {
        let per_call = (w.size as u64 / 4096).max(1);
        Budget {
            warmup_calls: (self.warmup_calls / per_call).max(2),
            calls_max: (self.calls_max / per_call).max(20),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_bounds() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("17m").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(fmt_size(64), "64 B");
        assert_eq!(fmt_size(4096), "4 KiB");
        assert_eq!(fmt_size(1 << 20), "1 MiB");
    }

    #[test]
    fn the_check_catches_a_reply_to_another_call() {
        for size in [16, 64, 4096, 1 << 20] {
            let b = Bodies::new(size);
            for i in 0..300u64 {
                assert!(b.check(i, b.body(i)).is_ok());
                assert!(b.check(i, b.body(i + 1)).is_err(), "size {size}: call {i} vs {}", i + 1);
            }
            assert!(b.check(0, &b.body(0)[..size - 1]).is_err());
        }
    }

    #[test]
    fn pipeline_depth_bounds_bytes_in_flight() {
        assert_eq!(Workload::w2(64).depth(), PIPELINE_DEPTH);
        for size in [16, 1024, 4096, 65_536, 1 << 20] {
            let w = Workload::w2(size);
            assert!(w.depth() >= 1 && w.depth() <= PIPELINE_DEPTH);
            assert!(w.depth() == 1 || (w.depth() - 1) * (size + 4) <= PIPELINE_BYTES_MAX, "size {size}");
        }
    }
}
