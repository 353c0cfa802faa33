//! One classifier for every layer: does a result count as a success, a failure, or neither?
//!
//! The balancer's load estimate, and later the circuit breakers, retries and metrics, all ask the
//! same [`Classify`] implementation, so they never disagree about what went wrong.
//!
//! The defaults: any error is a failure (timeouts and connection errors included); a response is a
//! success unless a protocol-aware classifier says otherwise. With the `http` feature,
//! [`HttpStatus`] counts 5xx and 429 as failures and every other status as a success.
//!
//! Some verdicts arrive after the response head: a gRPC server streams its `grpc-status` in the
//! trailers. An endpoint whose body can see them puts a [`PendingVerdict`] in the response's
//! extensions and wraps its body (as [`GrpcTrailersBody`] does for gRPC); a classifier that
//! finds no verdict in the head hands that slot back from [`Classify::pending`], and the
//! balancer then records the call — breaker, load estimate, metrics, in-flight count — when the
//! body ends (its verdict task does, moments after), not when the head arrives.
//! [`tonic::GrpcEndpoint`](crate::tonic::GrpcEndpoint) and [`GrpcStatus`] do this together.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

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

    /// When the response head does not hold the verdict, the slot the response's body will
    /// decide (see the [module docs](self)); the call is then recorded when the body ends.
    /// The default, and any response without a slot: `None`, decide from the head.
    fn pending(&self, response: &Res) -> Option<PendingVerdict> {
        let _ = response;
        None
    }
}

/// The verdict on a call that its response head did not decide, shared between the body that
/// will decide it and the balancer that records it; see the [module docs](self).
///
/// The first decision stands. A body dropped before it decided should
/// [`abandon`](Self::abandon) the verdict (as [`GrpcTrailersBody`] does): the balancer then
/// counts the call as cancelled.
///
/// # Examples
///
/// ```
/// use seawall::classify::{Outcome, PendingVerdict};
///
/// let verdict = PendingVerdict::new();
/// assert_eq!(verdict.decided(), None);
/// verdict.decide(Outcome::Failure);
/// verdict.decide(Outcome::Success); // the first verdict stands
/// assert_eq!(verdict.decided(), Some(Outcome::Failure));
/// ```
#[derive(Clone, Default)]
pub struct PendingVerdict(Arc<Mutex<Verdict>>);

#[derive(Default)]
struct Verdict {
    settled: Option<Settled>,
    /// Told this call's number when the verdict settles: the balancer's recorder.
    watcher: Option<(tokio::sync::mpsc::UnboundedSender<u64>, u64)>,
}

/// How a pending verdict ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Decided, at this instant.
    Decided(Outcome, tokio::time::Instant),
    /// Given up undecided (the body was dropped early).
    Abandoned,
}

impl PendingVerdict {
    /// An undecided verdict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides the call; a second decision, or one after [`abandon`](Self::abandon), is
    /// ignored.
    pub fn decide(&self, outcome: Outcome) {
        self.settle(Settled::Decided(outcome, tokio::time::Instant::now()));
    }

    /// Gives the verdict up undecided: the call counts as cancelled.
    pub fn abandon(&self) {
        self.settle(Settled::Abandoned);
    }

    /// The verdict, once decided.
    pub fn decided(&self) -> Option<Outcome> {
        match self.lock().settled {
            Some(Settled::Decided(outcome, _)) => Some(outcome),
            Some(Settled::Abandoned) | None => None,
        }
    }

    fn settle(&self, settled: Settled) {
        let mut verdict = self.lock();
        if verdict.settled.is_none() {
            verdict.settled = Some(settled);
            if let Some((watcher, call)) = &verdict.watcher {
                let _ = watcher.send(*call);
            }
        }
    }

    /// How it ended, if it has.
    pub(crate) fn settled(&self) -> Option<Settled> {
        self.lock().settled
    }

    /// Sends `call` to `watcher` when the verdict settles (at once if it has).
    pub(crate) fn watch(&self, watcher: tokio::sync::mpsc::UnboundedSender<u64>, call: u64) {
        let mut verdict = self.lock();
        if verdict.settled.is_some() {
            let _ = watcher.send(call);
        } else {
            verdict.watcher = Some((watcher, call));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Verdict> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for PendingVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PendingVerdict")
            .field(&self.settled())
            .finish()
    }
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
/// Without a `grpc-status` in the head, the status comes in the trailers: when the endpoint
/// put a [`PendingVerdict`] in the response (as
/// [`tonic::GrpcEndpoint`](crate::tonic::GrpcEndpoint) does, with a [`GrpcTrailersBody`]), the
/// call is classified by the trailers' `grpc-status` when the body ends. Otherwise the HTTP
/// status decides at the head.
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
            .get(&crate::http::headers::GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        match code {
            Some(code) => classify_grpc_code(code),
            None => classify_status(response.status()),
        }
    }

    fn pending(&self, response: &::http::Response<B>) -> Option<PendingVerdict> {
        if response
            .headers()
            .contains_key(&crate::http::headers::GRPC_STATUS)
            || !response.status().is_success()
        {
            return None;
        }
        response.extensions().get::<PendingVerdict>().cloned()
    }
}

/// A gRPC response body that decides a [`PendingVerdict`] from its trailers: the
/// `grpc-status` there by [`classify_grpc_code`]; a body that fails, or ends without a
/// `grpc-status`, fails. Frames pass through unchanged.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use seawall::classify::{GrpcTrailersBody, Outcome, PendingVerdict};
///
/// let mut trailers = http::HeaderMap::new();
/// trailers.insert("grpc-status", "14".parse().unwrap());
/// let streamed = Full::new(Bytes::from_static(b"message"))
///     .with_trailers(async move { Some(Ok(trailers)) });
/// let verdict = PendingVerdict::new();
/// let body = GrpcTrailersBody::new(streamed, verdict.clone());
/// body.collect().await.unwrap();
/// assert_eq!(verdict.decided(), Some(Outcome::Failure));
/// # }
/// ```
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[pin_project::pin_project(PinnedDrop)]
#[derive(Debug)]
pub struct GrpcTrailersBody<B> {
    #[pin]
    inner: B,
    verdict: PendingVerdict,
}

#[cfg(feature = "http")]
impl<B> GrpcTrailersBody<B> {
    /// Wraps `inner`; `verdict` is decided when its trailers (or its end, or an error) arrive.
    pub fn new(inner: B, verdict: PendingVerdict) -> Self {
        Self { inner, verdict }
    }
}

/// A body dropped before its end abandons its verdict: the call counts as cancelled.
#[cfg(feature = "http")]
#[pin_project::pinned_drop]
impl<B> PinnedDrop for GrpcTrailersBody<B> {
    fn drop(self: std::pin::Pin<&mut Self>) {
        self.verdict.abandon();
    }
}

#[cfg(feature = "http")]
impl<B: http_body::Body> http_body::Body for GrpcTrailersBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        use std::task::{Poll, ready};
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get(&crate::http::headers::GRPC_STATUS)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u32>().ok());
                    this.verdict
                        .decide(code.map_or(Outcome::Failure, classify_grpc_code));
                }
            }
            Some(Err(_)) | None => this.verdict.decide(Outcome::Failure),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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

    #[tokio::test]
    async fn a_verdict_tells_its_watcher_once_whichever_comes_first() {
        let (watcher, mut told) = tokio::sync::mpsc::unbounded_channel();
        // Watched first, decided later.
        let verdict = PendingVerdict::new();
        verdict.watch(watcher.clone(), 7);
        assert!(told.try_recv().is_err());
        verdict.decide(Outcome::Failure);
        verdict.decide(Outcome::Success);
        assert_eq!(told.try_recv().ok(), Some(7));
        assert!(told.try_recv().is_err(), "told once");
        assert!(matches!(
            verdict.settled(),
            Some(Settled::Decided(Outcome::Failure, _))
        ));
        // Abandoned first, watched later: told at once; a later decision changes nothing.
        let verdict = PendingVerdict::new();
        verdict.abandon();
        verdict.decide(Outcome::Success);
        verdict.watch(watcher, 8);
        assert_eq!(told.try_recv().ok(), Some(8));
        assert_eq!(verdict.settled(), Some(Settled::Abandoned));
        assert_eq!(verdict.decided(), None);
    }

    #[tokio::test]
    async fn trailers_decide_the_verdict() {
        use bytes::Bytes;
        use http_body_util::{BodyExt, Full};

        async fn verdict_of(trailers: Option<&str>) -> Option<Outcome> {
            let verdict = PendingVerdict::new();
            let mut map = ::http::HeaderMap::new();
            if let Some(code) = trailers {
                map.insert("grpc-status", code.parse().unwrap());
            }
            let body = Full::new(Bytes::from_static(b"m"))
                .map_err(|never| match never {})
                .with_trailers(async move { Some(Ok::<_, std::convert::Infallible>(map)) });
            let _ = GrpcTrailersBody::new(body, verdict.clone()).collect().await;
            verdict.decided()
        }
        assert_eq!(verdict_of(Some("0")).await, Some(Outcome::Success));
        assert_eq!(verdict_of(Some("5")).await, Some(Outcome::Success));
        assert_eq!(verdict_of(Some("14")).await, Some(Outcome::Failure));
        assert_eq!(verdict_of(Some("1")).await, Some(Outcome::Ignored));
        assert_eq!(verdict_of(None).await, Some(Outcome::Failure));

        // A body that ends without trailers failed the gRPC protocol.
        let verdict = PendingVerdict::new();
        let body = Full::new(Bytes::from_static(b"m"));
        let _ = GrpcTrailersBody::new(body, verdict.clone()).collect().await;
        assert_eq!(verdict.decided(), Some(Outcome::Failure));
    }

    #[test]
    fn grpc_status_defers_only_without_a_status_in_the_head() {
        fn pending<C: Classify<::http::Response<()>, ()>>(
            classify: C,
            response: &::http::Response<()>,
        ) -> Option<PendingVerdict> {
            classify.pending(response)
        }
        let verdict = PendingVerdict::new();
        let streamed = ::http::Response::builder()
            .extension(verdict.clone())
            .body(())
            .unwrap();
        assert!(pending(GrpcStatus, &streamed).is_some());
        let trailers_only = ::http::Response::builder()
            .header("grpc-status", "14")
            .extension(verdict)
            .body(())
            .unwrap();
        assert!(pending(GrpcStatus, &trailers_only).is_none());
        let no_slot = ::http::Response::builder().body(()).unwrap();
        assert!(pending(GrpcStatus, &no_slot).is_none());
        assert!(pending(HttpStatus, &no_slot).is_none());
    }

    #[test]
    fn errors_fail() {
        let r: Result<&::http::Response<()>, &&str> = Err(&"refused");
        assert_eq!(HttpStatus.classify(r), Outcome::Failure);
        assert_eq!(ErrorsAreFailures.classify(r), Outcome::Failure);
    }
}
