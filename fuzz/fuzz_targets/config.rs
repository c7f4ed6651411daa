#![no_main]
//! See `parley_server::fuzzing::config`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_server::fuzzing::config(data));
