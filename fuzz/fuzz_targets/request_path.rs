#![no_main]
//! See `parley_server::fuzzing::request_path`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_server::fuzzing::request_path(data));
