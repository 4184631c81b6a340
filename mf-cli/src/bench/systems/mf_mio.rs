//! mf-mio: MessageFirst's blocking driver, client and server.

use crate::bench::harness::{IoCounters, IoCounts};
use crate::bench::systems::{ClientRun, Knobs, Meter, Pipeline, ServerHandle, sync_calls};
use crate::bench::workloads::{Bodies, Budget, Kind, Workload};
use mf_driver_mio::{Client, ClientConfig, Inbound, IoStats, PendingCall, Server, ServerConfig};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

fn counts(io: &IoStats) -> IoCounts {
    IoCounts { writes: io.write_syscalls, reads: io.read_syscalls }
}

/// The client settings for `knobs`.
pub fn client_config(knobs: &Knobs) -> ClientConfig {
    let mut c = ClientConfig::default();
    c.tcp = knobs.mio_tcp();
    if !knobs.batching {
        c.write_batch_us = 0;
    }
    c
}

/// Serve echo on `addr` with one worker (the bench gives each side one CPU).
pub fn serve(addr: SocketAddr, knobs: &Knobs) -> Result<ServerHandle, String> {
    serve_workers(addr, knobs, 1)
}

/// Serve echo on `addr` with `workers` event loops (0: one per core).
pub fn serve_workers(addr: SocketAddr, knobs: &Knobs, workers: usize) -> Result<ServerHandle, String> {
    let mut config = ServerConfig::default();
    config.workers = workers;
    config.tcp = knobs.mio_tcp();
    config.tcp.reuseport = workers != 1;
    let server = Server::bind(addr, config).map_err(|e| format!("mf-mio bind {addr}: {e}"))?;
    let addr = server.local_addr();
    let s2 = server.clone();
    let t = std::thread::Builder::new()
        .name("mf-mio-serve".into())
        .spawn(move || s2.serve(|req: Inbound| req.body))
        .map_err(|e| e.to_string())?;
    let s3 = server.clone();
    Ok(ServerHandle::new(addr, Arc::new(move || counts(&s3.stats().io)), move || {
        server.shutdown();
        let _ = t.join();
    }))
}

/// Syscalls of every client a run made: live ones and closed ones.
#[derive(Default)]
struct ClientsIo {
    live: Mutex<Vec<Client>>,
    closed: IoCounters,
}

impl ClientsIo {
    fn snapshot(&self) -> IoCounts {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.iter().fold(self.closed.snapshot(), |acc, c| acc + counts(&c.stats().io))
    }

    fn retire(&self, c: &Client) {
        let io = counts(&c.stats().io);
        self.closed.writes.fetch_add(io.writes, std::sync::atomic::Ordering::Relaxed);
        self.closed.reads.fetch_add(io.reads, std::sync::atomic::Ordering::Relaxed);
    }
}

fn connect(addr: SocketAddr, knobs: &Knobs) -> Result<Client, String> {
    Client::connect(addr, client_config(knobs)).map_err(|e| format!("mf-mio connect {addr}: {e}"))
}

fn call(c: &Client, bodies: &Bodies, i: u64) -> Result<(), String> {
    let reply = c.call(bodies.body(i).clone()).map_err(|e| format!("mf-mio call: {e}"))?;
    bodies.check(i, &reply)
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
    let io = ClientsIo::default();
    let client_io = || io.snapshot();
    let result = match w.kind {
        Kind::PingPong | Kind::Large | Kind::FanIn => sync_calls(
            w.connections(),
            budget,
            meter,
            &client_io,
            &|_| {
                let c = connect(addr, knobs)?;
                io.live.lock().unwrap_or_else(|p| p.into_inner()).push(c.clone());
                Ok(c)
            },
            &|c, i| call(c, &bodies, i),
        ),
        Kind::ShortConn => sync_calls(1, budget, meter, &client_io, &|_| Ok(()), &|_, i| {
            let c = connect(addr, knobs)?;
            let r = call(&c, &bodies, i);
            let closed = c.close().map_err(|e| format!("mf-mio close: {e}"));
            io.retire(&c);
            r.and(closed)
        }),
        Kind::Pipeline => {
            let c = connect(addr, knobs)?;
            io.live.lock().unwrap_or_else(|p| p.into_inner()).push(c.clone());
            let mut p = Pipeline::new(budget, meter, w.depth());
            let mut pending: VecDeque<PendingCall> = VecDeque::new();
            while !p.finished() {
                while p.may_start() {
                    let i = p.next;
                    pending.push_back(
                        c.call_start(bodies.body(i).clone(), None)
                            .map_err(|e| format!("mf-mio call_start: {e}"))?,
                    );
                    p.started();
                }
                // Wait for the oldest call, then take every later one that
                // has also completed, so the window refills in bursts (as the
                // raw client's one read takes many responses).
                if let Some(oldest) = pending.pop_front() {
                    let reply = oldest.wait().map_err(|e| format!("mf-mio call: {e}"))?;
                    bodies.check(p.done, &reply)?;
                    p.completed(&client_io);
                }
                while let Some(reply) = pending.front_mut().and_then(|c| c.try_take()) {
                    pending.pop_front();
                    let reply = reply.map_err(|e| format!("mf-mio call: {e}"))?;
                    bodies.check(p.done, &reply)?;
                    p.completed(&client_io);
                }
            }
            Ok(p.into_run())
        }
    };
    for c in io.live.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
        let _ = c.close();
    }
    result
}
