//! raw-tokio: the raw floor's framing (u32 length prefix) on tokio, a task
//! per connection. P5 (fan-in) is measured against it.

use crate::bench::harness::IoCounters;
use crate::bench::systems::raw_std::FrameReader;
use crate::bench::systems::transport::{CountingConnector, CountingListener, CountingRead, CountingWrite};
use crate::bench::systems::{ClientRun, Knobs, Meter, Pipeline, ServerHandle, async_calls};
use crate::bench::workloads::{Bodies, Budget, Kind, Workload};
use mf_driver_tokio::transport::{Connect, Stream};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A current-thread runtime (the bench pins threads; one runtime per side).
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())
}

/// Stops a server thread and waits for it.
pub type StopFn = Box<dyn FnOnce() + Send>;

/// Run `serve_fn` on a new thread with its own runtime until the handle is
/// dropped. `serve_fn` gets a receiver that fires at stop and returns the
/// bound address through `ready`.
pub fn spawn_server<F, Fut>(name: &str, serve_fn: F) -> Result<(SocketAddr, StopFn), String>
where
    F: FnOnce(tokio::sync::oneshot::Receiver<()>, std::sync::mpsc::Sender<Result<SocketAddr, String>>) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let t = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || match runtime() {
            Ok(rt) => rt.block_on(serve_fn(stop_rx, ready_tx)),
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| e.to_string())?;
    let addr = ready_rx.recv().map_err(|_| "server thread ended before binding".to_string())??;
    Ok((
        addr,
        Box::new(move || {
            let _ = stop_tx.send(());
            let _ = t.join();
        }),
    ))
}

/// Serve echo on `addr`: a task per connection.
pub fn serve(addr: SocketAddr, knobs: &Knobs) -> Result<ServerHandle, String> {
    let io = IoCounters::shared();
    let (io2, knobs) = (io.clone(), *knobs);
    let (addr, stop) = spawn_server("raw-tokio-server", move |stop, ready| async move {
        let listener = match CountingListener::bind(addr, knobs, io2) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("raw-tokio bind {addr}: {e}")));
                return;
            }
        };
        let _ = ready.send(listener.local_addr().map_err(|e| e.to_string()));
        let accept = async {
            loop {
                if let Ok(s) = listener.accept_counted().await {
                    let (r, w) = s.into_split();
                    tokio::spawn(echo(r, w, knobs.batching));
                }
            }
        };
        tokio::select! {
            _ = stop => {}
            _ = accept => {}
        }
    })?;
    let io_fn = io.clone();
    Ok(ServerHandle::new(addr, Arc::new(move || io_fn.snapshot()), stop))
}

async fn fill(fr: &mut FrameReader, r: &mut (impl AsyncRead + Unpin)) -> io::Result<()> {
    let n = r.read(fr.space()?).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    fr.filled(n);
    Ok(())
}

async fn echo(mut r: CountingRead, mut w: CountingWrite, batching: bool) {
    let mut fr = FrameReader::default();
    while fill(&mut fr, &mut r).await.is_ok() {
        let from = fr.position();
        let mut last = from;
        loop {
            match fr.frame() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
            if !batching && w.write_all(fr.bytes(last, fr.position())).await.is_err() {
                return;
            }
            last = fr.position();
        }
        if batching && last > from && w.write_all(fr.bytes(from, last)).await.is_err() {
            return;
        }
    }
}

async fn write_frame(w: &mut (impl AsyncWrite + Unpin), body: &[u8]) -> io::Result<()> {
    let h = (body.len() as u32).to_le_bytes();
    let mut bufs = [IoSlice::new(&h), IoSlice::new(body)];
    let mut bufs = &mut bufs[..];
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

struct Conn {
    r: CountingRead,
    w: CountingWrite,
    fr: FrameReader,
}

async fn open(c: &CountingConnector) -> Result<Conn, String> {
    let s = c.connect().await.map_err(|e| format!("raw-tokio connect: {e}"))?;
    let (r, w) = s.into_split();
    Ok(Conn { r, w, fr: FrameReader::default() })
}

async fn call(c: &mut Conn, bodies: &Bodies, i: u64) -> Result<(), String> {
    write_frame(&mut c.w, bodies.body(i)).await.map_err(|e| format!("raw-tokio write: {e}"))?;
    loop {
        if let Some(reply) = c.fr.frame().map_err(|e| e.to_string())? {
            return bodies.check(i, reply);
        }
        fill(&mut c.fr, &mut c.r).await.map_err(|e| format!("raw-tokio read: {e}"))?;
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
    let connector = CountingConnector::new(addr, *knobs, io.clone());
    let client_io = || io.snapshot();
    let rt = runtime()?;
    rt.block_on(async {
        match w.kind {
            Kind::PingPong | Kind::Large | Kind::FanIn => {
                async_calls(
                    w.connections(),
                    budget,
                    meter,
                    &client_io,
                    async |_| open(&connector).await,
                    async |c: &mut Conn, i| call(c, &bodies, i).await,
                )
                .await
            }
            Kind::ShortConn => {
                async_calls(
                    1,
                    budget,
                    meter,
                    &client_io,
                    async |_| Ok(()),
                    async |_: &mut (), i| {
                        let mut c = open(&connector).await?;
                        call(&mut c, &bodies, i).await
                    },
                )
                .await
            }
            Kind::Pipeline => {
                let mut c = open(&connector).await?;
                let mut p = Pipeline::new(budget, meter, w.depth());
                let mut out: Vec<u8> = Vec::with_capacity(64 << 10);
                while !p.finished() {
                    out.clear();
                    while p.may_start() {
                        let i = p.started();
                        let body = bodies.body(i);
                        if knobs.batching {
                            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
                            out.extend_from_slice(body);
                        } else {
                            write_frame(&mut c.w, body).await.map_err(|e| format!("raw-tokio write: {e}"))?;
                        }
                    }
                    if !out.is_empty() {
                        c.w.write_all(&out).await.map_err(|e| format!("raw-tokio write: {e}"))?;
                    }
                    if p.started.is_empty() {
                        continue;
                    }
                    fill(&mut c.fr, &mut c.r).await.map_err(|e| format!("raw-tokio read: {e}"))?;
                    while let Some(reply) = c.fr.frame().map_err(|e| e.to_string())? {
                        bodies.check(p.done, reply)?;
                        p.completed(&client_io);
                    }
                }
                Ok(p.into_run())
            }
        }
    })
}
