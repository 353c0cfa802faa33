//! tonic integration: balance gRPC calls over one `Channel` per instance, and turn every seawall
//! error into the right [`Status`].
//!
//! A tonic client over seawall is the usual stack with two tonic-shaped ends:
//!
//! ```text
//! GreeterClient ─ StatusLayer ─ Deadline ─ Retry ─ per-try Timeout ─ Balance ─ breaker ─ GrpcEndpoint (Channel)
//! ```
//!
//! * [`GrpcEndpoint`] is one instance's lazily connected `Channel`, accepting any request body
//!   (the retry layer wraps bodies to replay them); map a discovery stream of instances into
//!   endpoints with [`DiscoverExt::map_service`](crate::discover::DiscoverExt::map_service).
//! * [`StatusLayer`] goes outermost: a generated client turns an error it does not recognise
//!   into `UNKNOWN`, so the layer turns seawall's errors into a [`Status`] first —
//!   `UNAVAILABLE` for a call refused before sending (circuit open, no endpoints, all ejected,
//!   bulkhead full; with `grpc-retry-pushback-ms` when a breaker knows its wait),
//!   `DEADLINE_EXCEEDED` for a deadline or per-try timeout, `RESOURCE_EXHAUSTED` for a body over
//!   its cap, and the upstream's own `Status` (or `UNAVAILABLE`) otherwise.
//! * Classify endpoints with [`GrpcStatus`](crate::classify::GrpcStatus), so a server answering
//!   `UNAVAILABLE` trips its breaker.
//! * gRPC calls are POSTs: the retry layer repeats one only when it provably never left, unless
//!   the call carries [`Idempotent`](crate::retry::Idempotent) — put it in the
//!   `tonic::Request`'s extensions for methods that are safe to repeat.
//! * The deadline travels to the server as `grpc-timeout`, shrinking from attempt to attempt.
//!
//! ```
//! use std::time::Duration;
//! use seawall::balance::{Balance, RoundRobin};
//! use seawall::classify::GrpcStatus;
//! use seawall::discover::{DiscoverExt, Registry};
//! use seawall::retry::{RetryConfig, RetryLayer};
//! use seawall::timeout::{DeadlineLayer, PerTryTimeoutLayer};
//! use seawall::tonic::{GrpcEndpoint, StatusLayer};
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! let registry = Registry::new();
//! let endpoints = registry
//!     .watch("greeter")
//!     .map_service(|instance| GrpcEndpoint::lazy(&instance));
//! let balance = Balance::builder(endpoints)
//!     .name("greeter")
//!     .picker(RoundRobin::new())
//!     .classify(GrpcStatus)
//!     .build()?;
//! let channel = ServiceBuilder::new()
//!     .layer(StatusLayer::new())
//!     .layer(DeadlineLayer::new(Duration::from_secs(2)))
//!     .layer(RetryLayer::new("greeter", RetryConfig::default()))
//!     .layer(PerTryTimeoutLayer::new(Duration::from_millis(500)))
//!     .service(balance);
//! // let client = GreeterClient::new(channel);
//! # let _ = channel;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/tonic` runs three greeter servers behind such a client.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use pin_project::pin_project;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::balance::Weight;
use crate::classify::{GrpcTrailersBody, PendingVerdict};
use crate::discover::Instance;
use crate::{BoxError, ErrorKind, error_chain};

/// The [`Status`] for a failed call through a seawall stack; see the [module docs](self).
///
/// A `Status` anywhere in the error's source chain is returned as it is (the upstream's own
/// answer); otherwise the [`ErrorKind`] names the code.
///
/// # Examples
///
/// ```
/// use seawall::BoxError;
/// use tonic::Code;
///
/// let refused: BoxError = seawall::bulkhead::Overloaded::new().into();
/// assert_eq!(seawall::tonic::to_status(&refused).code(), Code::Unavailable);
/// ```
pub fn to_status(error: &BoxError) -> Status {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(error) = cause {
        if let Some(status) = error.downcast_ref::<Status>() {
            return status.clone();
        }
        cause = error.source();
    }
    let kind = ErrorKind::of(error.as_ref());
    let code = match kind {
        ErrorKind::DeadlineExceeded | ErrorKind::TryTimeout => Code::DeadlineExceeded,
        ErrorKind::BodyTooLarge => Code::ResourceExhausted,
        _ => Code::Unavailable,
    };
    let mut status = Status::new(code, error_chain(error.as_ref()));
    if let ErrorKind::CircuitOpen {
        retry_after: Some(wait),
    } = kind
    {
        let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", millis.into());
    }
    status
}

/// Turns a service's errors into a boxed [`Status`] (by [`to_status`]), so a tonic client
/// reports the right code; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusLayer {
    _private: (),
}

impl StatusLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for StatusLayer {
    type Service = StatusService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StatusService { inner }
    }
}

/// The service [`StatusLayer`] builds.
#[derive(Debug, Clone)]
pub struct StatusService<S> {
    inner: S,
}

impl<S> StatusService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req> Service<Req> for StatusService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = StatusFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(into_status)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        StatusFuture {
            inner: self.inner.call(request),
        }
    }
}

fn into_status(error: impl Into<BoxError>) -> BoxError {
    Box::new(to_status(&error.into()))
}

/// The future of a [`StatusService`] call.
#[pin_project]
#[derive(Debug)]
pub struct StatusFuture<F> {
    #[pin]
    inner: F,
}

impl<F, T, E> Future for StatusFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(ready!(self.project().inner.poll(cx)).map_err(into_status))
    }
}

/// One instance behind a lazily connected tonic [`Channel`], as a `Balance` endpoint.
///
/// It accepts a request with any body of `Bytes` (tonic's own, or the retry layer's replayable
/// wrapper around it) and answers with tonic's body; it carries the instance's weight. The
/// channel connects on first use and reconnects by itself.
///
/// A response whose head has no `grpc-status` gets its status in the trailers: the endpoint
/// wraps every body in a [`GrpcTrailersBody`] and puts its [`PendingVerdict`] in the response,
/// so a balancer classifying with [`GrpcStatus`](crate::classify::GrpcStatus) records such a call —
/// breaker, load, metrics — by the trailers' status when the body ends. A stream that fails
/// halfway counts against its instance.
#[derive(Clone)]
pub struct GrpcEndpoint {
    /// `None` only if the address does not form a URI, which cannot happen for a socket
    /// address; calls then fail instead of going somewhere else.
    channel: Option<Channel>,
    addr: SocketAddr,
    weight: u32,
}

impl GrpcEndpoint {
    /// A lazily connected, plaintext (h2c) channel to `instance`.
    ///
    /// Call it inside a Tokio runtime (a `Balance`'s discovery task is one): the channel
    /// spawns its connection task.
    pub fn lazy(instance: &Instance) -> Self {
        Self::with_endpoint(instance, |endpoint| endpoint)
    }

    /// A lazily connected channel to `instance`, with the endpoint configured by `configure`
    /// (connect timeout, keep-alive, TLS, …).
    pub fn with_endpoint(
        instance: &Instance,
        configure: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Self {
        let addr = instance.addr();
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .ok()
            .map(|endpoint| configure(endpoint).connect_lazy());
        Self {
            channel,
            addr,
            weight: instance.weight(),
        }
    }

    /// The instance address calls go to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl fmt::Debug for GrpcEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcEndpoint")
            .field("addr", &self.addr)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

impl Weight for GrpcEndpoint {
    fn weight(&self) -> u32 {
        self.weight
    }
}

/// A `GrpcEndpoint` whose address formed no URI.
#[derive(Debug)]
struct NoChannel(SocketAddr);

impl fmt::Display for NoChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no gRPC channel: `http://{}` is not a valid URI", self.0)
    }
}

impl std::error::Error for NoChannel {}

impl<B> Service<http::Request<B>> for GrpcEndpoint
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = GrpcResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.channel {
            Some(channel) => channel.poll_ready(cx).map_err(Into::into),
            None => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match &mut self.channel {
            Some(channel) => GrpcResponseFuture {
                inner: Some(channel.call(request.map(tonic::body::Body::new))),
                addr: self.addr,
            },
            None => GrpcResponseFuture {
                inner: None,
                addr: self.addr,
            },
        }
    }
}

/// The future of a [`GrpcEndpoint`] call.
#[pin_project]
#[derive(Debug)]
pub struct GrpcResponseFuture {
    #[pin]
    inner: Option<tonic::transport::channel::ResponseFuture>,
    addr: SocketAddr,
}

impl Future for GrpcResponseFuture {
    type Output = Result<http::Response<tonic::body::Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(Box::new(NoChannel(*this.addr))));
        };
        let response = ready!(inner.poll(cx))?;
        // Let the body decide the call's verdict from its trailers; the classifier uses that
        // slot only when the head has no status (`GrpcStatus::pending`).
        let verdict = PendingVerdict::new();
        let (mut parts, body) = response.into_parts();
        parts.extensions.insert(verdict.clone());
        let body = tonic::body::Body::new(GrpcTrailersBody::new(body, verdict));
        Poll::Ready(Ok(http::Response::from_parts(parts, body)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{CircuitOpen, DeadlineExceeded};

    #[test]
    fn seawall_errors_become_their_codes() {
        let open: BoxError =
            CircuitOpen::open("greeter".into(), Duration::from_millis(1500)).into();
        let status = to_status(&open);
        assert_eq!(status.code(), Code::Unavailable);
        let pushback = status.metadata().get("grpc-retry-pushback-ms");
        assert_eq!(pushback.and_then(|v| v.to_str().ok()), Some("1500"));

        let late: BoxError = DeadlineExceeded::new(Duration::from_secs(1)).into();
        assert_eq!(to_status(&late).code(), Code::DeadlineExceeded);

        let reset: BoxError = std::io::Error::other("connection reset").into();
        assert_eq!(to_status(&reset).code(), Code::Unavailable);
    }

    #[test]
    fn the_upstreams_own_status_passes_through() {
        let denied: BoxError = Box::new(Status::permission_denied("no"));
        let status = to_status(&denied);
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.message(), "no");
    }

    #[tokio::test]
    async fn the_layer_hands_tonic_a_status() {
        use tower::ServiceExt;
        let failing = tower::service_fn(|()| async {
            Err::<(), BoxError>(DeadlineExceeded::new(Duration::from_secs(1)).into())
        });
        let error = StatusLayer::new().layer(failing).oneshot(()).await.err();
        let code = error.and_then(|e| e.downcast_ref::<Status>().map(Status::code));
        assert_eq!(code, Some(Code::DeadlineExceeded));
    }
}
