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

use std::cell::Cell;
use std::time::Duration;

thread_local! {
    /// The deadline an [`Upstream`](crate::Upstream)'s call lends to the layers of its own
    /// stack while it makes its inner call.
    static LENT: Cell<Option<Deadline>> = const { Cell::new(None) };
}

/// Runs `call` with `deadline` lent to the seawall layers it reaches synchronously, then
/// restores what was there (also when `call` panics).
///
/// Only an [`Upstream`](crate::Upstream)'s deadline lends instead of storing the deadline in
/// the request: the layers below it are seawall's own, and inserting into a request's empty
/// extensions map costs three allocations. Retries and hedges, sent later from a future,
/// carry the deadline in their extensions as usual.
#[inline]
pub(crate) fn lend<T>(deadline: Deadline, call: impl FnOnce() -> T) -> T {
    crate::clock::lend(&LENT, deadline, call)
}

thread_local! {
    /// An instant a retry layer wants its call woken at (to hedge), lent while it makes an
    /// attempt's `call`, and whether a per-try timeout below took it over.
    static WAKE: Cell<Option<(tokio::time::Instant, bool)>> = const { Cell::new(None) };
    /// A per-try timeout's timer fired early, at an instant taken over with [`take_wake`].
    static WOKE: Cell<bool> = const { Cell::new(false) };
}

/// Makes `call` with `at` offered to a per-try timeout it reaches synchronously, which then
/// also wakes the task at `at` (one timer where there would be two); returns whether one did.
/// The caller learns that the instant has come from [`woke`] after polling the attempt.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
#[inline]
pub(crate) fn wake_at<T>(at: tokio::time::Instant, call: impl FnOnce() -> T) -> (T, bool) {
    crate::clock::lend(&WAKE, (at, false), || {
        let made = call();
        let taken = WAKE.with(|slot| slot.get().is_some_and(|(_, taken)| taken));
        (made, taken)
    })
}

/// For a timer due at `due`: an earlier instant a layer above asked to be woken at, now this
/// timer's to keep (once per offer).
#[inline]
fn take_wake(due: tokio::time::Instant) -> Option<tokio::time::Instant> {
    WAKE.with(|slot| match slot.get() {
        Some((at, false)) if at < due => {
            slot.set(Some((at, true)));
            Some(at)
        }
        _ => None,
    })
}

/// Whether a timer that took over a wake-up instant fired during the polls since the last
/// look (and forgets it).
#[cfg_attr(not(feature = "http"), allow(dead_code))]
#[inline]
pub(crate) fn woke() -> bool {
    WOKE.with(|woke| woke.replace(false))
}

/// The request's deadline: the earlier of the one it carries and the one lent to this call.
#[inline]
pub(crate) fn deadline_of<R: TimeoutRequest + ?Sized>(request: &R) -> Option<Deadline> {
    let lent = LENT.with(Cell::get);
    match (request.deadline(), lent) {
        (Some(carried), Some(lent)) => Some(carried.min(lent)),
        (carried, lent) => carried.or(lent),
    }
}

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

#[cfg(all(test, feature = "http"))]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    fn request(carried: Option<Deadline>) -> ::http::Request<()> {
        let mut request = ::http::Request::new(());
        if let Some(deadline) = carried {
            request.extensions_mut().insert(deadline);
        }
        request
    }

    #[tokio::test(start_paused = true)]
    async fn a_lent_deadline_is_seen_only_inside_the_call_and_the_earlier_one_wins() {
        let soon = Deadline::after(Duration::from_millis(100));
        let later = Deadline::after(Duration::from_secs(1));
        assert_eq!(
            deadline_of(&request(None)),
            None,
            "nothing lent outside a call"
        );
        let inside = lend(later, || {
            let nested = lend(soon, || deadline_of(&request(None)));
            (
                deadline_of(&request(None)),
                nested,
                deadline_of(&request(Some(soon))),
            )
        });
        assert_eq!(inside, (Some(later), Some(soon), Some(soon)));
        assert_eq!(
            lend(soon, || deadline_of(&request(Some(later)))),
            Some(soon)
        );
        assert_eq!(deadline_of(&request(None)), None, "restored after the call");
        let _ = std::panic::catch_unwind(|| lend(soon, || panic!("inner call")));
        assert_eq!(deadline_of(&request(None)), None, "restored after a panic");
    }

    #[tokio::test(start_paused = true)]
    async fn a_per_try_timeout_inside_a_lent_deadline_gives_the_attempt_only_the_time_left() {
        // An attempt that never answers, under a 1 s per-try timeout and a lent 100 ms deadline.
        let hang = tower::service_fn(|_: ::http::Request<()>| {
            std::future::pending::<Result<(), crate::BoxError>>()
        });
        let mut per_try = PerTryTimeoutLayer::new(Duration::from_secs(1)).layer(hang);
        per_try.ready().await.unwrap();
        let started = tokio::time::Instant::now();
        let deadline = Deadline::after(Duration::from_millis(100));
        let attempt = lend(deadline, || per_try.call(request(None)));
        let error = attempt.await.unwrap_err();
        assert!(error.is::<crate::DeadlineExceeded>(), "{error}");
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }
}
