use std::task::{Context, Poll};

use tower::Service;

/// A service that knows its balancing weight; see [`Builder::weighted`](super::Builder::weighted).
pub trait Weight {
    /// The weight (0 is read as 1).
    fn weight(&self) -> u32;
}

/// A service paired with a balancing weight.
///
/// # Examples
///
/// ```
/// use seawall::balance::{Weight, Weighted};
/// use tower::service_fn;
///
/// let heavy = Weighted::new(service_fn(|_: ()| async { Ok::<_, seawall::BoxError>(()) }), 5);
/// assert_eq!(heavy.weight(), 5);
/// ```
#[derive(Debug, Clone)]
pub struct Weighted<S> {
    service: S,
    weight: u32,
}

impl<S> Weighted<S> {
    /// Pairs `service` with `weight` (0 is read as 1).
    pub fn new(service: S, weight: u32) -> Self {
        Self {
            service,
            weight: weight.max(1),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.service
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.service
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.service
    }
}

impl<S> Weight for Weighted<S> {
    fn weight(&self) -> u32 {
        self.weight
    }
}

impl<S: Service<Req>, Req> Service<Req> for Weighted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> S::Future {
        self.service.call(req)
    }
}
