use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::TimeoutRequest;
use super::timer::LazyTimer;
use crate::BoxError;
use crate::error::DeadlineExceeded;

/// When a call must be over, carried in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline at `at`.
    pub fn at(at: Instant) -> Self {
        Self(at)
    }

    /// A deadline `after` from now.
    pub fn after(after: Duration) -> Self {
        Self(Instant::now() + after)
    }

    /// The instant.
    pub fn instant(&self) -> Instant {
        self.0
    }

    /// Time left until the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// Bounds a whole call (retries included) by a deadline stored in the request.
///
/// A request that already carries an earlier deadline keeps it. With
/// [`honor_grpc_timeout`](Self::honor_grpc_timeout), an incoming `grpc-timeout` shortens it too.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "http")] {
/// use std::time::Duration;
/// use seawall::timeout::DeadlineLayer;
/// use tower::{ServiceBuilder, service_fn};
///
/// let service = ServiceBuilder::new()
///     .layer(DeadlineLayer::new(Duration::from_secs(2)))
///     .service(service_fn(|req: http::Request<()>| async move {
///         Ok::<_, seawall::BoxError>(req.extensions().get::<seawall::timeout::Deadline>().is_some())
///     }));
/// # let _ = service;
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    total: Duration,
    honor_grpc_timeout: bool,
    /// Inside an `Upstream` (see `bounded_inside`): no timer of its own, and the deadline
    /// lent to the layers below instead of stored in the request.
    inside_upstream: bool,
}

impl DeadlineLayer {
    /// A deadline `total` after each call.
    pub fn new(total: Duration) -> Self {
        Self {
            total,
            honor_grpc_timeout: false,
            inside_upstream: false,
        }
    }

    /// For a stack whose every wait is already bounded by the deadline: a retry layer (which
    /// never backs off past it) over a per-try timeout (which never gives an attempt more than
    /// the time left) over a service that is always ready. `Upstream` builds exactly that, and
    /// a second timer per call would only cost a registration in tokio's timer wheel. The
    /// deadline is lent to those layers for the call (see `lend`) instead of being stored in
    /// the request, which nothing below them reads.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn bounded_inside(mut self) -> Self {
        self.inside_upstream = true;
        self
    }

    /// Also take the deadline from an incoming `grpc-timeout` when that is shorter (for a
    /// server). Default is off.
    pub fn honor_grpc_timeout(mut self, honor: bool) -> Self {
        self.honor_grpc_timeout = honor;
        self
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            layer: *self,
        }
    }
}

/// The service of [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    layer: DeadlineLayer,
}

impl<S> DeadlineService<S> {
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

impl<S, Req> Service<Req> for DeadlineService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: TimeoutRequest,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let now = crate::clock::now();
        let mut deadline = Deadline(now + self.layer.total);
        if self.layer.honor_grpc_timeout {
            if let Some(incoming) = req.incoming_timeout() {
                deadline = deadline.min(Deadline(now + incoming));
            }
        }
        if let Some(existing) = req.deadline() {
            deadline = deadline.min(existing);
        }
        let inner = if !self.layer.inside_upstream {
            req.set_deadline(deadline);
            crate::clock::during(now, || self.inner.call(req))
        } else {
            // Inside an `Upstream`: the layers below are seawall's own and take the deadline
            // lent for this call (see `lend`), which costs no allocation.
            crate::clock::during(now, || super::lend(deadline, || self.inner.call(req)))
        };
        DeadlineFuture {
            inner: Some(inner),
            timer: (!self.layer.inside_upstream).then(|| LazyTimer::new(deadline.0)),
            deadline: deadline.0,
            started: now,
        }
    }
}

/// The future of [`DeadlineService`].
///
/// # Cancellation
///
/// Dropping it drops the inner call and the timer.
#[pin_project]
#[derive(Debug)]
pub struct DeadlineFuture<F> {
    /// `None` once the deadline has passed and the call was dropped.
    #[pin]
    inner: Option<F>,
    /// `None` when the layers inside bound every wait by the deadline.
    timer: Option<LazyTimer>,
    deadline: Instant,
    /// When the call was made: the error says how long it was given.
    started: Instant,
}

impl<F, T, E> Future for DeadlineFuture<F>
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
            let Some(timer) = this.timer.as_mut() else {
                return Poll::Pending;
            };
            ready!(timer.poll_elapsed(cx));
            // Drop the call now, flagged, so the endpoint it waits on is charged a failure.
            super::expiry::dropping_expired(|| this.inner.set(None));
        }
        let given = this.deadline.saturating_duration_since(*this.started);
        Poll::Ready(Err(DeadlineExceeded::new(given).into()))
    }
}
