//! # mf-driver-tokio
//!
//! The async MessageFirst API on tokio, generic over the transport so that
//! turmoil's simulated TCP plugs in unchanged. Built by the
//! mf-driver-tokio issue on top of `mf-core`.
