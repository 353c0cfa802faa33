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

/// gRPC classification: the `grpc-status` of a trailers-only response (how gRPC servers and
/// proxies report an error without a body); without one, the HTTP status rule of
/// [`HttpStatus`]. See [`classify_grpc_code`] for which codes are failures.
///
/// A `grpc-status` that arrives in the trailers of a streamed body is not seen by this
/// classifier, which decides when the response head arrives.
///
/// # Examples
///
/// ```
/// use seawall::classify::{Classify, GrpcStatus, Outcome};
///
/// let unavailable = http::Response::builder().header("grpc-status", "14").body(()).unwrap();
/// assert_eq!(GrpcStatus.classify(Ok::<_, &()>(&unavailable)), Outcome::Failure);
/// let not_found = http::Response::builder().header("grpc-status", "5").body(()).unwrap();
/// assert_eq!(GrpcStatus.classify(Ok::<_, &()>(&not_found)), Outcome::Success);
/// ```
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcStatus;

#[cfg(feature = "http")]
impl<B, E> Classify<::http::Response<B>, E> for GrpcStatus {
    fn classify(&self, result: Result<&::http::Response<B>, &E>) -> Outcome {
        let Ok(response) = result else {
            return Outcome::Failure;
        };
        let code = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        match code {
            Some(code) => classify_grpc_code(code),
            None => classify_status(response.status()),
        }
    }
}

/// The gRPC code rule behind [`GrpcStatus`]: OK succeeds; CANCELLED (1) is ignored (the caller
/// gave up); UNKNOWN (2), DEADLINE_EXCEEDED (4), RESOURCE_EXHAUSTED (8), INTERNAL (13),
/// UNAVAILABLE (14) and DATA_LOSS (15) say the server is in trouble and fail; the other codes
/// answer the request (NOT_FOUND, INVALID_ARGUMENT, …) and count as successes, as a 4xx does.
pub fn classify_grpc_code(code: u32) -> Outcome {
    match code {
        1 => Outcome::Ignored,
        2 | 4 | 8 | 13 | 14 | 15 => Outcome::Failure,
        _ => Outcome::Success,
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
    fn grpc_codes() {
        let response = |code: Option<&str>, status: u16| {
            let mut builder = ::http::Response::builder().status(status);
            if let Some(code) = code {
                builder = builder.header("grpc-status", code);
            }
            builder.body(()).unwrap()
        };
        for (code, status, outcome) in [
            (Some("0"), 200, Outcome::Success),
            (Some("1"), 200, Outcome::Ignored),
            (Some("5"), 200, Outcome::Success),
            (Some("14"), 200, Outcome::Failure),
            (Some("4"), 200, Outcome::Failure),
            (Some("13"), 200, Outcome::Failure),
            (None, 200, Outcome::Success),
            (None, 503, Outcome::Failure),
            (Some("garbage"), 200, Outcome::Success),
        ] {
            let r = response(code, status);
            assert_eq!(
                GrpcStatus.classify(Ok::<_, &()>(&r)),
                outcome,
                "{code:?} {status}"
            );
        }
    }

    #[test]
    fn errors_fail() {
        let r: Result<&::http::Response<()>, &&str> = Err(&"refused");
        assert_eq!(HttpStatus.classify(r), Outcome::Failure);
        assert_eq!(ErrorsAreFailures.classify(r), Outcome::Failure);
    }
}
