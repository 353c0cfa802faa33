//! ReplayBody under arbitrary chunking, caps and partial first attempts, against the original.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| seawall::fuzz::replay_body(data));
