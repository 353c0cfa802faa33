//! Hystrix-style circuit breakers: fail fast while an upstream is failing, probe it after a
//! while, close again when it answers.
//!
//! A [`Breaker`] holds one circuit's state; [`Breaker::layer`] wraps services in a
//! [`CircuitBreaker`] that consults it. Every service built from the same `Breaker` (or a
//! clone of it) shares that one circuit.
//!
//! # Semantics
//!
//! By default the breaker follows Hystrix 1.5:
//!
//! - **Closed.** Calls flow. Successes and failures are counted in a rolling window of 10 s in
//!   10 buckets (a whole bucket rolls out at once). When the window holds at least 20 calls
//!   ([`minimum_calls`](BreakerConfig::minimum_calls)) and failures are at least 50 % of them
//!   ([`failure_rate`](BreakerConfig::failure_rate), compared with `≥`), the breaker opens.
//! - **Open.** Calls fail at once with [`CircuitOpen`](crate::CircuitOpen), which says when a
//!   trial will be allowed. After 5 s ([`open_for`](BreakerConfig::open_for)) — strictly after
//!   it, as in Hystrix and resilience4j — the next call becomes a trial.
//! - **Half-open.** Exactly [`trials`](BreakerConfig::trials) calls (default 1) are admitted
//!   across all clones; the others fail fast. All trials succeeding closes the breaker with an
//!   empty window; a trial failing, timing out or being cancelled opens it again for a fresh
//!   open period.
//!
//! What counts is decided by one [`Classify`](crate::classify::Classify) implementation: by
//! default every error (timeouts and connection failures included) is a failure; an
//! [`Ignored`](crate::classify::Outcome::Ignored) result counts as neither, and a cancelled
//! ordinary call counts as neither. Rejections by the breaker itself are not counted.
//!
//! # Where seawall differs from Hystrix, and why
//!
//! | | Hystrix | seawall |
//! | --- | --- | --- |
//! | when the trip is checked | on a health snapshot every 500 ms | on the failing call itself (as resilience4j), so a breaker opens up to 500 ms sooner |
//! | failure percentage | truncated to an integer, then `≥` | compared exactly; for whole-number thresholds the result is the same |
//! | an ignored result on a trial | re-opens (`markNonSuccess`) | frees the trial slot for another trial: a 4xx says nothing about health |
//! | several trials | one | `trials(n)`: all `n` must succeed to close |
//! | slow calls, count window, growing open duration, metrics-only | — | options from resilience4j and Finagle |
//!
//! A hung trial keeps the breaker half-open (as in Hystrix): put a timeout inside the breaker
//! so every trial ends.

mod config;
pub(crate) mod endpoint;
mod future;
mod handle;
mod layer;
mod service;
mod state;
mod window;

pub use self::config::{BreakerConfig, ConfigError, Mode, Window};
pub use self::future::ResponseFuture;
pub use self::handle::{Breaker, BreakerPermit, WindowCounts};
pub use self::layer::CircuitBreakerLayer;
pub use self::service::CircuitBreaker;
pub(crate) use self::state::EjectionBudget;
pub use self::state::{State, Transition};

/// The permit type, for the balancer's per-endpoint breakers.
pub(crate) mod state_permit {
    pub(crate) use super::state::{Ending, Permit};
}

#[cfg(any(test, fuzzing))]
pub(crate) mod fuzz_exports {
    pub(crate) use super::state::{CircuitCore as Core, Ending, Permit, Refusal};
}
