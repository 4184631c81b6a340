//! Test support shared by the core's tests, the fuzz targets and `mf-sim`
//! (feature `testing`).
//!
//! - [`net`]: a seeded simulated network ([`SimNet`]) with latency, random
//!   write splitting, and faults at any byte offset;
//! - [`checker`]: the contract's invariants over a run's history;
//! - [`scenario`]: seeded random workloads and faults ([`scenario::run`]) and
//!   fuzzable operation sequences ([`scenario::run_ops`]);
//! - [`fuzz`]: the bodies of the cargo-fuzz targets, so `cargo test` can
//!   replay the committed corpora through the very same code.

pub mod checker;
pub mod fuzz;
pub mod net;
pub mod scenario;

pub use checker::Checker;
pub use net::{Dir, NetConfig, NetEvent, SimNet};
pub use scenario::{Harness, ScenarioConfig};
