//! The time headers' parsers: `grpc-timeout`, `Retry-After`, `grpc-retry-pushback-ms`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| seawall::fuzz::headers(data));
