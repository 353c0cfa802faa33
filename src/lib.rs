//! seawall keeps calls between services alive when instances die, stall or flood.
//!
//! It is a set of [Tower] middleware for calling one *logical service* that runs as many
//! *instances*: a load balancer fed by a discovery stream ([`balance::Balance`]), discovery
//! sources ([`discover`]), circuit breakers ([`breaker`], standalone and per endpoint),
//! bulkheads ([`bulkhead`]), active health checks ([`health`]), deadlines and per-try
//! timeouts ([`timeout`]) and safe retries ([`retry`]), composed in one path:
//!
//! ```text
//! caller (axum handler, tonic client, gateway proxy)
//!   └─ Deadline ............................ one budget for the whole call, retries included
//!       └─ Retry ........................... classify → budget → backoff → again
//!           └─ per-try Timeout
//!               └─ Balance ................. picks one live endpoint (RoundRobin | LeastConn | P2c)
//!                   ├─ endpoint "a": breaker ─ load tracking ─ S (hyper client, tonic Channel, …)
//!                   └─ … kept current by a discovery stream (Change::Insert / Change::Remove)
//! ```
//!
//! # Quick start
//!
//! Balance over three instances registered in the in-process [`discover::Registry`]:
//!
//! ```
//! use std::time::Duration;
//! use seawall::balance::{Balance, RoundRobin};
//! use seawall::discover::{DiscoverExt, Instance, Registry};
//! use tower::{service_fn, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! let registry = Registry::new();
//! for (id, port) in [("users-1", 9001), ("users-2", 9002), ("users-3", 9003)] {
//!     let addr = ([127, 0, 0, 1], port).into();
//!     registry.register("users", Instance::new(id, addr), Duration::from_secs(10))?;
//! }
//!
//! // Turn each discovered instance into a service. Here: a function that echoes its address;
//! // with the `http` feature, `seawall::http::HttpEndpoints` gives pooled hyper clients instead.
//! let discover = registry.watch("users").map_service(|instance| {
//!     let addr = instance.addr();
//!     service_fn(move |_req: ()| async move { Ok::<_, seawall::BoxError>(addr.port()) })
//! });
//!
//! let mut users = Balance::builder(discover)
//!     .picker(RoundRobin::new())
//!     .wait_for_endpoints(Duration::from_secs(1))
//!     .build()?;
//!
//! let mut ports = Vec::new();
//! for _ in 0..6 {
//!     ports.push(users.ready().await?.call(()).await?);
//! }
//! ports.sort();
//! assert_eq!(ports, [9001, 9001, 9002, 9002, 9003, 9003]);
//! # Ok(())
//! # }
//! ```
//!
//! # Chapters
//!
//! [`guide::layer_order`] (why this order), [`guide::errors`] (every error and the status it
//! becomes under axum and tonic), [`guide::backpressure`] (what `poll_ready` means per layer,
//! and layers under axum) and [`mod@metrics`] (every series).
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `http` | yes | [`http::HttpEndpoints`]: `Balance` endpoints over one shared hyper-util client, or over HTTP/1.1 connections of each endpoint's own driven by the calling task; [`http::Http1Server`], the serving side of HTTP/1.1 with the service run inline; HTTP status classification |
//! | `serde` | yes | [`mod@config`]: `Deserialize` for every configuration (TOML, YAML, JSON), durations like `"250ms"`, errors that name the field |
//! | `axum` | no | `seawall::axum`: seawall errors as axum responses, a `HandleErrorLayer` handler |
//! | `dns` | no | [`discover::dns`]: A/AAAA and SRV discovery (hickory-resolver), looked up again at the records' TTL within bounds |
//! | `etcd` | no | [`discover::etcd`]: discovery from an etcd key prefix (list, watch, reconnect, re-list after compaction) and lease-based registration; building it needs protoc |
//! | `tonic` | no | `seawall::tonic`: balance over one tonic `Channel` per instance, errors as `tonic::Status` |
//!
//! # Metrics
//!
//! Every metric seawall emits goes through the [`metrics`](https://docs.rs/metrics) facade; the
//! names, types and labels are listed in [`mod@metrics`].
//!
//! [Tower]: https://docs.rs/tower
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
pub mod balance;
pub mod breaker;
pub mod bulkhead;
pub mod classify;
mod clock;
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub mod config;
pub mod discover;
mod error;
pub mod health;

/// Chapters on how the pieces fit together, beyond any one item's documentation.
///
/// * [`layer_order`](guide::layer_order): which layer goes where, and what breaks otherwise.
/// * [`errors`](guide::errors): every error, whether the request left, and the HTTP status or
///   gRPC code it becomes under axum and tonic.
/// * [`backpressure`](guide::backpressure): what `poll_ready` means for each layer, and where to
///   put layers under axum.
/// * [`mod@crate::metrics`]: every series, its type and labels.
pub mod guide {
    #[doc = include_str!("docs/layer_order.md")]
    pub mod layer_order {}
    #[doc = include_str!("docs/errors.md")]
    pub mod errors {}
    #[doc = include_str!("docs/backpressure.md")]
    pub mod backpressure {}
}
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
pub mod metrics;
pub mod retry;
mod rng;
pub mod timeout;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod tonic;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
mod upstream;
mod window;

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz;

/// The breaker's internals, for the fuzz harness only.
#[cfg(any(test, fuzzing))]
mod breaker_fuzz {
    pub(crate) use crate::breaker::fuzz_exports::{Core, Ending, Permit, Refusal};
}

#[cfg(feature = "http")]
pub use upstream::{HttpUpstream, Upstream};

pub use error::{
    AllEjected, BoxError, BuildError, CircuitOpen, DeadlineExceeded, ErrorKind, NoEndpoints,
    TryTimeout, error_chain,
};

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(all(doctest, feature = "http"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
