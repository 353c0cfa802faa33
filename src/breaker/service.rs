use std::task::{Context, Poll};

use tower::Service;

use super::future::ResponseFuture;
use super::handle::Breaker;
use crate::BoxError;
use crate::classify::Classify;

/// A service that fails fast with [`CircuitOpen`](crate::CircuitOpen) while its breaker is
/// open, and reports every result to the breaker.
///
/// `poll_ready` is the inner service's; the breaker decides in `call`, so a rejection is an
/// immediate error, never a `Pending` that waits for the circuit.
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S, C> {
    inner: S,
    breaker: Breaker,
    classify: C,
}

impl<S, C> CircuitBreaker<S, C> {
    /// Wraps `inner`, reporting to `breaker` with `classify`.
    pub fn new(inner: S, breaker: Breaker, classify: C) -> Self {
        Self {
            inner,
            breaker,
            classify,
        }
    }

    /// The breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.breaker.acquire() {
            Ok(permit) => ResponseFuture::admitted(
                self.inner.call(req),
                self.breaker.clone(),
                self.classify.clone(),
                permit,
                self.breaker.start(),
            ),
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}
