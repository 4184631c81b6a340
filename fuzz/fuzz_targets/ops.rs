#![no_main]
//! Fuzz target `ops`: see `mf_core::testing::fuzz::ops`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mf_core::testing::fuzz::ops(data));
