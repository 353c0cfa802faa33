//! seawall's integration tests: one binary (each extra binary links the whole graph again).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod alloc;
mod balance;
mod breaker;
mod churn;
mod ejection;
mod health;
#[cfg(feature = "http")]
mod http;
mod metrics;
mod p2c;
mod polling;
mod registry;
#[cfg(feature = "http")]
mod retry;
mod support;
#[cfg(feature = "http")]
mod timeout;
#[cfg(feature = "http")]
mod upstream;

#[global_allocator]
static ALLOCATOR: support::CountingAllocator = support::CountingAllocator;
