//! # mf-sim
//!
//! Seeded fault scenarios on turmoil driving the tokio driver, checked by
//! `mf_core::testing`'s invariant checker. Built by the mf-sim issue.
