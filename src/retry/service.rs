use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use metrics::{Counter, Label};
use pin_project::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use super::attempt;
use super::decide::{RetryClass, ServerHint, Situation, StopReason, decide};
use super::{Backoff, BudgetConfig, RetryBudget};
use crate::BoxError;
use crate::balance::PickRng;
use crate::http::ReplayBody;
use crate::http::headers::{Pushback, parse_grpc_retry_pushback, parse_retry_after};
use crate::rng::SeedSequence;
use crate::timeout::Deadline;

/// Marks a request as safe to send more than once, whatever its method (for example a POST
/// with an idempotency key). Put it in the request's extensions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Idempotent;

/// How a [`RetryLayer`] retries. Defaults: 3 attempts (the first included), Envoy's backoff
/// (25 ms doubling to 250 ms, full jitter), Finagle's budget (20 %, 10/s, 10 s), a 64 KiB
/// replay cap, and server-requested waits honoured up to 10 s.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) budget: BudgetConfig,
    pub(crate) replay_cap: usize,
    pub(crate) max_server_wait: Duration,
    pub(crate) hedge_after: Option<Duration>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::default(),
            budget: BudgetConfig::default(),
            replay_cap: crate::http::DEFAULT_REPLAY_CAP,
            max_server_wait: Duration::from_secs(10),
            hedge_after: None,
        }
    }
}

impl RetryConfig {
    /// The most attempts per request, the first included (at least 1). Default is 3.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The wait between attempts. Default is [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The retry budget. Default is [`BudgetConfig::default`].
    pub fn budget(mut self, budget: BudgetConfig) -> Self {
        self.budget = budget;
        self
    }

    /// The most request-body bytes kept for replay. Default is 64 KiB.
    pub fn replay_cap(mut self, bytes: usize) -> Self {
        self.replay_cap = bytes;
        self
    }

    /// The longest `Retry-After` / `grpc-retry-pushback-ms` wait honoured; a longer one stops
    /// retrying. Default is 10 s.
    pub fn max_server_wait(mut self, wait: Duration) -> Self {
        self.max_server_wait = wait;
        self
    }

    /// Hedges idempotent calls: when an attempt has not answered after `delay`, a second
    /// attempt goes to another endpoint without cancelling the first, and the first final
    /// answer wins. Default is off.
    ///
    /// A hedge is an attempt like a retry: it counts against
    /// [`max_attempts`](Self::max_attempts) and the retry budget (so hedging adds at most the
    /// budget's share of load), is sent only for idempotent requests whose body is complete
    /// and kept, and only with time left before the deadline. At most two attempts are in
    /// flight at once. When the hedge wins, the attempt it overtook is dropped as expired:
    /// its endpoint is charged a failure, so an endpoint that stalls is ejected even by round
    /// robin; when the original wins, the hedge is merely cancelled.
    ///
    /// This is the gRPC hedging policy (A6) with one hedge in flight at a time, or Envoy's
    /// `hedge_on_per_try_timeout` with the hedge delay shorter than the per-try timeout. Pick
    /// a delay well above the upstream's normal p99, so hedges answer stalls, not the tail.
    ///
    /// The delay counts from the attempt's call. Over a
    /// [`PerTryTimeoutLayer`](crate::timeout::PerTryTimeoutLayer) reached synchronously (as
    /// in [`Upstream`](crate::Upstream)) the per-try timer also wakes the call at the hedge
    /// instant, so an attempt costs one timer, not two.
    ///
    /// ```
    /// use std::time::Duration;
    /// use seawall::retry::RetryConfig;
    ///
    /// let config = RetryConfig::default().hedge_after(Duration::from_millis(200));
    /// # let _ = config;
    /// ```
    pub fn hedge_after(mut self, delay: Duration) -> Self {
        self.hedge_after = Some(delay);
        self
    }
}

/// A count kept twice: for the metrics recorder, and readable here (admin views, tests) even
/// when no recorder is installed.
struct Tally {
    recorded: Counter,
    count: AtomicU64,
}

impl Tally {
    fn new(metric: &'static str, upstream: &str) -> Self {
        Self {
            recorded: metrics::counter!(metric, vec![Label::new("upstream", upstream.to_owned())]),
            count: AtomicU64::new(0),
        }
    }

    fn add(&self) {
        self.recorded.increment(1);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

struct Policy {
    config: RetryConfig,
    budget: RetryBudget,
    retries: Tally,
    hedges: Tally,
    name: Arc<str>,
    /// Seeds for the backoff jitter, one drawn per call that retries (a call that does not
    /// retry, or a clone, costs no seed).
    seeds: SeedSequence,
}

impl Policy {
    /// When an attempt made at `now` is to be hedged, if hedging is on and the request may be.
    fn hedge_at(
        &self,
        idempotent: bool,
        now: tokio::time::Instant,
    ) -> Option<tokio::time::Instant> {
        (self.config.hedge_after)
            .filter(|_| idempotent)
            .map(|delay| now + delay)
    }
}

/// Retries HTTP requests that are safe to retry; see the [module docs](super).
///
/// Every service built from one layer shares its retry budget.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use seawall::retry::{RetryConfig, RetryLayer};
/// use seawall::timeout::{DeadlineLayer, PerTryTimeoutLayer};
/// use tower::{ServiceBuilder, service_fn};
///
/// # fn main() {
/// let users = ServiceBuilder::new()
///     .layer(DeadlineLayer::new(Duration::from_secs(2)))
///     .layer(RetryLayer::new("users", RetryConfig::default()))
///     .layer(PerTryTimeoutLayer::new(Duration::from_millis(500)))
///     .service(service_fn(|_: http::Request<seawall::http::ReplayBody<String>>| async {
///         Ok::<_, seawall::BoxError>(http::Response::new(()))
///     }));
/// # let _ = users;
/// # }
/// ```
#[derive(Clone)]
pub struct RetryLayer {
    policy: Arc<Policy>,
}

impl RetryLayer {
    /// A retry layer named `name` (metric labels and logs), with its own budget.
    pub fn new(name: impl Into<Arc<str>>, config: RetryConfig) -> Self {
        Self::build(name.into(), config, None)
    }

    /// The same, with the backoff jitter seeded for reproducible runs.
    pub fn with_seed(name: impl Into<Arc<str>>, config: RetryConfig, seed: u64) -> Self {
        Self::build(name.into(), config, Some(seed))
    }

    fn build(name: Arc<str>, config: RetryConfig, seed: Option<u64>) -> Self {
        Self {
            policy: Arc::new(Policy {
                budget: RetryBudget::new(config.budget),
                retries: Tally::new(crate::metrics::RETRIES_TOTAL, &name),
                hedges: Tally::new(crate::metrics::HEDGES_TOTAL, &name),
                name,
                config,
                seeds: SeedSequence::new(seed),
            }),
        }
    }

    /// The shared retry budget.
    pub fn budget(&self) -> &RetryBudget {
        &self.policy.budget
    }

    /// How many retries this layer's services have issued so far (all clones together).
    pub fn retries(&self) -> u64 {
        self.policy.retries.get()
    }

    /// How many hedges this layer's services have sent so far (all clones together).
    pub fn hedges(&self) -> u64 {
        self.policy.hedges.get()
    }
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("name", &self.policy.name)
            .field("config", &self.policy.config)
            .finish()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// The service of [`RetryLayer`].
pub struct Retry<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S: Clone> Clone for Retry<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<S> Retry<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The shared retry budget.
    pub fn budget(&self) -> &RetryBudget {
        &self.policy.budget
    }

    /// How many retries this service and every clone of its layer have issued so far.
    pub fn retries(&self) -> u64 {
        self.policy.retries.get()
    }

    /// How many hedges (see [`RetryConfig::hedge_after`]) this service and every clone of
    /// its layer have sent so far.
    pub fn hedges(&self) -> u64 {
        self.policy.hedges.get()
    }
}

impl<S> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("name", &self.policy.name)
            .finish_non_exhaustive()
    }
}

impl<S, B, RB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = RetryFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let now = crate::clock::now();
        self.policy.budget.deposit_at(now);
        let idempotent = crate::http::idempotent(request.method())
            || request.extensions().get::<Idempotent>().is_some();
        let (parts, body) = request.into_parts();
        let mut request = Request::from_parts(
            parts,
            ReplayBody::with_cap(body, self.policy.config.replay_cap),
        );
        // The template for retries. Its deadline is kept beside it rather than in a copy of
        // the extensions when it is their only entry (the usual case under a DeadlineLayer):
        // copying an extensions map costs three allocations on every call, retried or not.
        let deadline = crate::timeout::deadline_of(&request);
        let carried = request.extensions().get::<Deadline>().is_some();
        let template = if carried && request.extensions().len() == 1 {
            let extensions = std::mem::take(request.extensions_mut());
            let template = request.clone();
            *request.extensions_mut() = extensions;
            template
        } else {
            request.clone()
        };
        let mut tried = attempt::Tried::new();
        // The ready service makes this call; a clone makes the retries (tower's pattern).
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let hedge_at = self.policy.hedge_at(idempotent, now);
        let (future, hedge) = call_attempt(&mut ready, &mut tried, request, now, hedge_at);
        RetryFuture {
            state: State::Calling,
            first: Some(future),
            second: None,
            hedge,
            hedge_spent: false,
            service: ready,
            template,
            deadline,
            tried,
            attempts: 1,
            idempotent,
            policy: Arc::clone(&self.policy),
            seed: None,
        }
    }
}

#[pin_project(project = StateProj)]
enum State {
    /// One or two attempts are in flight, in `first` and `second`.
    Calling,
    /// Backing off before the next attempt (boxed: only retries pay for the timer's room).
    Waiting {
        sleep: Pin<Box<Sleep>>,
    },
    Readying,
}

/// The future of a [`Retry`] call.
///
/// # Cancellation
///
/// Dropping it drops the attempt under way (or the wait); the budget withdrawal of a retry
/// already decided is not refunded.
#[pin_project(project = RetryProj)]
pub struct RetryFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    #[pin]
    state: State,
    /// The attempt in flight; the older one when a hedge runs beside it.
    #[pin]
    first: Option<S::Future>,
    /// A hedge in flight beside `first` (boxed, like the timers: a call that is neither
    /// hedged nor retried does not carry their room, and moves less).
    second: Option<Pin<Box<S::Future>>>,
    /// When to hedge the attempt in `first`, and what wakes the call then.
    hedge: HedgeTimer,
    /// The current attempt was hedged already (or could not be).
    hedge_spent: bool,
    service: S,
    template: Request<ReplayBody<B>>,
    /// The request's deadline, put back into every retry's extensions.
    deadline: Option<Deadline>,
    tried: attempt::Tried,
    attempts: u32,
    idempotent: bool,
    policy: Arc<Policy>,
    /// The backoff jitter's seed, drawn at the first retry.
    seed: Option<u64>,
}

impl<S, B, RB> Future for RetryFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling => {
                    let _ = crate::timeout::woke();
                    let (result, class, hint) = match poll_attempts(&mut this, cx) {
                        Poll::Ready(answer) => answer,
                        Poll::Pending => {
                            let woke = crate::timeout::woke();
                            if hedge_due(&mut this, cx, woke) {
                                send_hedge(&mut this);
                                continue;
                            }
                            return Poll::Pending;
                        }
                    };
                    if class == RetryClass::Final {
                        // The common case: nothing to decide, nothing to measure.
                        return Poll::Ready(result);
                    }
                    let config = &this.policy.config;
                    let seed = match *this.seed {
                        Some(seed) => seed.wrapping_add(1),
                        None => this.policy.seeds.next_seed(),
                    };
                    *this.seed = Some(seed);
                    let backoff = config
                        .backoff
                        .delay(*this.attempts, &mut PickRng::with_seed(seed));
                    let situation = Situation {
                        class,
                        idempotent: *this.idempotent,
                        attempts: *this.attempts,
                        max_attempts: config.max_attempts,
                        hint,
                        max_server_wait: config.max_server_wait,
                        backoff,
                        deadline_left: this.deadline.map(|d| d.remaining()),
                        replayable: this.template.body().is_replayable(),
                    };
                    match decide(situation, || this.policy.budget.try_withdraw()) {
                        Ok(wait) => {
                            this.policy.retries.add();
                            *this.attempts += 1;
                            this.state.set(State::Waiting {
                                sleep: Box::pin(tokio::time::sleep(wait)),
                            });
                        }
                        Err(reason) => {
                            if reason != StopReason::Final {
                                metrics::counter!(
                                    crate::metrics::RETRIES_SKIPPED_TOTAL,
                                    "upstream" => this.policy.name.to_string(),
                                    "reason" => reason.as_str()
                                )
                                .increment(1);
                            }
                            return Poll::Ready(match (result, reason) {
                                (Err(error), StopReason::BodyNotReplayable) => Err(NotRetried {
                                    cap: this.policy.config.replay_cap,
                                    source: error,
                                }
                                .into()),
                                (result, _) => result,
                            });
                        }
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    ready!(this.service.poll_ready(cx)).map_err(Into::into)?;
                    let request = next_attempt(this.template, *this.deadline);
                    let now = crate::clock::now();
                    let hedge_at = this.policy.hedge_at(*this.idempotent, now);
                    let (future, hedge) =
                        call_attempt(this.service, this.tried, request, now, hedge_at);
                    this.first.set(Some(future));
                    *this.hedge = hedge;
                    *this.hedge_spent = false;
                    this.state.set(State::Calling);
                }
            }
        }
    }
}

/// The request for a retry or a hedge: the template, with the deadline in its extensions.
fn next_attempt<B>(
    template: &Request<ReplayBody<B>>,
    deadline: Option<Deadline>,
) -> Request<ReplayBody<B>> {
    let mut request = template.clone();
    if let Some(deadline) = deadline {
        request.extensions_mut().insert(deadline);
    }
    request
}

/// What an attempt ended with, sorted (classified once per answer).
type Answer<RB> = (Result<Response<RB>, BoxError>, RetryClass, ServerHint);

/// Polls the attempts in flight; the first to finish, once none is left or its answer is
/// final. When a hedge wins, the attempt it overtook is dropped as expired (its endpoint is
/// charged); when the original wins, the hedge is only cancelled.
fn poll_attempts<S, B, RB>(this: &mut RetryProj<'_, S, B>, cx: &mut Context<'_>) -> Poll<Answer<RB>>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    if let Some(first) = this.first.as_mut().as_pin_mut() {
        if let Poll::Ready(result) = first.poll(cx) {
            this.first.set(None);
            let result = result.map_err(Into::into);
            let (class, hint) = classify(&result);
            if class == RetryClass::Final || this.second.is_none() {
                *this.second = None;
                return Poll::Ready((result, class, hint));
            }
            // Retryable, and the hedge is still running: it carries on alone.
        }
    }
    if let Some(second) = this.second.as_mut() {
        if let Poll::Ready(result) = second.as_mut().poll(cx) {
            *this.second = None;
            let result = result.map_err(Into::into);
            let (class, hint) = classify(&result);
            if class == RetryClass::Final || this.first.is_none() {
                if this.first.is_some() {
                    crate::timeout::expiry::dropping_expired(|| this.first.set(None));
                }
                return Poll::Ready((result, class, hint));
            }
        }
    }
    Poll::Pending
}

/// What wakes a call when its attempt is due a hedge.
#[derive(Debug)]
enum HedgeTimer {
    /// No hedge for this attempt (hedging is off, or the request is not idempotent).
    Off,
    /// The attempt's per-try timeout below wakes the call at the instant and says so (see
    /// `timeout::wake_at`): one timer does for both.
    Lent,
    /// A timer of its own, for the instant (created on the attempt's first pending poll),
    /// when no per-try timeout below took the instant over.
    Own(tokio::time::Instant, Option<Pin<Box<Sleep>>>),
}

/// Makes one attempt, offering the hedge instant (if any) to a per-try timeout below.
fn call_attempt<S, R>(
    service: &mut S,
    tried: &mut attempt::Tried,
    request: R,
    now: tokio::time::Instant,
    hedge_at: Option<tokio::time::Instant>,
) -> (S::Future, HedgeTimer)
where
    S: Service<R>,
{
    attempt::with_avoided(tried, || {
        crate::clock::during(now, || match hedge_at {
            None => (service.call(request), HedgeTimer::Off),
            Some(at) => match crate::timeout::wake_at(at, || service.call(request)) {
                (future, true) => (future, HedgeTimer::Lent),
                (future, false) => (future, HedgeTimer::Own(at, None)),
            },
        })
    })
}

/// Whether to hedge now: hedging is on, the lone attempt has run past the delay (`woke`: the
/// per-try timeout below said so), and a hedge is allowed (complete body, attempts, deadline,
/// budget).
fn hedge_due<S, B>(this: &mut RetryProj<'_, S, B>, cx: &mut Context<'_>, woke: bool) -> bool
where
    S: Service<Request<ReplayBody<B>>>,
    S::Error: Into<BoxError>,
{
    if *this.hedge_spent || this.second.is_some() {
        return false;
    }
    let due = match this.hedge {
        HedgeTimer::Off => return false,
        HedgeTimer::Lent => woke,
        HedgeTimer::Own(at, sleep) => {
            let at = *at;
            sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
                .as_mut()
                .poll(cx)
                .is_ready()
        }
    };
    if !due {
        return false;
    }
    *this.hedge_spent = true;
    if !this.template.body().is_complete() {
        return false;
    }
    let time_left = this.deadline.is_none_or(|d| !d.remaining().is_zero());
    if *this.attempts >= this.policy.config.max_attempts || !time_left {
        return false;
    }
    // Only a ready service can take the hedge now; a busy one is not worth waiting for.
    if !matches!(this.service.poll_ready(cx), Poll::Ready(Ok(()))) {
        return false;
    }
    this.policy.budget.try_withdraw()
}

/// Sends the hedge to an endpoint the call has not tried.
fn send_hedge<S, B>(this: &mut RetryProj<'_, S, B>)
where
    S: Service<Request<ReplayBody<B>>>,
{
    let request = next_attempt(this.template, *this.deadline);
    let service = &mut *this.service;
    let future = attempt::with_avoided(this.tried, || service.call(request));
    *this.second = Some(Box::pin(future));
    *this.attempts += 1;
    this.policy.hedges.add();
}

impl<S, B> fmt::Debug for RetryFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryFuture")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// Sorts a result into never-sent, retryable or final, with what the server asked for.
fn classify<RB>(result: &Result<Response<RB>, BoxError>) -> (RetryClass, ServerHint) {
    match result {
        Ok(response) => classify_response(response),
        Err(error) => (classify_error(error.as_ref()), ServerHint::default()),
    }
}

fn classify_response<RB>(response: &Response<RB>) -> (RetryClass, ServerHint) {
    use crate::http::headers::{GRPC_RETRY_PUSHBACK_MS, GRPC_STATUS};
    let headers = response.headers();
    let text = |name: &http::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let retry_after =
        || text(&http::header::RETRY_AFTER).and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut hint = ServerHint::default();
    let class = match response.status().as_u16() {
        502..=504 => {
            hint.wait = retry_after();
            RetryClass::Retryable
        }
        429 => match retry_after() {
            Some(wait) => {
                hint.wait = Some(wait);
                RetryClass::Retryable
            }
            None => RetryClass::Final,
        },
        // The common case: nothing to look up but a trailers-only gRPC status.
        _ if headers.is_empty() => RetryClass::Final,
        // gRPC UNAVAILABLE (14) in a trailers-only response.
        _ if text(&GRPC_STATUS) == Some("14") => RetryClass::Retryable,
        _ => RetryClass::Final,
    };
    if class == RetryClass::Final {
        return (class, hint);
    }
    // A server's pushback outranks its Retry-After.
    if let Some(pushback) = text(&GRPC_RETRY_PUSHBACK_MS) {
        match parse_grpc_retry_pushback(pushback) {
            Pushback::RetryAfter(wait) => hint.wait = Some(wait),
            Pushback::DontRetry => hint.dont_retry = true,
        }
    }
    (class, hint)
}

/// Errors that prove the request never left, errors worth another try, and the rest.
pub(crate) fn classify_error(error: &(dyn std::error::Error + 'static)) -> RetryClass {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        // seawall's own causes, named once for every layer by `ErrorKind`.
        match crate::ErrorKind::known(error) {
            Some(kind) if kind.never_sent() => return RetryClass::NeverSent,
            Some(crate::ErrorKind::DeadlineExceeded | crate::ErrorKind::BodyTooLarge) => {
                return RetryClass::Final;
            }
            Some(crate::ErrorKind::TryTimeout) => return RetryClass::Retryable,
            _ => {}
        }
        // A refused connection sent nothing, whichever client met it (tonic's among them).
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return RetryClass::NeverSent;
        }
        if let Some(client) = error.downcast_ref::<hyper_util::client::legacy::Error>() {
            if client.is_connect() {
                return RetryClass::NeverSent;
            }
        }
        if error.is::<crate::http::ConnectError>() {
            return RetryClass::NeverSent;
        }
        if error
            .downcast_ref::<crate::http::ExchangeError>()
            .is_some_and(crate::http::ExchangeError::is_request_fault)
        {
            return RetryClass::Final;
        }
        if error.is::<NotRetried>() {
            return RetryClass::Final;
        }
        cause = error.source();
    }
    // A broken connection or protocol error after sending: worth another try if idempotent.
    RetryClass::Retryable
}

/// A retry was due but the request body had exceeded the replay cap; the error of the one
/// attempt is the source.
#[derive(Debug)]
pub struct NotRetried {
    cap: usize,
    source: BoxError,
}

impl NotRetried {
    /// The replay cap, in bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

impl fmt::Display for NotRetried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not retried: the request body exceeded the {} byte replay cap ({})",
            self.cap, self.source
        )
    }
}

impl std::error::Error for NotRetried {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport error whose cause is the io error, as tonic's and hyper's are.
    #[derive(Debug)]
    struct Transport(std::io::Error);

    impl fmt::Display for Transport {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("transport error")
        }
    }

    impl std::error::Error for Transport {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_refused_connection_anywhere_in_the_chain_was_never_sent() {
        let refused = Transport(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(classify_error(&refused), RetryClass::NeverSent);
        let reset = Transport(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(classify_error(&reset), RetryClass::Retryable);
    }

    #[test]
    fn a_request_that_cannot_be_sent_is_not_sent_elsewhere() {
        use crate::http::ExchangeError;
        use crate::http::h1::Failure;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let fault = ExchangeError::new(addr, Failure::Request("CONNECT is not supported"));
        assert_eq!(classify_error(&fault), RetryClass::Final);
        let closed = ExchangeError::new(addr, Failure::ClosedBeforeResponse);
        assert_eq!(classify_error(&closed), RetryClass::Retryable);
    }
}
