//! Retries that are safe by construction.
//!
//! [`RetryLayer`] retries an HTTP (or gRPC) request when that is safe and worthwhile:
//!
//! - **A request that provably never reached a server** — [`NoEndpoints`](crate::NoEndpoints),
//!   [`CircuitOpen`](crate::CircuitOpen), [`AllEjected`](crate::AllEjected), a full bulkhead,
//!   a refused connection — is retried whatever its method.
//! - **Otherwise only an idempotent request** (GET, HEAD, OPTIONS, PUT, DELETE, TRACE, or one
//!   carrying the [`Idempotent`] marker) is retried, and only on an outcome another try may
//!   fix: a per-try timeout, a connection broken after sending, 502/503/504, 429 with
//!   `Retry-After`, gRPC UNAVAILABLE. A POST that got a 503 is never sent twice.
//!
//! Retries are bounded by attempts (3, the first included), by a [`RetryBudget`] shared by
//! every service of the layer (20 % of requests plus 10/s), and by the request's
//! [`Deadline`](crate::timeout::Deadline): no retry starts whose wait would outlive it. Waits
//! follow [`Backoff`] (full jitter), unless the server asked for one with `Retry-After` or
//! `grpc-retry-pushback-ms`. Bodies are kept for replay by [`ReplayBody`](crate::http::ReplayBody)
//! up to a cap; past it the request is sent once and not retried ([`NotRetried`]).
//! A retry prefers an endpoint this request has not tried yet when a [`Balance`](crate::balance::Balance)
//! below has one.
//!
//! # Why not `tower::retry`
//!
//! tower's `Retry` drives the inner `call` itself, so a policy cannot tell the balancer which
//! endpoints to avoid for this request; seawall's service wraps that synchronous call to do so
//! without a lock or an allocation on the common path. The decision itself is the pure
//! function [`decide`], tested rule by rule.

mod attempt;
mod backoff;
mod budget;
mod decide;
#[cfg(feature = "http")]
mod service;

pub(crate) use self::attempt::{active as retry_active, avoids, record_pick};
pub use self::backoff::Backoff;
pub use self::budget::{BudgetConfig, RetryBudget};
pub use self::decide::{RetryClass, ServerHint, Situation, StopReason, decide};
#[cfg(feature = "http")]
pub use self::service::{Idempotent, NotRetried, Retry, RetryConfig, RetryFuture, RetryLayer};
