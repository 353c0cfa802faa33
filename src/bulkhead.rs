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

use std::sync::Arc;

use tokio::sync::Semaphore;
use tower::Layer;
use tower::limit::ConcurrencyLimit;
use tower::load_shed::LoadShed;

pub use tower::load_shed::error::Overloaded;

/// Rejects calls at once while `max_in_flight` calls are under way; see the
/// [module docs](self).
///
/// One `BulkheadLayer` is one bulkhead: every service it builds, by any number of `layer`
/// calls, and every clone of those, shares its bound, as does every clone of the layer. This
/// matters under axum, which applies a route's layers again for every connection: a bound per
/// `layer` call would be a bound per connection. Make a second `BulkheadLayer` for a second
/// bulkhead.
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    permits: Arc<Semaphore>,
    max_in_flight: usize,
}

impl BulkheadLayer {
    /// A bulkhead of `max_in_flight` concurrent calls (Hystrix's default is 10).
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        }
    }

    /// The bound this bulkhead was made with.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Calls that could start now: `max_in_flight` minus the calls under way.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = LoadShed<ConcurrencyLimit<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed::new(ConcurrencyLimit::with_semaphore(
            inner,
            Arc::clone(&self.permits),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt, service_fn};

    #[tokio::test]
    async fn services_from_separate_layer_calls_share_one_bound() {
        let bulkhead = BulkheadLayer::new(1);
        let make = || {
            bulkhead.layer(service_fn(|()| async {
                std::future::pending::<Result<(), crate::BoxError>>().await
            }))
        };
        let (mut first, mut second) = (make(), make());
        let held = first.ready().await.map(|s| s.call(()));
        assert!(held.is_ok());
        assert_eq!(bulkhead.available(), 0);
        let refused = second.ready().await.map(|s| s.call(()));
        let error = match refused {
            Ok(call) => call.await.err(),
            Err(error) => Some(error),
        };
        assert!(error.is_some_and(|e| e.is::<Overloaded>()));
        // The permit comes back when the call ends (and the refused service, whose readiness
        // check left a place in the queue, goes away).
        drop((held, first, second));
        assert_eq!(bulkhead.available(), 1);
    }
}
