#![no_main]
//! See `parley_server::fuzzing::digest`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_server::fuzzing::digest(data));
