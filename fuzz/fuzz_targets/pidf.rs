#![no_main]
//! See `parley_server::fuzzing::pidf`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_server::fuzzing::pidf(data));
