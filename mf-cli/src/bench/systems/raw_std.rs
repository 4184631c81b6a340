//! raw-std, the floor: blocking `std::net`, each message a u32 little-endian
//! length and the body, `TCP_NODELAY` on.
//!
//! It is written to be fast, as a careful programmer would write it for the
//! workload: the server echoes every complete frame it has read with one
//! write (straight from its read buffer), the client reads into a buffer and
//! parses frames out of it, and a pipelined client writes its whole window
//! with one write (a buffered writer).

use crate::bench::harness::IoCounters;
use crate::bench::systems::{ClientRun, Knobs, Meter, Pipeline, ServerHandle, sync_calls};
use crate::bench::workloads::{Bodies, Budget, Kind, MESSAGE_BYTES_MAX, Workload};
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Initial read buffer.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// Frames parsed out of a growing read buffer.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader { buf: vec![0; READ_BUFFER_BYTES], start: 0, end: 0 }
    }
}

impl FrameReader {
    /// The next complete frame's body, if one is buffered.
    pub fn frame(&mut self) -> io::Result<Option<&[u8]>> {
        match self.frame_len()? {
            Some(len) if self.end - self.start >= 4 + len => {
                let body = self.start + 4..self.start + 4 + len;
                self.start = body.end;
                Ok(Some(&self.buf[body]))
            }
            _ => Ok(None),
        }
    }

    fn frame_len(&self) -> io::Result<Option<usize>> {
        if self.end - self.start < 4 {
            return Ok(None);
        }
        let mut h = [0u8; 4];
        h.copy_from_slice(&self.buf[self.start..self.start + 4]);
        let len = u32::from_le_bytes(h) as usize;
        if len > MESSAGE_BYTES_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
        }
        Ok(Some(len))
    }

    /// Where unparsed bytes start.
    pub fn position(&self) -> usize {
        self.start
    }

    /// Bytes `from..to` of the buffer.
    pub fn bytes(&self, from: usize, to: usize) -> &[u8] {
        &self.buf[from..to]
    }

    /// Make room for the frame being read (the only place data moves), and
    /// hand out the free space.
    pub fn space(&mut self) -> io::Result<&mut [u8]> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let need = self.frame_len()?.map_or(4, |l| 4 + l);
        if self.buf.len() - self.start < need || self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < need {
                self.buf.resize(need, 0);
            }
        }
        Ok(&mut self.buf[self.end..])
    }

    /// `n` bytes were read into [`FrameReader::space`].
    pub fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// One `read` into the buffer.
    pub fn fill(&mut self, r: &mut impl Read, io: &IoCounters) -> io::Result<()> {
        loop {
            let space = self.space()?;
            io.read();
            match r.read(space) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.filled(n);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// `write_all` of several slices with `writev`, counting each call.
pub fn write_all_vectored(
    w: &mut impl Write,
    mut bufs: &mut [IoSlice<'_>],
    io: &IoCounters,
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        io.wrote();
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_all(w: &mut impl Write, buf: &[u8], io: &IoCounters) -> io::Result<()> {
    write_all_vectored(w, &mut [IoSlice::new(buf)], io)
}

/// One message: length prefix and body, in one `writev`.
pub fn write_frame(w: &mut impl Write, body: &[u8], io: &IoCounters) -> io::Result<()> {
    let h = (body.len() as u32).to_le_bytes();
    write_all_vectored(w, &mut [IoSlice::new(&h), IoSlice::new(body)], io)
}

// --- server -------------------------------------------------------------------

/// Serve echo on `addr`. `inline`: serve each connection on the accepting
/// thread, one at a time (the fastest shape for one-connection workloads);
/// otherwise a thread per connection.
pub fn serve(addr: SocketAddr, knobs: &Knobs, inline: bool) -> Result<ServerHandle, String> {
    let listener = super::transport::listen(addr, knobs).map_err(|e| format!("raw-std bind {addr}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let io = IoCounters::shared();
    let stop = Arc::new(AtomicBool::new(false));
    let (io2, stop2, knobs) = (io.clone(), stop.clone(), *knobs);
    let accept = std::thread::Builder::new()
        .name("raw-std-accept".into())
        .spawn(move || {
            for s in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                let _ = knobs.apply_conn(&socket2::SockRef::from(&s));
                if inline {
                    echo(s, knobs.batching, &io2);
                } else {
                    let io3 = io2.clone();
                    let _ = std::thread::Builder::new()
                        .name("raw-std-conn".into())
                        .stack_size(256 << 10)
                        .spawn(move || echo(s, knobs.batching, &io3));
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let io_fn = io.clone();
    Ok(ServerHandle::new(addr, Arc::new(move || io_fn.snapshot()), move || {
        stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept.
        let _ = TcpStream::connect(addr);
        let _ = accept.join();
    }))
}

/// Echo frames until the peer closes. Batching: every complete frame read so
/// far leaves in one write; otherwise one write per frame.
fn echo(mut s: TcpStream, batching: bool, io: &IoCounters) {
    let mut r = FrameReader::default();
    loop {
        if r.fill(&mut s, io).is_err() {
            return;
        }
        let from = r.position();
        let mut last = from;
        loop {
            match r.frame() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
            if !batching && write_all(&mut s, r.bytes(last, r.position()), io).is_err() {
                return;
            }
            last = r.position();
        }
        if batching && last > from && write_all(&mut s, r.bytes(from, last), io).is_err() {
            return;
        }
    }
}

// --- client -------------------------------------------------------------------

struct Conn {
    s: TcpStream,
    r: FrameReader,
}

fn open(addr: SocketAddr, knobs: &Knobs) -> Result<Conn, String> {
    let s = super::transport::connect_std(addr, knobs).map_err(|e| format!("raw-std connect {addr}: {e}"))?;
    Ok(Conn { s, r: FrameReader::default() })
}

fn call(c: &mut Conn, bodies: &Bodies, i: u64, io: &IoCounters) -> Result<(), String> {
    write_frame(&mut c.s, bodies.body(i), io).map_err(|e| format!("raw-std write: {e}"))?;
    loop {
        if let Some(reply) = c.r.frame().map_err(|e| e.to_string())? {
            return bodies.check(i, reply);
        }
        c.r.fill(&mut c.s, io).map_err(|e| format!("raw-std read: {e}"))?;
    }
}

/// Run workload `w` against `addr`.
pub fn run(
    addr: SocketAddr,
    knobs: &Knobs,
    w: &Workload,
    budget: &Budget,
    meter: &Meter,
) -> Result<ClientRun, String> {
    let bodies = Bodies::new(w.size);
    let io = IoCounters::shared();
    let client_io = || io.snapshot();
    match w.kind {
        Kind::PingPong | Kind::Large | Kind::FanIn => {
            sync_calls(w.connections(), budget, meter, &client_io, &|_| open(addr, knobs), &|c, i| {
                call(c, &bodies, i, &io)
            })
        }
        Kind::ShortConn => sync_calls(1, budget, meter, &client_io, &|_| Ok(()), &|_, i| {
            let mut c = open(addr, knobs)?;
            call(&mut c, &bodies, i, &io)
            // Dropped here: close.
        }),
        Kind::Pipeline => pipeline(addr, knobs, w, budget, meter, &bodies, &io),
    }
}

/// A window of calls on one thread: write every call the window allows
/// (one write with batching), read what has arrived, repeat.
fn pipeline(
    addr: SocketAddr,
    knobs: &Knobs,
    w: &Workload,
    budget: &Budget,
    meter: &Meter,
    bodies: &Bodies,
    io: &IoCounters,
) -> Result<ClientRun, String> {
    let mut c = open(addr, knobs)?;
    let mut p = Pipeline::new(budget, meter, w.depth());
    let mut out: Vec<u8> = Vec::with_capacity(64 << 10);
    let client_io = || io.snapshot();
    while !p.finished() {
        out.clear();
        while p.may_start() {
            let i = p.started();
            let body = bodies.body(i);
            if knobs.batching {
                out.extend_from_slice(&(body.len() as u32).to_le_bytes());
                out.extend_from_slice(body);
            } else {
                write_frame(&mut c.s, body, io).map_err(|e| format!("raw-std write: {e}"))?;
            }
        }
        if !out.is_empty() {
            write_all(&mut c.s, &out, io).map_err(|e| format!("raw-std write: {e}"))?;
        }
        if p.started.is_empty() {
            continue;
        }
        c.r.fill(&mut c.s, io).map_err(|e| format!("raw-std read: {e}"))?;
        while let Some(reply) = c.r.frame().map_err(|e| e.to_string())? {
            bodies.check(p.done, reply)?;
            p.completed(&client_io);
        }
    }
    Ok(p.into_run())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its bytes in chunks of fixed sizes.
    struct Chunks(Vec<u8>, Vec<usize>);

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let want = if self.1.is_empty() { self.0.len() } else { self.1.remove(0) };
            let n = want.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
    }

    fn framed(bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut v = Vec::new();
        for b in bodies {
            v.extend_from_slice(&(b.len() as u32).to_le_bytes());
            v.extend_from_slice(b);
        }
        v
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_in_order() {
        let bodies: Vec<Vec<u8>> =
            vec![b"a".to_vec(), vec![7u8; 100_000], Vec::new(), b"last".to_vec(), vec![9u8; 70_000]];
        let wire = framed(&bodies);
        for chunk in [1, 3, 4, 5, 4096, 65_536] {
            let mut r = Chunks(wire.clone(), vec![chunk; wire.len()]);
            let mut fr = FrameReader::default();
            let io = IoCounters::default();
            let mut got = Vec::new();
            while got.len() < bodies.len() {
                match fr.frame().unwrap() {
                    Some(b) => got.push(b.to_vec()),
                    None => fr.fill(&mut r, &io).unwrap(),
                }
            }
            assert_eq!(got, bodies, "chunk {chunk}");
            assert!(io.snapshot().reads >= (wire.len() / chunk.max(1)).min(wire.len()) as u64 / 2);
        }
    }

    #[test]
    fn an_oversized_length_is_an_error_not_an_allocation() {
        let mut wire = ((MESSAGE_BYTES_MAX + 1) as u32).to_le_bytes().to_vec();
        wire.extend_from_slice(b"xx");
        let mut fr = FrameReader::default();
        fr.fill(&mut Chunks(wire, vec![]), &IoCounters::default()).unwrap();
        assert_eq!(fr.frame().unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(fr.space().unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn write_frame_is_one_writev_and_a_valid_frame() {
        let io = IoCounters::default();
        let mut out = Vec::new();
        write_frame(&mut out, b"hello", &io).unwrap();
        assert_eq!(out, framed(&[b"hello".to_vec()]));
        assert_eq!(io.snapshot().writes, 1);
    }
}
