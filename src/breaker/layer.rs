use tower::Layer;

use super::handle::Breaker;
use super::service::CircuitBreaker;
use crate::classify::ErrorsAreFailures;

/// Wraps services in a [`CircuitBreaker`] that shares one [`Breaker`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = ErrorsAreFailures> {
    breaker: Breaker,
    classify: C,
}

impl CircuitBreakerLayer<ErrorsAreFailures> {
    /// A layer over `breaker`, classifying with [`ErrorsAreFailures`].
    pub fn new(breaker: Breaker) -> Self {
        Self {
            breaker,
            classify: ErrorsAreFailures,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Classifies results with `classify` (for example
    /// [`HttpStatus`](crate::classify::HttpStatus), so a 5xx counts as a failure).
    pub fn classify<C2>(self, classify: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classify,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.breaker.clone(), self.classify.clone())
    }
}
