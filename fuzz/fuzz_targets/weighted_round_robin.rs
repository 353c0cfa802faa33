//! Arbitrary weights: one period of the weighted order holds each endpoint weight/gcd times.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| seawall::fuzz::weighted_round_robin(data));
