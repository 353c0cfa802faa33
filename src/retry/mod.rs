//! Retries that are safe by construction (in progress).
//!
//! This release has the two pure pieces every retry decision rests on:
//!
//! - [`RetryBudget`]: a ratio of retries to requests plus a floor per second over a TTL window
//!   (Finagle's and linkerd's budget: 20 %, 10/s, 10 s), shared by all clones, whose
//!   arithmetic is exact for every ratio;
//! - [`Backoff`]: exponential backoff with full jitter (Envoy's: 25 ms doubling, capped at
//!   250 ms).
//!
//! The retry layer that combines them with the classifier, idempotency, deadlines,
//! `Retry-After` and endpoint avoidance is the next step.

mod backoff;
mod budget;

pub use self::backoff::Backoff;
pub use self::budget::{BudgetConfig, RetryBudget};
