//! The crate's error types.
//!
//! Services return [`BoxError`]; every cause seawall produces is a small public type that callers
//! match with `downcast_ref`, never by message text.

use std::fmt;
use std::sync::Arc;

/// The error type at every seawall service boundary, as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A call failed at once because the balancer has no endpoint to send it to.
///
/// Discovery has published no instance (or all were removed). The request was never sent, so it
/// is always safe to retry, on any method.
///
/// # Examples
///
/// ```
/// # use seawall::{BoxError, NoEndpoints};
/// fn is_no_endpoints(error: &BoxError) -> bool {
///     error.downcast_ref::<NoEndpoints>().is_some()
/// }
/// ```
#[derive(Debug, Clone)]
pub struct NoEndpoints {
    upstream: Arc<str>,
}

impl NoEndpoints {
    pub(crate) fn new(upstream: Arc<str>) -> Self {
        Self { upstream }
    }

    /// The name of the upstream (the balancer's name) that had no endpoints.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }
}

impl fmt::Display for NoEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no endpoints for upstream `{}`: discovery has published no live instance; \
             check that instances are registered and heartbeating",
            self.upstream
        )
    }
}

impl std::error::Error for NoEndpoints {}

/// A seawall service could not be built.
#[derive(Debug)]
pub struct BuildError {
    kind: BuildErrorKind,
}

#[derive(Debug)]
enum BuildErrorKind {
    NoRuntime,
    Config(crate::breaker::ConfigError),
    Invalid(&'static str, &'static str),
}

impl BuildError {
    pub(crate) fn no_runtime() -> Self {
        Self {
            kind: BuildErrorKind::NoRuntime,
        }
    }

    pub(crate) fn config(error: crate::breaker::ConfigError) -> Self {
        Self {
            kind: BuildErrorKind::Config(error),
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: &'static str) -> Self {
        Self {
            kind: BuildErrorKind::Invalid(field, reason),
        }
    }

    /// The configuration field that was out of range, if that is why the build failed.
    pub fn field(&self) -> Option<&str> {
        match &self.kind {
            BuildErrorKind::Config(error) => Some(error.field()),
            BuildErrorKind::Invalid(field, _) => Some(field),
            BuildErrorKind::NoRuntime => None,
        }
    }

    /// True when the build failed because it was not called inside a Tokio runtime.
    pub fn is_no_runtime(&self) -> bool {
        matches!(self.kind, BuildErrorKind::NoRuntime)
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BuildErrorKind::NoRuntime => f.write_str(
                "no Tokio runtime: the balancer spawns its discovery task, so build it from \
                 inside a runtime (e.g. in an async fn run by #[tokio::main])",
            ),
            BuildErrorKind::Config(error) => error.fmt(f),
            BuildErrorKind::Invalid(field, reason) => {
                write!(f, "invalid balancer config: `{field}` {reason}")
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// A call was rejected at once because its circuit breaker is open.
///
/// The request was never sent, so it is safe to retry on any method — after
/// [`retry_after`](Self::retry_after), or on another upstream.
///
/// # Examples
///
/// ```
/// # use seawall::{BoxError, CircuitOpen};
/// fn when_to_retry(error: &BoxError) -> Option<std::time::Duration> {
///     error.downcast_ref::<CircuitOpen>()?.retry_after()
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    breaker: Arc<str>,
    kind: CircuitOpenKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CircuitOpenKind {
    Open(std::time::Duration),
    TrialsBusy,
    Forced,
}

impl CircuitOpen {
    pub(crate) fn open(breaker: Arc<str>, retry_after: std::time::Duration) -> Self {
        Self {
            breaker,
            kind: CircuitOpenKind::Open(retry_after),
        }
    }

    pub(crate) fn trials_busy(breaker: Arc<str>) -> Self {
        Self {
            breaker,
            kind: CircuitOpenKind::TrialsBusy,
        }
    }

    pub(crate) fn forced(breaker: Arc<str>) -> Self {
        Self {
            breaker,
            kind: CircuitOpenKind::Forced,
        }
    }

    /// The name of the breaker that rejected the call.
    pub fn breaker(&self) -> &str {
        &self.breaker
    }

    /// How long until the breaker admits a trial call, when that is known: `None` while a
    /// half-open trial is deciding, or while the breaker is forced open.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self.kind {
            CircuitOpenKind::Open(after) => Some(after),
            CircuitOpenKind::TrialsBusy | CircuitOpenKind::Forced => None,
        }
    }

    /// True when an operator forced the circuit open.
    pub fn is_forced(&self) -> bool {
        self.kind == CircuitOpenKind::Forced
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.breaker;
        match self.kind {
            CircuitOpenKind::Open(after) => write!(
                f,
                "circuit `{name}` is open after too many failures: calls fail fast for another \
                 {after:.1?}, then a trial call is let through"
            ),
            CircuitOpenKind::TrialsBusy => write!(
                f,
                "circuit `{name}` is half-open and its trial calls are under way: calls fail fast \
                 until they succeed (closing it) or fail (opening it again)"
            ),
            CircuitOpenKind::Forced => write!(
                f,
                "circuit `{name}` was forced open by an operator: calls fail until it is reset"
            ),
        }
    }
}

impl std::error::Error for CircuitOpen {}

/// A call failed at once because every endpoint of the balancer is ejected by its circuit
/// breaker and panic mode is off (`panic_threshold(0.0)`).
///
/// The request was never sent, so it is safe to retry on any method, later.
#[derive(Debug, Clone)]
pub struct AllEjected {
    upstream: Arc<str>,
}

impl AllEjected {
    pub(crate) fn new(upstream: Arc<str>) -> Self {
        Self { upstream }
    }

    /// The name of the upstream whose endpoints are all ejected.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }
}

impl fmt::Display for AllEjected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "every endpoint of upstream `{}` is ejected after failing: calls fail fast until a \
             trial call succeeds; check the instances' health",
            self.upstream
        )
    }
}

impl std::error::Error for AllEjected {}

/// The request's deadline passed: the call, retries included, took too long.
///
/// Do not retry: the caller has stopped waiting. Maps to HTTP 504 and gRPC
/// `DEADLINE_EXCEEDED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineExceeded {
    after: std::time::Duration,
}

impl DeadlineExceeded {
    pub(crate) fn new(after: std::time::Duration) -> Self {
        Self { after }
    }

    /// The time the call (or the last attempt) was given.
    pub fn after(&self) -> std::time::Duration {
        self.after
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "deadline exceeded after {:?}: the caller stopped waiting; raise the deadline or \
             find out why the upstream is slow",
            self.after
        )
    }
}

impl std::error::Error for DeadlineExceeded {}

/// One attempt took longer than its per-try timeout (the request's deadline still had time).
///
/// A retry may go to another endpoint if the request is safe to repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TryTimeout {
    after: std::time::Duration,
}

impl TryTimeout {
    pub(crate) fn new(after: std::time::Duration) -> Self {
        Self { after }
    }

    /// The time the attempt was given.
    pub fn after(&self) -> std::time::Duration {
        self.after
    }
}

impl fmt::Display for TryTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "attempt timed out after {:?}; an idempotent request may be retried on another \
             endpoint",
            self.after
        )
    }
}

impl std::error::Error for TryTimeout {}

/// What went wrong with a call through a seawall stack, in the terms a caller acts on.
///
/// [`ErrorKind::of`] walks an error's [`source`](std::error::Error::source) chain and names
/// the first cause seawall knows, so a [`CircuitOpen`] wrapped by a retry layer's error is
/// still a `CircuitOpen`. Everything else is [`Upstream`](ErrorKind::Upstream): the call
/// reached the transport and it, or the upstream, failed.
///
/// This one mapping is what the `axum` and `tonic` helpers and the example gateway answer
/// with:
///
/// | kind | HTTP | gRPC | never sent? |
/// | --- | --- | --- | --- |
/// | `CircuitOpen` | 503 + `Retry-After` (time until the trial call) | `UNAVAILABLE` | yes |
/// | `NoEndpoints` | 503 + `Retry-After: 1` | `UNAVAILABLE` | yes |
/// | `AllEjected` | 503 + `Retry-After: 1` | `UNAVAILABLE` | yes |
/// | `Overloaded` (a full bulkhead) | 503 + `Retry-After: 1` | `UNAVAILABLE` | yes |
/// | `DeadlineExceeded` | 504 | `DEADLINE_EXCEEDED` | no |
/// | `TryTimeout` | 504 | `DEADLINE_EXCEEDED` | no |
/// | `BodyTooLarge` | 413 | `RESOURCE_EXHAUSTED` | no |
/// | `Upstream` | 502 | the `Status` in the chain, else `UNAVAILABLE` | no |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use seawall::{BoxError, ErrorKind, NoEndpoints};
///
/// fn describe(error: &BoxError) -> &'static str {
///     match ErrorKind::of(error.as_ref()) {
///         kind if kind.never_sent() => "refused before sending: safe to try again later",
///         ErrorKind::DeadlineExceeded | ErrorKind::TryTimeout => "too slow",
///         _ => "failed upstream",
///     }
/// }
///
/// let timeout: BoxError = std::io::Error::other("connection reset").into();
/// assert_eq!(describe(&timeout), "failed upstream");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A circuit breaker rejected the call ([`CircuitOpen`]).
    CircuitOpen {
        /// How long until the breaker lets a trial call through, when known.
        retry_after: Option<std::time::Duration>,
    },
    /// The balancer had no endpoint ([`NoEndpoints`]).
    NoEndpoints,
    /// Every endpoint was ejected by its breaker ([`AllEjected`]).
    AllEjected,
    /// A bulkhead was full ([`Overloaded`](crate::bulkhead::Overloaded)).
    Overloaded,
    /// The request's deadline passed ([`DeadlineExceeded`]).
    DeadlineExceeded,
    /// The last attempt hit its per-try timeout ([`TryTimeout`]).
    TryTimeout,
    /// The request body was over a size cap (`http_body_util::LengthLimitError`).
    BodyTooLarge,
    /// The transport or the upstream failed: connection refused or reset, protocol error, …
    Upstream,
}

impl ErrorKind {
    /// Names the first cause in `error`'s source chain that seawall knows.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if let Some(kind) = Self::known(error) {
                return kind;
            }
            cause = error.source();
        }
        Self::Upstream
    }

    /// The kind of `error` itself, if seawall knows it (its sources are not looked at).
    pub(crate) fn known(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        if let Some(open) = error.downcast_ref::<CircuitOpen>() {
            return Some(Self::CircuitOpen {
                retry_after: open.retry_after(),
            });
        }
        let kind = if error.is::<NoEndpoints>() {
            Self::NoEndpoints
        } else if error.is::<AllEjected>() {
            Self::AllEjected
        } else if error.is::<crate::bulkhead::Overloaded>() {
            Self::Overloaded
        } else if error.is::<DeadlineExceeded>() {
            Self::DeadlineExceeded
        } else if error.is::<TryTimeout>() {
            Self::TryTimeout
        } else if is_length_limit(error) {
            Self::BodyTooLarge
        } else {
            return None;
        };
        Some(kind)
    }

    /// True when the request provably never left this process: the call was refused before
    /// sending, so trying again later (or elsewhere) is safe for any method.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            Self::CircuitOpen { .. } | Self::NoEndpoints | Self::AllEjected | Self::Overloaded
        )
    }

    /// How long a client should wait before trying again, for the kinds answered with 503:
    /// the breaker's own wait when it knows it (at least one second), else one second.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        const SECOND: std::time::Duration = std::time::Duration::from_secs(1);
        match self {
            Self::CircuitOpen { retry_after } => {
                Some(retry_after.map_or(SECOND, |d| d.max(SECOND)))
            }
            Self::NoEndpoints | Self::AllEjected | Self::Overloaded => Some(SECOND),
            _ => None,
        }
    }

    /// [`retry_after`](Self::retry_after) as a `Retry-After` header value: whole seconds,
    /// rounded up.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after()
            .map(|wait| (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
    }

    /// The HTTP status a proxy or handler should answer with; see the table above.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Self::CircuitOpen { .. } | Self::NoEndpoints | Self::AllEjected | Self::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::DeadlineExceeded | Self::TryTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Upstream => StatusCode::BAD_GATEWAY,
        }
    }
}

#[cfg(feature = "http")]
fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    error.is::<http_body_util::LengthLimitError>()
}

#[cfg(not(feature = "http"))]
fn is_length_limit(_: &(dyn std::error::Error + 'static)) -> bool {
    false
}

/// An error and its causes as one line, `: `-separated, skipping a cause whose text the line
/// already contains (many errors repeat their source in their own message): for a log line or
/// the body of an error response.
///
/// # Examples
///
/// ```
/// use seawall::{BoxError, error_chain};
///
/// let error: BoxError = "upstream `users` failed".into();
/// assert_eq!(error_chain(error.as_ref()), "upstream `users` failed");
/// ```
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let next = error.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = error.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug)]
    struct Wrapped(BoxError);

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("retry gave up")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(self.0.as_ref())
        }
    }

    fn kind(error: impl Into<BoxError>) -> ErrorKind {
        ErrorKind::of(error.into().as_ref())
    }

    #[test]
    fn each_cause_is_named_even_when_wrapped() {
        let open = CircuitOpen::open("users".into(), Duration::from_millis(2500));
        assert_eq!(
            kind(Wrapped(open.into())),
            ErrorKind::CircuitOpen {
                retry_after: Some(Duration::from_millis(2500))
            }
        );
        assert_eq!(kind(NoEndpoints::new("u".into())), ErrorKind::NoEndpoints);
        assert_eq!(kind(AllEjected::new("u".into())), ErrorKind::AllEjected);
        assert_eq!(
            kind(crate::bulkhead::Overloaded::new()),
            ErrorKind::Overloaded
        );
        assert_eq!(
            kind(Wrapped(
                DeadlineExceeded::new(Duration::from_secs(2)).into()
            )),
            ErrorKind::DeadlineExceeded
        );
        assert_eq!(
            kind(TryTimeout::new(Duration::from_secs(1))),
            ErrorKind::TryTimeout
        );
        assert_eq!(kind(std::io::Error::other("reset")), ErrorKind::Upstream);
    }

    #[test]
    fn never_sent_kinds_carry_a_retry_after_of_at_least_a_second() {
        let open = ErrorKind::CircuitOpen {
            retry_after: Some(Duration::from_millis(200)),
        };
        assert!(open.never_sent());
        assert_eq!(open.retry_after(), Some(Duration::from_secs(1)));
        let later = ErrorKind::CircuitOpen {
            retry_after: Some(Duration::from_millis(4200)),
        };
        assert_eq!(later.retry_after(), Some(Duration::from_millis(4200)));
        assert_eq!(later.retry_after_secs(), Some(5));
        let zero = ErrorKind::CircuitOpen {
            retry_after: Some(Duration::ZERO),
        };
        assert_eq!(zero.retry_after_secs(), Some(1));
        assert!(!ErrorKind::DeadlineExceeded.never_sent());
        assert_eq!(ErrorKind::Upstream.retry_after(), None);
    }

    #[test]
    fn the_error_chain_names_each_cause_once() {
        let error = Wrapped(std::io::Error::other("connection reset").into());
        assert_eq!(error_chain(&error), "retry gave up: connection reset");
    }

    #[cfg(feature = "http")]
    #[test]
    fn http_statuses_follow_the_table() {
        use http::StatusCode;
        assert_eq!(
            ErrorKind::NoEndpoints.http_status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ErrorKind::TryTimeout.http_status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(ErrorKind::Upstream.http_status(), StatusCode::BAD_GATEWAY);
    }

    #[cfg(feature = "http")]
    #[tokio::test]
    async fn a_body_over_its_limit_is_too_large() {
        use http_body_util::{BodyExt, Full, Limited};
        let body = Limited::new(Full::new(bytes::Bytes::from_static(b"12345")), 4);
        let error = body.collect().await.err();
        let kind = error.map(|e| ErrorKind::of(e.as_ref()));
        assert_eq!(kind, Some(ErrorKind::BodyTooLarge));
        assert_eq!(
            ErrorKind::BodyTooLarge.http_status(),
            http::StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
