#![no_main]
//! Fuzz target `endpoint`: see `mf_core::testing::fuzz::endpoint`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mf_core::testing::fuzz::endpoint(data));
