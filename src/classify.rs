//! One classifier for every layer: does a result count as a success, a failure, or neither?
//!
//! The balancer's load estimate, and later the circuit breakers, retries and metrics, all ask the
//! same [`Classify`] implementation, so they never disagree about what went wrong.
//!
//! The defaults: any error is a failure (timeouts and connection errors included); a response is a
//! success unless a protocol-aware classifier says otherwise. With the `http` feature,
//! [`HttpStatus`] counts 5xx and 429 as failures and every other status as a success.

/// What a finished call counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call worked.
    Success,
    /// The call failed; it counts against the endpoint.
    Failure,
    /// The call says nothing about the endpoint's health (for example a request the caller got
    /// wrong); it counts as neither success nor failure.
    Ignored,
}

/// Maps the result of a call to an [`Outcome`].
///
/// # Examples
///
/// A classifier for a service whose responses carry an `ok` flag:
///
/// ```
/// use seawall::classify::{Classify, Outcome};
///
/// struct Reply { ok: bool }
///
/// #[derive(Clone, Copy, Debug)]
/// struct ReplyFlag;
///
/// impl<E> Classify<Reply, E> for ReplyFlag {
///     fn classify(&self, result: Result<&Reply, &E>) -> Outcome {
///         match result {
///             Ok(reply) if reply.ok => Outcome::Success,
///             _ => Outcome::Failure,
///         }
///     }
/// }
/// assert_eq!(ReplyFlag.classify(Ok::<_, &()>(&Reply { ok: false })), Outcome::Failure);
/// ```
pub trait Classify<Res, E>: Send + Sync + 'static {
    /// Classifies one finished call.
    fn classify(&self, result: Result<&Res, &E>) -> Outcome;
}

/// The default classifier: every `Ok` is a success, every `Err` a failure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorsAreFailures;

impl<Res, E> Classify<Res, E> for ErrorsAreFailures {
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// HTTP classification: errors, 5xx and 429 are failures; every other status is a success.
///
/// # Examples
///
/// ```
/// use seawall::classify::{Classify, HttpStatus, Outcome};
///
/// let response = http::Response::builder().status(503).body(()).unwrap();
/// assert_eq!(HttpStatus.classify(Ok::<_, &()>(&response)), Outcome::Failure);
/// ```
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpStatus;

#[cfg(feature = "http")]
impl<B, E> Classify<::http::Response<B>, E> for HttpStatus {
    fn classify(&self, result: Result<&::http::Response<B>, &E>) -> Outcome {
        match result {
            Ok(response) => classify_status(response.status()),
            Err(_) => Outcome::Failure,
        }
    }
}

/// The status rule behind [`HttpStatus`]: 5xx and 429 fail, everything else succeeds.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub fn classify_status(status: ::http::StatusCode) -> Outcome {
    if status.is_server_error() || status == ::http::StatusCode::TOO_MANY_REQUESTS {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

#[cfg(all(test, feature = "http"))]
mod tests {
    use super::*;

    #[test]
    fn http_statuses() {
        for (code, outcome) in [
            (200, Outcome::Success),
            (204, Outcome::Success),
            (301, Outcome::Success),
            (404, Outcome::Success),
            (429, Outcome::Failure),
            (500, Outcome::Failure),
            (502, Outcome::Failure),
            (503, Outcome::Failure),
            (599, Outcome::Failure),
        ] {
            let status = ::http::StatusCode::from_u16(code).unwrap();
            assert_eq!(classify_status(status), outcome, "status {code}");
        }
    }

    #[test]
    fn errors_fail() {
        let r: Result<&::http::Response<()>, &&str> = Err(&"refused");
        assert_eq!(HttpStatus.classify(r), Outcome::Failure);
        assert_eq!(ErrorsAreFailures.classify(r), Outcome::Failure);
    }
}
