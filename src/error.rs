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
                 {after:?}, then a trial call is let through"
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
