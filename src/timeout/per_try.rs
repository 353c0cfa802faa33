use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project::pin_project;
use tower::{Layer, Service};

use super::timer::LazyTimer;
use super::{PropagationHeader, TimeoutRequest};
use crate::BoxError;
use crate::error::{DeadlineExceeded, TryTimeout};

/// Bounds each attempt by `min(per_try, time left before the request's deadline)` and tells
/// the next hop that time.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "http")] {
/// use std::time::Duration;
/// use seawall::timeout::{DeadlineLayer, PerTryTimeoutLayer};
/// use tower::{ServiceBuilder, service_fn};
///
/// let service = ServiceBuilder::new()
///     .layer(DeadlineLayer::new(Duration::from_secs(2)))
///     // (a retry layer goes here)
///     .layer(PerTryTimeoutLayer::new(Duration::from_millis(500)))
///     .service(service_fn(|_: http::Request<()>| async { Ok::<_, seawall::BoxError>(()) }));
/// # let _ = service;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PerTryTimeoutLayer {
    per_try: Duration,
    header: Option<PropagationHeader>,
}

impl PerTryTimeoutLayer {
    /// Each attempt may take at most `per_try`.
    pub fn new(per_try: Duration) -> Self {
        Self {
            per_try,
            header: None,
        }
    }

    /// Also send the attempt's time, in whole milliseconds, in `header` on every request
    /// (gRPC requests always get `grpc-timeout`). Default is none.
    pub fn propagate_in(mut self, header: PropagationHeader) -> Self {
        self.header = Some(header);
        self
    }
}

impl<S> Layer<S> for PerTryTimeoutLayer {
    type Service = PerTryTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PerTryTimeout {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`PerTryTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct PerTryTimeout<S> {
    inner: S,
    layer: PerTryTimeoutLayer,
}

impl<S> PerTryTimeout<S> {
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

impl<S, Req> Service<Req> for PerTryTimeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: TimeoutRequest,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = PerTryTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let now = crate::clock::now();
        let left = super::deadline_of(&req).map(|d| d.instant().saturating_duration_since(now));
        let (timeout, by_deadline) = match left {
            Some(left) if left <= self.layer.per_try => (left, true),
            _ => (self.layer.per_try, false),
        };
        if timeout.is_zero() && by_deadline {
            // No time left: do not send at all.
            return PerTryTimeoutFuture {
                inner: None,
                timer: LazyTimer::new(now),
                timeout,
                by_deadline,
            };
        }
        req.propagate_timeout(timeout, self.layer.header.as_ref());
        // Also wakes the call early for a retry layer above that asked (to hedge); taken
        // before the inner call, so no per-try timeout further in takes it first.
        let timer = LazyTimer::waking_early(now + timeout);
        PerTryTimeoutFuture {
            inner: Some(crate::clock::during(now, || self.inner.call(req))),
            timer,
            timeout,
            by_deadline,
        }
    }
}

/// The future of [`PerTryTimeout`].
///
/// # Cancellation
///
/// Dropping it drops the attempt and the timer.
#[pin_project]
#[derive(Debug)]
pub struct PerTryTimeoutFuture<F> {
    #[pin]
    inner: Option<F>,
    timer: LazyTimer,
    timeout: Duration,
    by_deadline: bool,
}

impl<F, T, E> Future for PerTryTimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(inner) = this.inner.as_mut().as_pin_mut() {
            if let Poll::Ready(result) = inner.poll(cx) {
                return Poll::Ready(result.map_err(Into::into));
            }
            ready!(this.timer.poll_elapsed(cx));
            // Drop the attempt now, flagged, so the endpoint's breaker counts a failure.
            super::expiry::dropping_expired(|| this.inner.set(None));
        }
        Poll::Ready(Err(if *this.by_deadline {
            DeadlineExceeded::new(*this.timeout).into()
        } else {
            TryTimeout::new(*this.timeout).into()
        }))
    }
}
