//! `mf serve ADDR`: an echo server of any bench system, so that `mf call`
//! (or another machine's bench client) can measure across a real network.

use crate::bench::systems::{Knobs, System, mf_mio};
use clap::Args;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

/// Arguments of `mf serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 0.0.0.0:7000 (port 0 picks one; the
    /// chosen address is printed).
    addr: SocketAddr,
    /// The server: mf-mio, mf-tokio, raw-std (length-prefixed echo, a thread
    /// per connection) or raw-tokio.
    #[arg(long, default_value = "mf-mio", value_parser = System::from_name)]
    system: System,
    /// mf-mio worker event loops (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    #[command(flatten)]
    knobs: KnobArgs,
}

/// TCP knobs on the command line (`serve` and `call`).
#[derive(Args, Debug, Clone)]
pub struct KnobArgs {
    /// Turn TCP_NODELAY off.
    #[arg(long)]
    no_nodelay: bool,
    /// Set TCP_QUICKACK on new sockets.
    #[arg(long)]
    quickack: bool,
    /// SO_SNDBUF in bytes.
    #[arg(long)]
    send_buffer_bytes: Option<usize>,
    /// SO_RCVBUF in bytes.
    #[arg(long)]
    recv_buffer_bytes: Option<usize>,
    /// One write per message (no batching).
    #[arg(long)]
    no_batching: bool,
}

impl KnobArgs {
    /// The knobs.
    pub fn knobs(&self) -> Knobs {
        Knobs {
            nodelay: !self.no_nodelay,
            quickack: self.quickack,
            send_buffer_bytes: self.send_buffer_bytes,
            recv_buffer_bytes: self.recv_buffer_bytes,
            batching: !self.no_batching,
        }
    }
}

/// Serve until killed.
pub fn run(args: ServeArgs) -> ExitCode {
    let knobs = args.knobs.knobs();
    let server = match args.system {
        System::MfMio => mf_mio::serve_workers(args.addr, &knobs, args.workers),
        s => s.serve(args.addr, &knobs, None),
    };
    match server {
        Ok(server) => {
            println!("mf serve: {} echo server listening on {}", args.system.name(), server.addr);
            let _ = std::io::stdout().flush();
            server.run_forever()
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
