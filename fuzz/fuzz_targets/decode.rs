#![no_main]
//! Fuzz target `decode`: see `mf_core::testing::fuzz::decode`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mf_core::testing::fuzz::decode(data));
