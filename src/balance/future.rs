use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project::{pin_project, pinned_drop};
use tokio::time::Instant;
use tower::Service;

use super::endpoint::Endpoint;
use super::picker::{Observation, Pick, PickRng};
use super::service::{Picked, Shared};
use crate::breaker::state_permit::{Ending, Permit};
use crate::classify::{Classify, Outcome};
use crate::{AllEjected, BoxError, NoEndpoints};

/// The future of a [`Balance`](super::Balance) call.
///
/// # Cancellation
///
/// Dropping the future before it completes releases the endpoint's in-flight count at once and
/// counts the call as `cancelled` in `seawall_requests_total`; it is not fed to the load estimate.
/// A call dropped by a seawall timeout layer because its time ran out is different: it counts
/// as a failure of its endpoint, in the breaker, the load estimate and the metrics.
///
/// # Verdicts in the body
///
/// When the classifier finds the verdict is not in the response head
/// ([`Classify::pending`](crate::classify::Classify::pending): a gRPC status in trailers), the
/// call stays in flight until the body decides it, and is recorded then; a body dropped
/// undecided counts the call as cancelled.
#[pin_project(PinnedDrop, project = FutureProj)]
pub struct ResponseFuture<K, S, P: Pick, C, Req>
where
    S: Service<Req>,
{
    #[pin]
    state: State<S, Req>,
    req: Option<Req>,
    in_flight: Option<InFlight<K, S>>,
    shared: Arc<Shared<K, S, P, C>>,
    started: Instant,
    seed: u64,
}

/// A wait that resolves to `true` when there may be something to pick.
type Wait = Pin<Box<dyn Future<Output = bool> + Send>>;

#[pin_project(project = StateProj)]
enum State<S: Service<Req>, Req> {
    /// Waiting for a publication: the first endpoints (bounded), or the set that replaces one
    /// whose endpoints are all being removed.
    Waiting { wait: Wait },
    /// An endpoint is picked; waiting for its service to be ready.
    Ready { service: S },
    /// The call is sent.
    Called {
        #[pin]
        future: S::Future,
    },
    /// Nothing to send to.
    NoEndpoints,
    /// Every endpoint is ejected (and panic mode is off).
    AllEjected,
    /// Completed.
    Done,
}

/// A call whose response has arrived but whose verdict its body will decide: recorded by the
/// balancer's verdict task when it settles.
pub(crate) struct Deferred<K, S> {
    verdict: crate::classify::PendingVerdict,
    in_flight: InFlight<K, S>,
    started: Instant,
}

impl<K, S> Deferred<K, S> {
    pub(crate) fn verdict(&self) -> &crate::classify::PendingVerdict {
        &self.verdict
    }

    /// Records the call, whose verdict has settled (the verdict task is told of a call only
    /// once its verdict is set). An abandoned verdict drops the in-flight guard, which counts
    /// the call as cancelled.
    pub(crate) fn settle<P: Pick, C>(self, shared: &Shared<K, S, P, C>) {
        if let Some(crate::classify::Settled::Decided(outcome, at)) = self.verdict.settled() {
            record_at(shared, self.in_flight, self.started, outcome, at);
        }
    }
}

/// One call counted against one endpoint (and holding its breaker's permit, if any);
/// dropping it un-counts the call.
pub(crate) struct InFlight<K, S> {
    endpoint: Arc<Endpoint<K, S>>,
    permit: Option<Permit>,
    finished: bool,
}

impl<K, S> InFlight<K, S> {
    fn new(endpoint: Arc<Endpoint<K, S>>, permit: Option<Permit>) -> Self {
        Self {
            endpoint,
            permit,
            finished: false,
        }
    }

    /// The call was never sent (the endpoint went away first): release without counting,
    /// and give a trial slot back.
    fn abandon(mut self) {
        self.finished = true;
        self.endpoint.release();
        if let (Some(permit), Some(breaker)) = (self.permit.take(), self.endpoint.breaker()) {
            breaker.abandon(permit);
        }
    }
}

impl<K, S> Drop for InFlight<K, S> {
    fn drop(&mut self) {
        if !self.finished {
            self.endpoint.release();
            self.endpoint.metrics.cancelled.increment(1);
            if let (Some(permit), Some(breaker)) = (self.permit.take(), self.endpoint.breaker()) {
                let now_ns = breaker.now_ns();
                self.endpoint
                    .record_in_breaker(permit, Ending::Cancelled, 0, now_ns);
            }
        }
    }
}

/// Turns a pick into the next state (and the in-flight guard that goes with it).
fn next_state<K, S, P, C, Req>(
    shared: &Arc<Shared<K, S, P, C>>,
    picked: Picked<K, S>,
    first: bool,
) -> (State<S, Req>, Option<InFlight<K, S>>)
where
    S: Service<Req> + Clone,
    P: Pick,
{
    match picked {
        Picked::Endpoint(endpoint, permit) => (
            State::Ready {
                service: endpoint.service().clone(),
            },
            Some(InFlight::new(endpoint, permit)),
        ),
        Picked::AllEjected => (State::AllEjected, None),
        Picked::Stale(generation) => {
            let mut published = shared.published.subscribe();
            let wait: Wait =
                Box::pin(async move { published.wait_for(|&(g, _)| g > generation).await.is_ok() });
            (State::Waiting { wait }, None)
        }
        Picked::Empty => match shared.wait_for_endpoints {
            // Only a call that found the set empty when it was made waits for the first
            // endpoints; a set that empties while a call is under way fails that call.
            Some(limit) if first => {
                let mut published = shared.published.subscribe();
                let wait: Wait = Box::pin(async move {
                    let first = published.wait_for(|&(_, len)| len > 0);
                    matches!(tokio::time::timeout(limit, first).await, Ok(Ok(_)))
                });
                (State::Waiting { wait }, None)
            }
            _ => (State::NoEndpoints, None),
        },
    }
}

impl<K, S, P, C, Req> ResponseFuture<K, S, P, C, Req>
where
    S: Service<Req> + Clone,
    P: Pick,
{
    pub(crate) fn new(
        shared: Arc<Shared<K, S, P, C>>,
        picked: Picked<K, S>,
        req: Req,
        started: Instant,
        rng: &mut PickRng,
    ) -> Self {
        let (state, in_flight) = next_state(&shared, picked, true);
        Self {
            state,
            req: Some(req),
            in_flight,
            seed: rng.next_u64(),
            shared,
            started,
        }
    }
}

impl<K, S, P, C, Req> Future for ResponseFuture<K, S, P, C, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Pick,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Waiting { wait } => {
                    if ready!(wait.as_mut().poll(cx)) {
                        this.repick();
                    } else {
                        this.state.set(State::NoEndpoints);
                    }
                }
                StateProj::Ready { service } => {
                    if let Err(error) = ready!(service.poll_ready(cx)) {
                        let outcome = this.shared.classify.classify(Err(&error));
                        this.finish(outcome);
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error.into()));
                    }
                    let Some(in_flight) = this.in_flight.take() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let Some(send) = in_flight.endpoint.begin_send() else {
                        // Discovery removed the endpoint while we waited for it to be ready:
                        // pick again.
                        in_flight.abandon();
                        this.repick();
                        continue;
                    };
                    let Some(req) = this.req.take() else {
                        drop(send);
                        this.state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let future = service.call(req);
                    drop(send);
                    *this.in_flight = Some(in_flight);
                    this.state.set(State::Called { future });
                }
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    let pending = match &result {
                        Ok(response) => this.shared.classify.pending(response),
                        Err(_) => None,
                    };
                    match (pending, this.in_flight.take()) {
                        // The body decides: record the call when it ends.
                        (Some(verdict), Some(in_flight)) => {
                            this.shared.defer(Deferred {
                                verdict,
                                in_flight,
                                started: *this.started,
                            });
                        }
                        (_, in_flight) => {
                            *this.in_flight = in_flight;
                            let outcome = this.shared.classify.classify(result.as_ref());
                            this.finish(outcome);
                        }
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(result.map_err(Into::into));
                }
                StateProj::NoEndpoints => {
                    this.shared.metrics.no_endpoints.increment(1);
                    this.state.set(State::Done);
                    let error = NoEndpoints::new(Arc::clone(&this.shared.name));
                    return Poll::Ready(Err(error.into()));
                }
                StateProj::AllEjected => {
                    this.shared.metrics.all_ejected.increment(1);
                    this.state.set(State::Done);
                    let error = AllEjected::new(Arc::clone(&this.shared.name));
                    return Poll::Ready(Err(error.into()));
                }
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
            }
        }
    }
}

impl<K, S, P, C, Req> FutureProj<'_, K, S, P, C, Req>
where
    S: Service<Req> + Clone,
    P: Pick,
{
    /// Picks again from the current set and moves to the matching state.
    fn repick(&mut self) {
        *self.seed = self.seed.wrapping_add(1);
        let mut rng = PickRng::with_seed(*self.seed);
        let picked = self.shared.pick(&mut rng, Instant::now());
        let (state, in_flight) = next_state(self.shared, picked, false);
        *self.in_flight = in_flight;
        self.state.set(state);
    }
}

impl<K, S, P, C, Req> FutureProj<'_, K, S, P, C, Req>
where
    S: Service<Req>,
    P: Pick,
{
    /// Records the outcome and latency of a finished call and releases its in-flight count.
    fn finish(&mut self, outcome: Outcome) {
        if let Some(in_flight) = self.in_flight.take() {
            record(self.shared, in_flight, *self.started, outcome);
        }
    }
}

/// Records the outcome and latency of a call that started at `started` and releases its
/// in-flight count.
fn record<K, S, P: Pick, C>(
    shared: &Shared<K, S, P, C>,
    in_flight: InFlight<K, S>,
    started: Instant,
    outcome: Outcome,
) {
    record_at(shared, in_flight, started, outcome, Instant::now());
}

/// [`record`] for a call that ended at `now`.
fn record_at<K, S, P: Pick, C>(
    shared: &Shared<K, S, P, C>,
    mut in_flight: InFlight<K, S>,
    started: Instant,
    outcome: Outcome,
    now: Instant,
) {
    in_flight.finished = true;
    let endpoint = &in_flight.endpoint;
    let latency = now.saturating_duration_since(started);
    let latency_ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    let now_ns = shared.nanos_since_epoch(now);
    endpoint.release();
    if let Some(permit) = in_flight.permit.take() {
        endpoint.record_in_breaker(permit, Ending::Classified(outcome), latency_ns, now_ns);
    }
    let metrics = &endpoint.metrics;
    match outcome {
        Outcome::Success => metrics.success.increment(1),
        Outcome::Failure => metrics.failure.increment(1),
        Outcome::Ignored => metrics.ignored.increment(1),
    }
    metrics.duration.record(latency.as_secs_f64());
    shared.picker.observe(
        endpoint,
        Observation {
            latency_ns,
            outcome,
            now_ns,
        },
    );
}

#[pinned_drop]
impl<K, S, P, C, Req> PinnedDrop for ResponseFuture<K, S, P, C, Req>
where
    S: Service<Req>,
    P: Pick,
{
    fn drop(self: Pin<&mut Self>) {
        if self.in_flight.is_some() && crate::timeout::expiry::is_expiring() {
            self.project().finish(Outcome::Failure);
        }
    }
}

fn polled_after_completion() -> BoxError {
    "balance response future polled after completion".into()
}

impl<K, S, P: Pick, C, Req> fmt::Debug for ResponseFuture<K, S, P, C, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("in_flight", &self.in_flight.is_some())
            .finish_non_exhaustive()
    }
}
