//! HTTP glue: balance HTTP requests over discovered instances.
//!
//! [`HttpEndpoints`] turns a discovery stream of addresses (or [`Instance`]s) into a stream of
//! [`HttpEndpoint`]s. With [`HttpEndpoints::new`] they all share one hyper-util `Client`
//! (HTTP/1 and HTTP/2, any connector; connections pooled per instance address). With
//! [`HttpEndpoints::http1`] each endpoint keeps HTTP/1.1 connections of its own and the
//! caller's task drives them: no pool lookup, no connection task, no per-request hand-off;
//! about a third fewer instructions per request proxied by the example gateway
//! ([`Http1Config`] says more). Either way responses come with a [`ResponseBody`].
//!
//! For the other side of a proxy, [`Http1Server`] serves HTTP/1.1 connections with a tower
//! service run inline in each connection's task, the request body read straight from the
//! connection ([`RequestBody`]); the example gateway is built from both.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use seawall::balance::{Balance, LeastConn};
//! use seawall::classify::HttpStatus;
//! use seawall::discover::Registry;
//! use seawall::http::{HttpEndpoints, default_client};
//! use tower::ServiceExt;
//!
//! # async fn run(registry: Registry) -> Result<(), seawall::BoxError> {
//! let client = default_client::<Empty<Bytes>>();
//! let users = Balance::builder(HttpEndpoints::new(client, registry.watch("users")))
//!     .name("users")
//!     .picker(LeastConn::new())
//!     .classify(HttpStatus)
//!     .weighted()
//!     .build()?;
//! let request = http::Request::get("/users/42").body(Empty::new())?;
//! let response = users.clone().oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pin_project::pin_project;
use tower::Service;
use tower::discover::Change;

pub(crate) mod h1;
pub mod headers;
mod pool;
mod replay;
mod server;

pub use self::h1::ExchangeError;
pub use self::pool::{ConnectError, Http1Config};
pub use self::replay::{BodyNotReplayable, DEFAULT_REPLAY_CAP, ReplayBody};
pub use self::server::{Connection, Http1Server, RequestBody, ServeError};

use self::pool::Http1Pool;

use crate::BoxError;
use crate::balance::Weight;
use crate::discover::Instance;

/// A hyper-util client with seawall's defaults: HTTP/1.1 with a connection pool per address,
/// `TCP_NODELAY` on, idle connections closed after 90 s.
pub fn default_client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build(connector)
}

/// One instance, called through a shared hyper-util client ([`new`](Self::new)) or over
/// HTTP/1.1 connections of its own ([`http1`](Self::http1)).
///
/// A call rewrites the request's scheme and authority to `http://<instance address>` and keeps
/// its path and query (an absent or `*` path becomes `/`). A `Host` header already on the request is
/// left alone (virtual hosts keep working); without one, the client sets it to the instance
/// address.
///
/// Which to use: the shared client speaks HTTP/2 too and takes any hyper-util connector;
/// the endpoint's own connections are HTTP/1.1 over plain TCP only, and cheaper per request
/// (no pool lookup, no task spawned per request; see [`Http1Config`]).
pub struct HttpEndpoint<B> {
    transport: Transport<B>,
    /// `None` only if the address does not form an authority, which cannot happen for a
    /// socket address; calls then fail instead of going somewhere else.
    authority: Option<Authority>,
    addr: SocketAddr,
    weight: u32,
}

/// How an endpoint reaches its instance.
enum Transport<B> {
    /// Shared behind an `Arc`: the balancer clones an endpoint per call, and a client clone
    /// is several reference counts.
    Shared(Arc<Client<HttpConnector, B>>),
    Own(Arc<Http1Pool>),
}

impl<B> Clone for Transport<B> {
    fn clone(&self) -> Self {
        match self {
            Self::Shared(client) => Self::Shared(Arc::clone(client)),
            Self::Own(pool) => Self::Own(Arc::clone(pool)),
        }
    }
}

impl<B> HttpEndpoint<B> {
    /// An endpoint for `instance` over `client`.
    pub fn new(client: Client<HttpConnector, B>, instance: &Instance) -> Self {
        Self::with(Transport::Shared(Arc::new(client)), instance)
    }

    fn with(transport: Transport<B>, instance: &Instance) -> Self {
        let addr = instance.addr();
        let authority = Authority::try_from(addr.to_string()).ok();
        Self {
            transport,
            authority,
            addr,
            weight: instance.weight(),
        }
    }

    /// The instance address requests go to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl<B> HttpEndpoint<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// An endpoint for `instance` with HTTP/1.1 connections of its own.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use seawall::discover::Instance;
    /// use seawall::http::{Http1Config, HttpEndpoint};
    ///
    /// let instance = Instance::new("users-1", "127.0.0.1:8081".parse().unwrap());
    /// let endpoint =
    ///     HttpEndpoint::<http_body_util::Empty<bytes::Bytes>>::http1(&instance, Http1Config::default());
    /// assert_eq!(endpoint.addr(), instance.addr());
    /// # }
    /// ```
    pub fn http1(instance: &Instance, config: Http1Config) -> Self {
        Self::with(
            Transport::Own(Http1Pool::new(instance.addr(), config)),
            instance,
        )
    }
}

impl<B> Clone for HttpEndpoint<B> {
    fn clone(&self) -> Self {
        Self {
            transport: self.transport.clone(),
            authority: self.authority.clone(),
            addr: self.addr,
            weight: self.weight,
        }
    }
}

impl<B> fmt::Debug for HttpEndpoint<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("addr", &self.addr)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

impl<B> Weight for HttpEndpoint<B> {
    fn weight(&self) -> u32 {
        self.weight
    }
}

impl<B> Service<http::Request<B>> for HttpEndpoint<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<ResponseBody>;
    type Error = BoxError;
    type Future = HttpResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The pooled client is always ready; it queues for a connection inside the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<B>) -> HttpResponseFuture {
        let client = match &self.transport {
            Transport::Shared(client) => client,
            Transport::Own(pool) => {
                return HttpResponseFuture {
                    inner: Inner::Own(Box::pin(Arc::clone(pool).send(request))),
                };
            }
        };
        let Some(authority) = &self.authority else {
            let error = format!(
                "instance address {} is not a valid URI authority",
                self.addr
            );
            return HttpResponseFuture {
                inner: Inner::Failed(Some(error.into())),
            };
        };
        let inner = match rewrite(request.uri(), authority) {
            Ok(uri) => {
                *request.uri_mut() = uri;
                Inner::Sent(client.request(request))
            }
            Err(error) => Inner::Failed(Some(error.into())),
        };
        HttpResponseFuture { inner }
    }
}

/// Points `uri` at `authority` over plain HTTP, keeping its path and query.
fn rewrite(uri: &Uri, authority: &Authority) -> Result<Uri, http::Error> {
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query(origin_path(uri))
        .build()
}

/// Whether RFC 9110 (9.2.2) calls the method idempotent: sending it twice has the effect of
/// sending it once, so a retry, a hedge or a resend on a fresh connection is safe.
pub(crate) fn idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The path and query an upstream request carries: only an origin-form path can follow an
/// authority or start an HTTP/1.1 request line, so `*` and empty paths become `/`.
fn origin_path(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .filter(|p| p.path().starts_with('/'))
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// The future of an [`HttpEndpoint`] call.
#[pin_project]
pub struct HttpResponseFuture {
    #[pin]
    inner: Inner,
}

/// The response of the endpoint's own connections: the exchange is an `async fn`, whose
/// future cannot be named.
type OwnFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<h1::Incoming>, BoxError>> + Send>>;

#[pin_project(project = InnerProj)]
enum Inner {
    /// The request is on its way (shared client).
    Sent(#[pin] hyper_util::client::legacy::ResponseFuture),
    /// The request is on its way (the endpoint's own connections).
    Own(OwnFuture),
    /// The request could not be sent.
    Failed(Option<BoxError>),
}

impl fmt::Debug for HttpResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HttpResponseFuture")
    }
}

impl Future for HttpResponseFuture {
    type Output = Result<http::Response<ResponseBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Sent(future) => Poll::Ready(
                ready!(future.poll(cx))
                    .map(|response| response.map(ResponseBody::hyper))
                    .map_err(Into::into),
            ),
            InnerProj::Own(future) => Poll::Ready(
                ready!(future.as_mut().poll(cx)).map(|response| response.map(ResponseBody::own)),
            ),
            InnerProj::Failed(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "http endpoint future polled after completion".into()))),
        }
    }
}

/// The body of a response from an [`HttpEndpoint`]: streamed as it arrives.
///
/// Over [`HttpEndpoint::http1`] the body reads from the connection the request went out on,
/// and gives the connection back to the endpoint when the body has ended; dropping the body
/// before its end closes that connection instead. Pass it on (it implements
/// [`http_body::Body`]) or collect it:
///
/// ```no_run
/// use http_body_util::BodyExt;
/// use seawall::http::ResponseBody;
///
/// # async fn run(response: http::Response<ResponseBody>) -> Result<(), seawall::BoxError> {
/// let bytes = response.into_body().collect().await?.to_bytes();
/// println!("{} bytes", bytes.len());
/// # Ok(())
/// # }
/// ```
pub struct ResponseBody {
    inner: BodyInner,
}

enum BodyInner {
    Hyper(Incoming),
    Own(h1::Incoming),
}

impl ResponseBody {
    fn hyper(body: Incoming) -> Self {
        Self {
            inner: BodyInner::Hyper(body),
        }
    }

    fn own(body: h1::Incoming) -> Self {
        Self {
            inner: BodyInner::Own(body),
        }
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl http_body::Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BodyError>>> {
        match &mut self.get_mut().inner {
            BodyInner::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| BodyError::response(e.into())),
            BodyInner::Own(body) => body
                .poll_frame(cx)
                .map_err(|e| BodyError::response(e.into())),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            BodyInner::Hyper(body) => body.is_end_stream(),
            BodyInner::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            BodyInner::Hyper(body) => body.size_hint(),
            BodyInner::Own(body) => body.size_hint(),
        }
    }
}

/// A body broke off: the connection failed or the peer broke the framing it
/// announced. The message is incomplete; [`source`](std::error::Error::source) says why.
#[derive(Debug)]
pub struct BodyError {
    source: BoxError,
    /// A [`RequestBody`] (read from a client) rather than a response body.
    request: bool,
}

impl BodyError {
    fn response(source: BoxError) -> Self {
        Self {
            source,
            request: false,
        }
    }

    fn request(source: BoxError) -> Self {
        Self {
            source,
            request: true,
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let which = if self.request { "request" } else { "response" };
        write!(
            f,
            "the {which} body broke off ({}); the {which} is incomplete",
            self.source
        )
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// An active health check that sends `GET <path>` to each instance and counts any 2xx as
/// healthy, over a small pooled client of its own (so probes never queue behind traffic).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use seawall::http::{HttpEndpoint, http_health_check};
///
/// let check = http_health_check::<String, http_body_util::Empty<bytes::Bytes>>("/health")
///     .interval(Duration::from_secs(2))
///     .rise(2)
///     .fall(3);
/// # let _ = check;
/// ```
pub fn http_health_check<K, B>(path: &str) -> crate::health::HealthCheck<K, HttpEndpoint<B>> {
    let client = default_client::<http_body_util::Empty<bytes::Bytes>>();
    let path = PathAndQuery::try_from(path).unwrap_or_else(|_| PathAndQuery::from_static("/"));
    crate::health::HealthCheck::new(move |_: &K, endpoint: &HttpEndpoint<B>| {
        let client = client.clone();
        let uri = endpoint.authority.clone().and_then(|authority| {
            Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority)
                .path_and_query(path.clone())
                .build()
                .ok()
        });
        Box::pin(async move {
            let Some(uri) = uri else { return false };
            let Ok(request) = http::Request::get(uri).body(http_body_util::Empty::new()) else {
                return false;
            };
            matches!(client.request(request).await, Ok(response) if response.status().is_success())
        })
    })
}

/// Maps a discovery stream of addresses or [`Instance`]s to [`HttpEndpoint`]s over one client.
#[pin_project]
pub struct HttpEndpoints<D, B> {
    #[pin]
    discover: D,
    make: MakeEndpoint<B>,
}

enum MakeEndpoint<B> {
    Shared(Arc<Client<HttpConnector, B>>),
    Own(Http1Config),
}

impl<D, B> HttpEndpoints<D, B> {
    /// Endpoints for every instance `discover` publishes, all sharing `client`.
    pub fn new(client: Client<HttpConnector, B>, discover: D) -> Self {
        Self {
            discover,
            make: MakeEndpoint::Shared(Arc::new(client)),
        }
    }

    /// Endpoints for every instance `discover` publishes, each with HTTP/1.1 connections of
    /// its own ([`HttpEndpoint::http1`]).
    pub fn http1(config: Http1Config, discover: D) -> Self {
        Self {
            discover,
            make: MakeEndpoint::Own(config),
        }
    }
}

impl<D: fmt::Debug, B> fmt::Debug for HttpEndpoints<D, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpoints")
            .field("discover", &self.discover)
            .finish_non_exhaustive()
    }
}

impl<D, K, V, E, B> Stream for HttpEndpoints<D, B>
where
    D: Stream<Item = Result<Change<K, V>, E>>,
    V: Into<Instance>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Item = Result<Change<K, HttpEndpoint<B>>, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let next = ready!(this.discover.poll_next(cx));
        Poll::Ready(next.map(|item| {
            item.map(|change| match change {
                Change::Insert(key, value) => {
                    let instance = value.into();
                    let endpoint = match &*this.make {
                        MakeEndpoint::Shared(client) => {
                            HttpEndpoint::with(Transport::Shared(Arc::clone(client)), &instance)
                        }
                        MakeEndpoint::Own(config) => HttpEndpoint::http1(&instance, config.clone()),
                    };
                    Change::Insert(key, endpoint)
                }
                Change::Remove(key) => Change::Remove(key),
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_keeps_path_and_query() {
        let authority = Authority::from_static("127.0.0.1:9001");
        let cases = [
            ("/users/42?x=1", "http://127.0.0.1:9001/users/42?x=1"),
            ("http://users.internal/a", "http://127.0.0.1:9001/a"),
            ("https://other:443/b?c", "http://127.0.0.1:9001/b?c"),
            ("*", "http://127.0.0.1:9001/"),
        ];
        for (input, expected) in cases {
            let uri: Uri = input.parse().unwrap();
            assert_eq!(
                rewrite(&uri, &authority).unwrap().to_string(),
                expected,
                "{input}"
            );
        }
    }
}
