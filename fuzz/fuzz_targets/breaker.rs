//! The circuit breaker's state machine against a reference model.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    seawall::fuzz::breaker(data);
});
