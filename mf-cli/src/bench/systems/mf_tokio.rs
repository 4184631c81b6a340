//! mf-tokio: MessageFirst's async driver, client and server, on the bench's
//! counting TCP transport.

use crate::bench::harness::IoCounters;
use crate::bench::systems::raw_tokio::{runtime, spawn_server};
use crate::bench::systems::transport::{CountingConnector, CountingListener};
use crate::bench::systems::{ClientRun, Knobs, Meter, Pipeline, ServerHandle, async_calls};
use crate::bench::workloads::{Bodies, Budget, Kind, Workload};
use futures_util::FutureExt;
use mf_driver_tokio::{Client, ClientOptions, PendingCall, Request, SendError, Server, ServerOptions};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest wait for a graceful close or shutdown at the end of a run.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Serve echo on `addr` on one current-thread runtime.
pub fn serve(addr: SocketAddr, knobs: &Knobs) -> Result<ServerHandle, String> {
    let io = IoCounters::shared();
    let (io2, knobs) = (io.clone(), *knobs);
    let (addr, stop) = spawn_server("mf-tokio-server", move |stop, ready| async move {
        let listener = match CountingListener::bind(addr, knobs, io2) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("mf-tokio bind {addr}: {e}")));
                return;
            }
        };
        let local = listener.local_addr().map_err(|e| e.to_string());
        let mut options = ServerOptions::default();
        if !knobs.batching {
            options.write_batch_us = Some(0);
        }
        let server = match Server::start(listener, options) {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(format!("mf-tokio server: {e}")));
                return;
            }
        };
        server.serve(|req: Request| async move { Ok(req.body) });
        let _ = ready.send(local);
        let _ = stop.await;
        let _ = tokio::time::timeout(CLOSE_WAIT, server.shutdown()).await;
    })?;
    let io_fn = io.clone();
    Ok(ServerHandle::new(addr, Arc::new(move || io_fn.snapshot()), stop))
}

/// The client options for `knobs`: batching off is `write_batch_us = Some(0)`.
pub fn client_options(knobs: &Knobs) -> ClientOptions {
    let mut options = ClientOptions::default();
    if !knobs.batching {
        options.write_batch_us = Some(0);
    }
    options
}

async fn connect(c: &CountingConnector, knobs: &Knobs) -> Result<Client, String> {
    Client::connect(c.clone(), client_options(knobs)).await.map_err(|e| format!("mf-tokio connect: {e}"))
}

async fn call(c: &Client, bodies: &Bodies, i: u64) -> Result<(), String> {
    let reply = c.call(0, bodies.body(i).clone()).await.map_err(|e| format!("mf-tokio call: {e}"))?;
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
    let io = IoCounters::shared();
    let connector = CountingConnector::new(addr, *knobs, io.clone());
    let client_io = || io.snapshot();
    let rt = runtime()?;
    rt.block_on(async {
        match w.kind {
            Kind::PingPong | Kind::Large | Kind::FanIn => {
                let opened: Mutex<Vec<Client>> = Mutex::new(Vec::new());
                let r = async_calls(
                    w.connections(),
                    budget,
                    meter,
                    &client_io,
                    async |_| {
                        let c = connect(&connector, knobs).await?;
                        opened.lock().unwrap_or_else(|p| p.into_inner()).push(c.clone());
                        Ok(c)
                    },
                    async |c: &mut Client, i| call(c, &bodies, i).await,
                )
                .await;
                // Close while the runtime still runs, so the server sees a
                // goodbye instead of a session waiting to resume.
                let opened = std::mem::take(&mut *opened.lock().unwrap_or_else(|p| p.into_inner()));
                for c in opened {
                    let _ = tokio::time::timeout(CLOSE_WAIT, c.close()).await;
                }
                r
            }
            Kind::ShortConn => {
                async_calls(
                    1,
                    budget,
                    meter,
                    &client_io,
                    async |_| Ok(()),
                    async |_: &mut (), i| {
                        // `start`, not `connect`: the HELLO leaves in the
                        // same write as the call (no handshake round trip),
                        // the driver's documented shape for a short-lived
                        // connection and the one mf-mio's `connect` has.
                        let c = Client::start(connector.clone(), client_options(knobs))
                            .map_err(|e| format!("mf-tokio start: {e}"))?;
                        let r = call(&c, &bodies, i).await;
                        c.close().await;
                        r
                    },
                )
                .await
            }
            Kind::Pipeline => {
                let c = connect(&connector, knobs).await?;
                let mut p = Pipeline::new(budget, meter, w.depth());
                let mut pending: VecDeque<PendingCall> = VecDeque::new();
                while !p.finished() {
                    while p.may_start() {
                        match c.try_call(0, bodies.body(p.next).clone(), None) {
                            Ok(pc) => {
                                pending.push_back(pc);
                                p.started();
                            }
                            // The session's own limit on calls in flight.
                            Err(SendError::Full(_)) if !pending.is_empty() => break,
                            Err(e) => return Err(format!("mf-tokio try_call: {e}")),
                        }
                    }
                    // The oldest, then every later one already complete.
                    if let Some(oldest) = pending.pop_front() {
                        let reply = oldest.await.map_err(|e| format!("mf-tokio call: {e}"))?;
                        bodies.check(p.done, &reply)?;
                        p.completed(&client_io);
                    }
                    while let Some(reply) = pending.front_mut().and_then(|c| c.now_or_never()) {
                        pending.pop_front();
                        let reply = reply.map_err(|e| format!("mf-tokio call: {e}"))?;
                        bodies.check(p.done, &reply)?;
                        p.completed(&client_io);
                    }
                }
                let _ = tokio::time::timeout(CLOSE_WAIT, c.close()).await;
                Ok(p.into_run())
            }
        }
    })
}
