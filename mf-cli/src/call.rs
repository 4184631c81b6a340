//! `mf call ADDR MESSAGE`: one call to an `mf serve` server, or with
//! `--count N` a measured load of N calls (ping-pong, pipelined, short
//! connections or fan-in) across a real network.

use crate::bench::harness::{IoCounters, IoCounts};
use crate::bench::systems::{Meter, System, raw_std};
use crate::bench::workloads::{Budget, FAN_IN_CONNECTIONS, Kind, Workload, fmt_size, parse_size};
use crate::serve::KnobArgs;
use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `mf call`.
#[derive(Args, Debug)]
pub struct CallArgs {
    /// The server (`mf serve`).
    addr: SocketAddr,
    /// The request body. The server echoes it.
    message: String,
    /// The client: mf-mio, mf-tokio, raw-std or raw-tokio (must match the
    /// server's protocol: mf-* with mf-*, raw-* with raw-*).
    #[arg(long, default_value = "mf-mio", value_parser = System::from_name)]
    system: System,
    /// Load mode: make N calls and print latency and throughput.
    #[arg(long)]
    count: Option<u64>,
    /// Load mode's shape.
    #[arg(long, value_enum, default_value_t = Mode::PingPong)]
    mode: Mode,
    /// Load mode: request size (64, 4k, 1m; default: the message's length).
    #[arg(long, value_parser = parse_size)]
    size: Option<usize>,
    /// Load mode: give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    #[command(flatten)]
    knobs: KnobArgs,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// Sequential calls on one connection (W1).
    PingPong,
    /// Up to 256 calls outstanding on one connection (W2).
    Pipeline,
    /// Connect, one call, close (W3).
    Short,
    /// 32 connections doing ping-pong at once (W5).
    FanIn,
}

/// Make the call(s).
pub fn run(args: CallArgs) -> ExitCode {
    let knobs = args.knobs.knobs();
    let Some(count) = args.count else {
        return match one_call(&args) {
            Ok(reply) => {
                println!("{}", String::from_utf8_lossy(&reply));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    };
    let size = args.size.unwrap_or(args.message.len()).max(1);
    let kind = match args.mode {
        Mode::PingPong => Kind::PingPong,
        Mode::Pipeline => Kind::Pipeline,
        Mode::Short => Kind::ShortConn,
        Mode::FanIn => Kind::FanIn,
    };
    let w = Workload { kind, size };
    let budget = Budget {
        warmup_calls: (count / 10).min(1000),
        warmup_time: Duration::from_secs(1),
        calls_max: count,
        time: Duration::from_secs(args.seconds),
    };
    // The server is elsewhere: its syscalls are not ours to count.
    let meter = Meter::new(Arc::new(IoCounts::default));
    let run = match args.system.run(args.addr, &knobs, &w, &budget, &meter) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(m) = meter.result() else {
        eprintln!("error: the run ended before its measured phase");
        return ExitCode::FAILURE;
    };
    let secs = m.elapsed.as_secs_f64().max(1e-9);
    let q = |p: f64| run.hist.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "{} {} {} to {}: {} calls in {:.2} s, every reply checked{}",
        args.system.name(),
        kind.name(),
        fmt_size(size),
        args.addr,
        run.calls,
        secs,
        if kind == Kind::Pipeline {
            format!(", {} outstanding", w.depth())
        } else if kind == Kind::FanIn {
            format!(", {FAN_IN_CONNECTIONS} connections")
        } else {
            String::new()
        }
    );
    println!(
        "latency us: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        q(0.5),
        q(0.99),
        q(0.999),
        run.hist.max() as f64 / 1000.0
    );
    let rate = run.calls as f64 / secs;
    println!(
        "throughput: {rate:.0} calls/s, {:.1} MiB/s (requests + responses); client CPU+server-if-local {:.2} us/call; client writes {:.3}/call, reads {:.3}/call",
        rate * 2.0 * size as f64 / (1 << 20) as f64,
        m.cpu.as_secs_f64() * 1e6 / run.calls.max(1) as f64,
        m.client_io.writes as f64 / run.calls.max(1) as f64,
        m.client_io.reads as f64 / run.calls.max(1) as f64,
    );
    ExitCode::SUCCESS
}

fn one_call(args: &CallArgs) -> Result<Vec<u8>, String> {
    let knobs = args.knobs.knobs();
    let body = bytes::Bytes::from(args.message.clone().into_bytes());
    match args.system {
        System::MfMio => {
            let c = mf_driver_mio::Client::connect(
                args.addr,
                crate::bench::systems::mf_mio::client_config(&knobs),
            )
            .map_err(|e| format!("connect {}: {e}", args.addr))?;
            let reply = c.call(body).map_err(|e| format!("call: {e}"))?;
            let _ = c.close();
            Ok(reply.to_vec())
        }
        System::MfTokio => {
            let rt = crate::bench::systems::raw_tokio::runtime()?;
            rt.block_on(async {
                let connector = crate::bench::systems::transport::CountingConnector::new(
                    args.addr,
                    knobs,
                    IoCounters::shared(),
                );
                let c = mf_driver_tokio::Client::connect(
                    connector,
                    crate::bench::systems::mf_tokio::client_options(&knobs),
                )
                .await
                .map_err(|e| format!("connect {}: {e}", args.addr))?;
                let reply = c.call(0, body).await.map_err(|e| format!("call: {e}"))?;
                c.close().await;
                Ok(reply.to_vec())
            })
        }
        // Both raw systems speak the same framing.
        System::RawStd | System::RawTokio => {
            let io = IoCounters::default();
            let mut s = crate::bench::systems::transport::connect_std(args.addr, &knobs)
                .map_err(|e| format!("connect {}: {e}", args.addr))?;
            raw_std::write_frame(&mut s, &body, &io).map_err(|e| format!("write: {e}"))?;
            let mut r = raw_std::FrameReader::default();
            loop {
                if let Some(reply) = r.frame().map_err(|e| e.to_string())? {
                    return Ok(reply.to_vec());
                }
                r.fill(&mut s, &io).map_err(|e| format!("read: {e}"))?;
            }
        }
    }
}
