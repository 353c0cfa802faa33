//! axum integration: every seawall error becomes the right HTTP response, without glue.
//!
//! The mapping is [`ErrorKind`]'s: 503 with `Retry-After` when the call was refused before it
//! was sent (circuit open, no endpoints, all ejected, bulkhead full), 504 when a deadline or the
//! last per-try timeout passed, 413 for a body over its cap, 502 for anything the transport or
//! the upstream did. The body is one line of plain text naming the cause and what to do.
//!
//! Two places meet seawall errors in an axum app:
//!
//! * **A handler that calls an upstream** through a cloned seawall stack returns
//!   `Result<_, UpstreamError>` and uses `?`:
//!
//!   ```
//!   use axum::extract::State;
//!   use bytes::Bytes;
//!   use http_body_util::{BodyExt, Empty};
//!   use seawall::HttpUpstream;
//!   use seawall::axum::UpstreamError;
//!   use tower::ServiceExt;
//!
//!   async fn profile(
//!       State(users): State<HttpUpstream<String, Empty<Bytes>>>,
//!   ) -> Result<Bytes, UpstreamError> {
//!       let request = http::Request::get("http://users/profile").body(Empty::new())?;
//!       let response = users.oneshot(request).await?;
//!       Ok(response.into_body().collect().await?.to_bytes())
//!   }
//!   ```
//!
//! * **seawall layers on a route**: axum requires infallible services, so put
//!   [`HandleErrorLayer`](https://docs.rs/axum/0.8/axum/error_handling/struct.HandleErrorLayer.html)
//!   with [`handle_error`] outermost:
//!
//!   ```
//!   use std::time::Duration;
//!   use axum::{Router, error_handling::HandleErrorLayer, routing::get};
//!   use seawall::bulkhead::BulkheadLayer;
//!   use seawall::timeout::DeadlineLayer;
//!   use tower::ServiceBuilder;
//!
//!   let app: Router = Router::new().route(
//!       "/report",
//!       get(|| async { "a slow report" }).layer(
//!           ServiceBuilder::new()
//!               .layer(HandleErrorLayer::new(seawall::axum::handle_error))
//!               .layer(BulkheadLayer::new(8))
//!               .layer(DeadlineLayer::new(Duration::from_secs(2))),
//!       ),
//!   );
//!   ```
//!
//! axum applies a route's layers again for every connection, so a layer that keeps state must
//! share it between the services it builds. seawall's do: a [`Breaker`](crate::breaker::Breaker)
//! is a handle, a [`BulkheadLayer`](crate::bulkhead::BulkheadLayer) is one bound, a
//! [`RetryLayer`](crate::retry::RetryLayer) has one budget. (tower's own `ConcurrencyLimitLayer`
//! does not: under axum it limits each connection separately; its `GlobalConcurrencyLimitLayer`
//! does.)
//!
//! See `examples/axum.rs` for both in one app.

use std::fmt;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

use crate::{BoxError, ErrorKind, error_chain};

/// The response for a failed call through a seawall stack; see the [module docs](self).
///
/// # Examples
///
/// ```
/// use http::StatusCode;
/// use seawall::BoxError;
///
/// let refused: BoxError = seawall::bulkhead::Overloaded::new().into();
/// let response = seawall::axum::error_response(&refused);
/// assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
/// assert_eq!(response.headers()["retry-after"], "1");
/// ```
pub fn error_response(error: &BoxError) -> Response {
    let kind = ErrorKind::of(error.as_ref());
    let mut response = (kind.http_status(), error_chain(error.as_ref())).into_response();
    if let Some(secs) = kind.retry_after_secs() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The error handler for `HandleErrorLayer::new(seawall::axum::handle_error)`, in front of
/// seawall layers on an axum route.
pub async fn handle_error(error: BoxError) -> Response {
    error_response(&error)
}

/// A handler's error from a call through a seawall stack: `?` converts any error into it, and
/// axum answers with [`error_response`].
///
/// It is not itself a `std::error::Error`, so that every error (seawall's, hyper's, `http`'s)
/// converts into it with `?`.
pub struct UpstreamError(BoxError);

impl UpstreamError {
    /// What went wrong, as the response will report it.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::of(self.0.as_ref())
    }

    /// The underlying error.
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

impl<E: Into<BoxError>> From<E> for UpstreamError {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl fmt::Debug for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("UpstreamError").field(&self.0).finish()
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&error_chain(self.0.as_ref()))
    }
}

impl IntoResponse for UpstreamError {
    fn into_response(self) -> Response {
        error_response(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;

    use super::*;
    use crate::{CircuitOpen, DeadlineExceeded};

    #[test]
    fn an_open_circuit_is_a_503_that_says_when_to_come_back() {
        let open: BoxError = CircuitOpen::open("users".into(), Duration::from_millis(4200)).into();
        let response = error_response(&open);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
    }

    #[test]
    fn a_deadline_is_a_504_without_retry_after() {
        let error: UpstreamError = DeadlineExceeded::new(Duration::from_secs(2)).into();
        assert_eq!(error.kind(), ErrorKind::DeadlineExceeded);
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
}
