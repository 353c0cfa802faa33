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
}

impl BuildError {
    pub(crate) fn no_runtime() -> Self {
        Self {
            kind: BuildErrorKind::NoRuntime,
        }
    }

    /// True when the build failed because it was not called inside a Tokio runtime.
    pub fn is_no_runtime(&self) -> bool {
        matches!(self.kind, BuildErrorKind::NoRuntime)
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            BuildErrorKind::NoRuntime => f.write_str(
                "no Tokio runtime: the balancer spawns its discovery task, so build it from \
                 inside a runtime (e.g. in an async fn run by #[tokio::main])",
            ),
        }
    }
}

impl std::error::Error for BuildError {}
