//! seawall's integration tests: one binary (each extra binary links the whole graph again).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod alloc;
#[cfg(feature = "axum")]
mod axum;
mod balance;
mod breaker;
mod churn;
#[cfg(feature = "http")]
mod cluster;
#[cfg(all(feature = "serde", feature = "http"))]
mod config;
#[cfg(feature = "dns")]
mod dns;
mod ejection;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "http")]
mod h1;
mod health;
#[cfg(feature = "http")]
mod http;
mod metrics;
mod p2c;
mod polling;
mod registry;
#[cfg(feature = "http")]
mod retry;
#[cfg(feature = "http")]
mod server;
mod support;
#[cfg(feature = "http")]
mod timeout;
#[cfg(feature = "tonic")]
mod tonic;
#[cfg(feature = "http")]
mod upstream;

// The example cluster's gateway and instances, tested in `cluster`; each uses only part of
// them.
#[cfg(feature = "http")]
#[path = "../../examples/cluster/gateway.rs"]
#[allow(dead_code)]
mod gateway;
#[cfg(feature = "http")]
#[path = "../../examples/cluster/instance.rs"]
#[allow(dead_code)]
mod instance;

// The axum example's app, driven by `axum`.
#[cfg(feature = "axum")]
#[path = "../../examples/axum.rs"]
#[allow(dead_code)]
mod axum_example;

// The tonic example's servers and client, driven by `tonic`.
#[cfg(feature = "tonic")]
#[path = "../../examples/tonic/main.rs"]
#[allow(dead_code)]
mod tonic_example;

#[global_allocator]
static ALLOCATOR: support::CountingAllocator = support::CountingAllocator;
