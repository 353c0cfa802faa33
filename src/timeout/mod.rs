//! Two timeouts: a per-try timeout and an overall deadline.
//!
//! The **deadline** ([`DeadlineLayer`]) sits outside retries and bounds the whole call. It is
//! stored in the request as a [`Deadline`] (for HTTP: in the extensions), so every layer
//! below sees how much time is left. The **per-try timeout** ([`PerTryTimeoutLayer`]) sits
//! inside retries and gives each attempt `min(per_try, time left)`; when the deadline is the
//! shorter, the attempt fails with [`DeadlineExceeded`](crate::DeadlineExceeded) (do not
//! retry), otherwise with [`TryTimeout`](crate::TryTimeout) (retry if the request is safe to
//! repeat).
//!
//! The time an attempt may take is propagated downstream: as `grpc-timeout` on gRPC requests,
//! and optionally in a header of your choice on plain HTTP, so servers stop working on calls
//! nobody waits for. On the server side, [`DeadlineLayer::honor_grpc_timeout`] sets the
//! deadline from an incoming `grpc-timeout`.
//!
//! A timer starts when a layer's `call` is made, not when the future is first polled.

mod deadline;
pub(crate) mod expiry;
mod per_try;
mod timer;

pub use self::deadline::{Deadline, DeadlineFuture, DeadlineLayer, DeadlineService};
pub use self::per_try::{PerTryTimeout, PerTryTimeoutFuture, PerTryTimeoutLayer};

use std::time::Duration;

/// A request that can carry a [`Deadline`] and propagate a timeout downstream.
///
/// Implemented for `http::Request<B>` (with the `http` feature); implement it for your own
/// request types to use the timeout layers with them.
pub trait TimeoutRequest {
    /// The deadline the request carries, if any.
    fn deadline(&self) -> Option<Deadline>;

    /// Stores a deadline in the request.
    fn set_deadline(&mut self, deadline: Deadline);

    /// A timeout the request arrived with (for HTTP: a `grpc-timeout` header), if any.
    fn incoming_timeout(&self) -> Option<Duration> {
        None
    }

    /// Tells the next hop how long it has (for HTTP: `grpc-timeout` on gRPC requests, and
    /// `header` as whole milliseconds on any request when given).
    fn propagate_timeout(&mut self, timeout: Duration, header: Option<&PropagationHeader>) {
        let _ = (timeout, header);
    }
}

/// A header that carries the remaining time, in whole milliseconds, on plain HTTP requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropagationHeader {
    #[cfg(feature = "http")]
    pub(crate) name: ::http::HeaderName,
    #[cfg(not(feature = "http"))]
    pub(crate) name: String,
}

impl PropagationHeader {
    /// A header by name, e.g. `x-request-timeout-ms`.
    #[cfg(feature = "http")]
    pub fn new(name: ::http::HeaderName) -> Self {
        Self { name }
    }
}

#[cfg(feature = "http")]
impl<B> TimeoutRequest for ::http::Request<B> {
    fn deadline(&self) -> Option<Deadline> {
        self.extensions().get::<Deadline>().copied()
    }

    fn set_deadline(&mut self, deadline: Deadline) {
        self.extensions_mut().insert(deadline);
    }

    fn incoming_timeout(&self) -> Option<Duration> {
        let value = self
            .headers()
            .get(&crate::http::headers::GRPC_TIMEOUT)?
            .to_str()
            .ok()?;
        crate::http::headers::parse_grpc_timeout(value)
    }

    fn propagate_timeout(&mut self, timeout: Duration, header: Option<&PropagationHeader>) {
        use ::http::HeaderValue;
        let is_grpc = self
            .headers()
            .get(::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if is_grpc {
            let value = crate::http::headers::format_grpc_timeout(timeout);
            if let Ok(value) = HeaderValue::from_str(&value) {
                self.headers_mut()
                    .insert(crate::http::headers::GRPC_TIMEOUT.clone(), value);
            }
        }
        if let Some(header) = header {
            self.headers_mut().insert(
                header.name.clone(),
                HeaderValue::from(timeout.as_millis() as u64),
            );
        }
    }
}
