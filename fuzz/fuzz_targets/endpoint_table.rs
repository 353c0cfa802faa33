//! Arbitrary inserts and removes on the balancer's endpoint table, checked against a model.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| seawall::fuzz::endpoint_table(data));
