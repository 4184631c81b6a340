//! The two drivers against each other over real loopback TCP, through a
//! proxy that cuts every connection again and again: a tokio client against
//! a mio server, a mio client against a tokio server. The invariant checker
//! (exactly once, order per channel, every outcome) judges each run. And a
//! server restart: the session cannot resume, so everything pending fails
//! explicitly and nothing hangs.

use bytes::Bytes;
use mf_core::testing::checker::{Checker, Kind, payload, response_for};
use mf_core::{CloseCode, FailReason, Fate, seed_from_u64};
use mf_driver_mio as mio_drv;
use mf_driver_tokio as tokio_drv;
use mf_tests::{CutProxy, protocol};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

type Shared = Arc<Mutex<Checker>>;

fn mio_server(seed: u64) -> mio_drv::Server {
    let mut c = mio_drv::ServerConfig::default();
    c.protocol = protocol();
    c.workers = 1;
    c.seed = Some(seed_from_u64(seed));
    mio_drv::Server::bind("127.0.0.1:0", c).expect("bind the mio server")
}

/// The mio server application: take everything, answer every request.
fn mio_app(server: mio_drv::Server, checker: Shared, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(Ordering::Acquire) {
            // Hold the checker while taking a message: taking it lets its
            // receipt go back, and the client must not record the receipt
            // before the arrival is recorded. Only a non-blocking take runs
            // under the lock: a thread that waited while holding it (and
            // took it again at once) could starve the client's tasks of the
            // lock, and so of keep-alives, until the session expired.
            let taken = {
                let mut c = checker.lock().unwrap();
                server.try_recv().inspect(|inb| c.arrived(&inb.body))
            };
            match taken {
                Ok(inb) => {
                    if inb.is_request() {
                        let _ = server.respond(&inb, response_for(&inb.body));
                    }
                }
                Err(mio_drv::Error::Empty) => thread::sleep(Duration::from_micros(200)),
                Err(e) => panic!("mio server recv: {e}"),
            }
        }
    })
}

fn cutter(proxy: Arc<CutProxy>, cuts: usize, every: Duration) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for _ in 0..cuts {
            thread::sleep(every);
            proxy.cut_all();
        }
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn tokio_client_against_mio_server_through_cuts() {
    let checker: Shared = Arc::new(Mutex::new(Checker::new()));
    let server = mio_server(1);
    let proxy = Arc::new(CutProxy::start(server.local_addr()));
    let stop = Arc::new(AtomicBool::new(false));
    let app = mio_app(server.clone(), checker.clone(), stop.clone());
    let rt = runtime();
    let connects = rt.block_on(async {
        let options = tokio_drv::ClientOptions::new(protocol()).with_seed(seed_from_u64(2));
        let client =
            tokio_drv::Client::connect(tokio_drv::transport::TcpConnector::new(proxy.addr()), options)
                .await
                .unwrap();
        let mut waiters = Vec::new();
        for seq in 0..600u64 {
            let channel = (seq % 4) as u16;
            let extra = if seq % 50 == 7 { 3000 } else { (seq % 40) as usize };
            if seq % 3 == 0 {
                let body = payload(Kind::Request, 0, seq, channel, extra);
                // Recorded first: the server (another thread) may take it at once.
                checker.lock().unwrap().called(0, seq, channel);
                // try_call accepts synchronously, so acceptance order is seq order.
                let pending = loop {
                    match client.try_call(channel, body.clone(), None) {
                        Ok(p) => break p,
                        Err(tokio_drv::SendError::Full(_)) => {
                            tokio::time::sleep(Duration::from_millis(1)).await
                        }
                        Err(e) => panic!(
                            "call {seq}: {e}; session ended: {:?}, {} connections, {} cuts",
                            client.session_ended(),
                            client.connects(),
                            proxy.cuts()
                        ),
                    }
                };
                let checker = checker.clone();
                waiters.push(tokio::spawn(async move {
                    let r = pending.await;
                    let mut c = checker.lock().unwrap();
                    match r {
                        Ok(resp) => c.response(0, seq, &resp),
                        Err(tokio_drv::CallError::Failed(f)) => c.call_failed(0, seq, f.reason, f.fate),
                        Err(e) => panic!("call {seq}: {e}"),
                    }
                }));
            } else {
                let body = payload(Kind::Message, 0, seq, channel, extra);
                checker.lock().unwrap().sent(0, seq, channel);
                let receipt = client.send(channel, body).await.unwrap_or_else(|e| {
                    panic!(
                        "message {seq}: {e}; session ended: {:?}, {} connections",
                        client.session_ended(),
                        client.connects()
                    )
                });
                let checker = checker.clone();
                waiters.push(tokio::spawn(async move {
                    let r = receipt.await;
                    let mut c = checker.lock().unwrap();
                    match r {
                        Ok(()) => c.receipt(0, seq),
                        Err(tokio_drv::ReceiptError::Failed(f)) => c.send_failed(0, seq, f.fate),
                        Err(e) => panic!("message {seq}: {e}"),
                    }
                }));
            }
            if seq % 16 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Cut at fixed points of the workload, so the test does not
            // depend on the machine's speed.
            if seq % 50 == 25 {
                proxy.cut_all();
            }
        }
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(30), w).await.expect("an outcome never came").unwrap();
        }
        assert!(client.session_ended().is_none(), "the session must survive the cuts");
        let connects = client.connects();
        client.close().await;
        connects
    });
    stop.store(true, Ordering::Release);
    app.join().unwrap();
    let summary = checker.lock().unwrap().finish().unwrap_or_else(|v| panic!("{v:#?}"));
    println!("{summary:?}; {connects} connections, {} cut", proxy.cuts());
    assert!(proxy.cuts() >= 3, "the proxy must have cut live connections");
    assert!(connects >= 2, "the session must have resumed");
    assert_eq!(summary.responses + summary.receipts, 600, "no failures without a lost session: {summary:?}");
    server.shutdown();
}

#[test]
fn mio_client_against_tokio_server_through_cuts() {
    let checker: Shared = Arc::new(Mutex::new(Checker::new()));
    let rt = runtime();
    let server = rt.block_on(async {
        let l = tokio_drv::transport::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let options = tokio_drv::ServerOptions::new(protocol()).with_seed(seed_from_u64(3));
        (tokio_drv::Server::start(l, options).unwrap(), addr)
    });
    let (server, addr) = server;
    let app = rt.spawn({
        let (server, checker) = (server.clone(), checker.clone());
        async move {
            // As in `mio_app`: record the arrival under the checker's lock
            // taken before the message is, so its receipt cannot be recorded
            // first.
            loop {
                let taken = {
                    let mut c = checker.lock().unwrap();
                    server.try_recv().inspect(|(_, item)| c.arrived(item.body()))
                };
                match taken {
                    Some((sid, mf_core::Incoming::Request { id, body, .. })) => {
                        let _ = server.respond(sid, id, response_for(&body));
                    }
                    Some(_) => {}
                    // The test aborts this task once the server has shut down.
                    None => tokio::time::sleep(Duration::from_micros(200)).await,
                }
            }
        }
    });
    let proxy = Arc::new(CutProxy::start(addr));
    let mut config = mio_drv::ClientConfig::default();
    config.protocol = protocol();
    config.seed = Some(seed_from_u64(4));
    let client = mio_drv::Client::connect(proxy.addr(), config).unwrap();
    // One exchange first, so the session exists before any cut. A cut that
    // loses the very first HELLO and the data behind it ends the session by
    // design: the client cannot tell whether they reached the server, so it
    // resumes, and a server that never saw them answers SessionUnknown (the
    // restart test below covers that path).
    checker.lock().unwrap().called(2, 0, 0);
    let first = client.channel(0).call(payload(Kind::Request, 2, 0, 0, 0)).unwrap();
    checker.lock().unwrap().response(2, 0, &first);
    // Cuts at random moments, and at fixed points of the message workload.
    let cuts = cutter(proxy.clone(), 12, Duration::from_millis(30));

    // Messages from one thread (origin 0), calls from another (origin 1).
    let sender = thread::spawn({
        let (client, checker, proxy) = (client.clone(), checker.clone(), proxy.clone());
        move || {
            let mut receipts = Vec::new();
            for seq in 0..400u64 {
                if seq % 40 == 20 {
                    proxy.cut_all();
                }
                let channel = (seq % 3) as u16;
                let extra = if seq % 60 == 5 { 4000 } else { (seq % 40) as usize };
                checker.lock().unwrap().sent(0, seq, channel);
                let r = client.channel(channel).send(payload(Kind::Message, 0, seq, channel, extra)).unwrap();
                receipts.push((seq, r));
            }
            for (seq, r) in receipts {
                let out = r.wait();
                let mut c = checker.lock().unwrap();
                match out {
                    Ok(()) => c.receipt(0, seq),
                    Err(mio_drv::Error::SessionLost { fate, .. }) => c.send_failed(0, seq, fate),
                    Err(e) => panic!("message {seq}: {e}"),
                }
            }
        }
    });
    let caller = thread::spawn({
        let (client, checker) = (client.clone(), checker.clone());
        move || {
            for seq in 0..200u64 {
                let channel = (seq % 2) as u16;
                checker.lock().unwrap().called(1, seq, channel);
                let r = client.channel(channel).call(payload(
                    Kind::Request,
                    1,
                    seq,
                    channel,
                    (seq % 30) as usize,
                ));
                let mut c = checker.lock().unwrap();
                match r {
                    Ok(resp) => c.response(1, seq, &resp),
                    Err(mio_drv::Error::SessionLost { reason, fate, .. }) => {
                        c.call_failed(1, seq, FailReason::SessionLost(reason), fate)
                    }
                    Err(e) => panic!("call {seq}: {e}"),
                }
            }
        }
    });
    sender.join().unwrap();
    caller.join().unwrap();
    cuts.join().unwrap();
    let stats = client.stats();
    client.close().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await.expect("shutdown hung");
    });
    app.abort();
    let summary = checker.lock().unwrap().finish().unwrap_or_else(|v| panic!("{v:#?}"));
    println!("{summary:?}; resumes {}, {} cut", stats.session.resumes, proxy.cuts());
    assert!(proxy.cuts() >= 3, "the proxy must have cut live connections");
    assert!(stats.session.resumes >= 1, "the session must have resumed");
    assert_eq!(summary.receipts + summary.responses, 601, "{summary:?}");
}

/// The server behind the proxy is replaced by a fresh one (a restart that
/// lost every session): the tokio client's resume is refused, every pending
/// call and message fails explicitly with its fate, receiving ends, and new
/// sends hand the message back. Nothing hangs.
#[test]
fn tokio_client_sees_a_restarted_mio_server_as_session_lost() {
    let first = mio_server(5);
    let proxy = CutProxy::start(first.local_addr());
    let rt = runtime();
    rt.block_on(async {
        let options = tokio_drv::ClientOptions::new(protocol()).with_seed(seed_from_u64(6));
        let client =
            tokio_drv::Client::connect(tokio_drv::transport::TcpConnector::new(proxy.addr()), options)
                .await
                .unwrap();
        // Nobody serves the first server: the call and the receipt stay pending.
        let call = client.try_call(0, "pending call", None).unwrap();
        let receipt = client.send(1, "pending message").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        let second = mio_server(7);
        proxy.set_backend(second.local_addr());
        assert!(proxy.cut_all() >= 1);

        let limit = Duration::from_secs(10);
        let failure = match tokio::time::timeout(limit, call).await.expect("the call hung") {
            Err(tokio_drv::CallError::Failed(f)) => f,
            other => panic!("expected a failure, got {other:?}"),
        };
        assert!(matches!(failure.reason, FailReason::SessionLost(r) if r.code == CloseCode::SessionUnknown));
        assert_eq!(failure.fate, Fate::Unknown, "the request had reached the old server");
        match tokio::time::timeout(limit, receipt).await.expect("the receipt hung") {
            Err(tokio_drv::ReceiptError::Failed(f)) => assert_eq!(f.fate, Fate::Unknown),
            other => panic!("expected a failure, got {other:?}"),
        }
        let reason = tokio::time::timeout(limit, client.closed()).await.expect("closed() hung");
        assert_eq!(reason.code, CloseCode::SessionUnknown);
        assert!(tokio::time::timeout(limit, client.recv()).await.expect("recv hung").is_none());
        match client.send(0, "after the end").await {
            Err(tokio_drv::SendError::Closed(b)) => assert_eq!(b, Bytes::from_static(b"after the end")),
            other => panic!("expected Closed, got {other:?}"),
        }
        second.shutdown();
    });
    first.shutdown();
}
