//! Bulkheads: a bound on concurrent calls to one upstream that rejects at once when full.
//!
//! This is tower's [`ConcurrencyLimit`] under a
//! [`LoadShed`], which already do exactly this: seawall only names
//! the pair. A full bulkhead fails the call at once with [`Overloaded`] instead of queueing it,
//! so one slow upstream cannot hold every task of the caller (Hystrix's semaphore isolation).
//!
//! Put the bulkhead *inside* a circuit breaker and its rejections count as breaker failures,
//! as in Hystrix, where a `SEMAPHORE_REJECTED` call counts against the circuit:
//!
//! ```
//! use std::time::Duration;
//! use seawall::breaker::{Breaker, BreakerConfig};
//! use seawall::bulkhead::BulkheadLayer;
//! use tower::{ServiceBuilder, service_fn};
//!
//! # fn main() -> Result<(), seawall::BoxError> {
//! let breaker = Breaker::new("ledger", BreakerConfig::default())?;
//! let ledger = ServiceBuilder::new()
//!     .layer(breaker.layer())          // counts bulkhead rejections as failures
//!     .layer(BulkheadLayer::new(10))   // at most 10 calls in flight, the 11th fails at once
//!     .service(service_fn(|x: u32| async move { Ok::<_, seawall::BoxError>(x) }));
//! # let _ = ledger;
//! # Ok(())
//! # }
//! ```

use tower::Layer;
use tower::limit::ConcurrencyLimit;
use tower::load_shed::LoadShed;

pub use tower::load_shed::error::Overloaded;

/// Rejects calls at once while `max_in_flight` calls are under way; see the
/// [module docs](self).
///
/// Every clone of a service built by one `layer` call shares the bound; separate `layer`
/// calls make separate bulkheads.
#[derive(Debug, Clone, Copy)]
pub struct BulkheadLayer {
    max_in_flight: usize,
}

impl BulkheadLayer {
    /// A bulkhead of `max_in_flight` concurrent calls (Hystrix's default is 10).
    pub fn new(max_in_flight: usize) -> Self {
        Self { max_in_flight }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = LoadShed<ConcurrencyLimit<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed::new(ConcurrencyLimit::new(inner, self.max_in_flight))
    }
}
