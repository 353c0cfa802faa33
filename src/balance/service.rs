use crate::rng::SeedSequence;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::Service;
use tower::discover::Discover;

use super::endpoint::Endpoint;
use super::future::ResponseFuture;
use super::picker::{P2c, Pick, PickContext, PickRng};
use super::set::{EndpointSet, EndpointTable};
use super::weighted::Weight;
use super::worker;
use crate::breaker::state_permit::Permit;
use crate::breaker::{BreakerConfig, EjectionBudget, Mode};
use crate::classify::{Classify, ErrorsAreFailures};
use crate::health::HealthCheck;
use crate::metrics::BalanceMetrics;
use crate::{BoxError, BuildError};

/// How many times the picker is asked again when it lands on an endpoint being removed.
const MAX_REPICKS: usize = 6;

/// A published set with the picker's schedule for it.
pub(crate) struct Snapshot<K, S, Sch> {
    /// Counts publications; 0 is the empty set the balancer starts with.
    pub(crate) generation: u64,
    pub(crate) set: EndpointSet<K, S>,
    pub(crate) schedule: Sch,
}

/// What was published last: `(generation, number of endpoints)`.
pub(crate) type Published = (u64, usize);

/// The result of picking.
pub(crate) enum Picked<K, S> {
    /// An endpoint, with the call already counted against it, and the permit of its
    /// breaker when the balancer has per-endpoint breakers.
    Endpoint(Arc<Endpoint<K, S>>, Option<Permit>),
    /// The published set is empty.
    Empty,
    /// Every endpoint is ejected and panic mode is off.
    AllEjected,
    /// Every endpoint of the set published as `generation` is being removed; the set that
    /// replaces it is about to be published.
    Stale(u64),
}

/// State shared by every clone of one balancer and by its discovery task.
pub(crate) struct Shared<K, S, P: Pick, C> {
    pub(crate) snapshot: ArcSwap<Snapshot<K, S, P::Schedule>>,
    pub(crate) picker: P,
    pub(crate) classify: C,
    pub(crate) name: Arc<str>,
    pub(crate) epoch: Instant,
    pub(crate) published: watch::Sender<Published>,
    pub(crate) metrics: BalanceMetrics,
    pub(crate) wait_for_endpoints: Option<Duration>,
    pub(crate) ejection: Option<Ejection>,
    seeds: SeedSequence,
    /// Calls whose verdict their response body will decide, by number; the verdict task is
    /// told each number as its verdict settles.
    deferred: std::sync::Mutex<std::collections::HashMap<u64, super::future::Deferred<K, S>>>,
    next_deferred: std::sync::atomic::AtomicU64,
    verdicts: tokio::sync::mpsc::UnboundedSender<u64>,
}

/// Figures from a balancer's per-endpoint breakers; see [`Balance::ejection_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionStats {
    /// Endpoints whose circuit is open or half-open now.
    pub ejected: usize,
    /// Ejections refused so far because the maximum ejection percentage was reached.
    pub refused_by_cap: u64,
}

/// Per-endpoint breakers: their configuration, the shared ejection count, the panic rule.
#[derive(Debug)]
pub(crate) struct Ejection {
    pub(crate) breaker: BreakerConfig,
    pub(crate) budget: Arc<EjectionBudget>,
    pub(crate) panic_threshold: f64,
}

impl Ejection {
    /// Envoy's panic rule: fewer than `panic_threshold` % of endpoints available (strictly)
    /// means using all of them.
    fn in_panic(&self, endpoints: usize) -> bool {
        let unavailable = self.budget.unavailable().min(endpoints as u64);
        let available = (endpoints as u64 - unavailable) as f64;
        available * 100.0 < self.panic_threshold * endpoints as f64
    }
}

impl<K, S, P: Pick, C> Shared<K, S, P, C> {
    /// Keeps a call whose body will decide its verdict until it does.
    pub(crate) fn defer(&self, deferred: super::future::Deferred<K, S>) {
        let call = self
            .next_deferred
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let verdict = deferred.verdict().clone();
        self.lock_deferred().insert(call, deferred);
        verdict.watch(self.verdicts.clone(), call);
    }

    /// Records deferred call `call`, whose verdict has settled.
    fn settle_deferred(&self, call: u64) {
        let deferred = self.lock_deferred().remove(&call);
        if let Some(deferred) = deferred {
            deferred.settle(self);
        }
    }

    fn lock_deferred(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, super::future::Deferred<K, S>>>
    {
        self.deferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn nanos_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Picks an endpoint that is not being removed (nor ejected) and counts the call against it.
    ///
    /// The discovery task flags removed endpoints *before* it publishes the set without them, so
    /// no call is sent to an endpoint once its removal is published. A pick that lands on a
    /// flagged endpoint, or one whose breaker refuses, asks the picker again, then scans the
    /// set; if every endpoint is flagged the caller waits for the publication under way.
    pub(crate) fn pick(&self, rng: &mut PickRng, now: Instant) -> Picked<K, S> {
        let snapshot = self.snapshot.load();
        let set = &snapshot.set;
        if set.is_empty() {
            return Picked::Empty;
        }
        let now_ns = self.nanos_since_epoch(now);
        let panic = self
            .ejection
            .as_ref()
            .is_some_and(|ejection| ejection.in_panic(set.len()));
        let mut cx = if self.ejection.is_some() && !panic {
            PickContext::skipping_ejected(now_ns, rng)
        } else {
            PickContext::new(now_ns, rng)
        };
        // A retry asks to avoid endpoints this request already tried (if others exist).
        let retrying = crate::retry::retry_active();
        for _ in 0..MAX_REPICKS {
            let Some(endpoint) = self
                .picker
                .pick(set, &snapshot.schedule, &mut cx)
                .and_then(|index| set.get(index))
            else {
                break;
            };
            let id = Arc::as_ptr(endpoint) as usize;
            if retrying && set.len() > 1 && crate::retry::avoids(id) {
                continue;
            }
            if let Some(picked) = self.admit(endpoint, panic, now_ns) {
                if retrying {
                    crate::retry::record_pick(id);
                }
                return picked;
            }
        }
        // The picker kept landing on endpoints it may not use: scan from a random start, first
        // for one this request has not tried (when retrying), then for any.
        let start = cx.random_below(set.len());
        let mut any_live = false;
        for skip_tried in [retrying, false] {
            for k in 0..set.len() {
                let Some(endpoint) = set.get((start + k) % set.len()) else {
                    continue;
                };
                any_live |= !endpoint.is_removed();
                let id = Arc::as_ptr(endpoint) as usize;
                if skip_tried && crate::retry::avoids(id) {
                    continue;
                }
                if let Some(picked) = self.admit(endpoint, panic, now_ns) {
                    if retrying {
                        crate::retry::record_pick(id);
                    }
                    return picked;
                }
            }
            if !skip_tried {
                break;
            }
        }
        if any_live {
            Picked::AllEjected
        } else {
            Picked::Stale(snapshot.generation)
        }
    }

    /// Counts a call against `endpoint` if it is live and its breaker (if any) admits it.
    fn admit(
        &self,
        endpoint: &Arc<Endpoint<K, S>>,
        panic: bool,
        now_ns: u64,
    ) -> Option<Picked<K, S>> {
        if endpoint.is_removed() {
            return None;
        }
        let permit = match (endpoint.breaker(), &self.ejection) {
            (Some(breaker), Some(_)) if !panic => Some(breaker.acquire(now_ns)?),
            (Some(breaker), Some(_)) => Some(breaker.bypass_permit()),
            _ => None,
        };
        endpoint.acquire();
        Some(Picked::Endpoint(Arc::clone(endpoint), permit))
    }

    fn clone_seed(&self) -> u64 {
        self.seeds.next_seed()
    }
}

/// Aborts the balancer's tasks (discovery, health checks) when its last clone is dropped.
struct WorkerGuard(Vec<tokio::task::JoinHandle<()>>);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A `Clone` load balancer over endpoints published by a discovery stream.
///
/// Built with [`Balance::builder`]. See the [module docs](super) for how it works.
///
/// # Errors
///
/// A call fails with [`NoEndpoints`](crate::NoEndpoints) when the set is empty (after the
/// optional [`wait_for_endpoints`](Builder::wait_for_endpoints)); otherwise with the endpoint's
/// own error, boxed.
///
/// # Examples
///
/// ```
/// use seawall::balance::{Balance, LeastConn};
/// use seawall::discover::from_list;
/// use tower::{service_fn, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), seawall::BoxError> {
/// let endpoints = from_list((0..3).map(|i| {
///     (i, service_fn(move |x: u32| async move { Ok::<_, seawall::BoxError>(x + i) }))
/// }));
/// let balance = Balance::builder(endpoints)
///     .name("adder")
///     .picker(LeastConn::new())
///     .wait_for_endpoints(std::time::Duration::from_secs(1))
///     .build()?;
/// let answer = balance.clone().oneshot(10).await?;
/// assert!((10..13).contains(&answer));
/// # Ok(())
/// # }
/// ```
pub struct Balance<K, S, P: Pick = P2c, C = ErrorsAreFailures> {
    shared: Arc<Shared<K, S, P, C>>,
    /// Seeded at this clone's first call: callers clone a balancer per request (tower's
    /// pattern), and most clones make one call or none.
    rng: Option<PickRng>,
    _worker: Arc<WorkerGuard>,
}

impl<K, S, P: Pick, C> Balance<K, S, P, C> {
    /// The balancer's name, as used in metric labels and errors.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The currently published endpoint set (a cheap, immutable snapshot).
    pub fn endpoints(&self) -> EndpointSet<K, S> {
        self.shared.snapshot.load().set.clone()
    }

    /// The picker.
    pub fn picker(&self) -> &P {
        &self.shared.picker
    }

    /// How many endpoints per-endpoint breakers have ejected now, and how many ejections the
    /// cap refused so far; `None` without [`endpoint_breaker`](Builder::endpoint_breaker).
    pub fn ejection_stats(&self) -> Option<EjectionStats> {
        self.shared.ejection.as_ref().map(|e| EjectionStats {
            ejected: e.budget.ejected() as usize,
            refused_by_cap: e.budget.overflow(),
        })
    }
}

impl Balance<(), (), P2c, ErrorsAreFailures> {
    /// Starts building a balancer fed by `discover`. Defaults: picker [`P2c`], classifier
    /// [`ErrorsAreFailures`], name `"default"`, no wait for endpoints, weights all 1.
    pub fn builder<D: Discover>(discover: D) -> Builder<D, P2c, ErrorsAreFailures> {
        Builder {
            discover,
            picker: P2c::default(),
            classify: ErrorsAreFailures,
            name: Arc::from("default"),
            wait_for_endpoints: None,
            seed: None,
            weight_of: |_| 1,
            endpoint_breaker: None,
            max_ejection_percent: 50.0,
            panic_threshold: 50.0,
            health_check: None,
        }
    }
}

impl<K, S, P: Pick, C> Clone for Balance<K, S, P, C> {
    fn clone(&self) -> Self {
        Self {
            rng: None,
            shared: Arc::clone(&self.shared),
            _worker: Arc::clone(&self._worker),
        }
    }
}

impl<K: fmt::Debug, S, P: Pick + fmt::Debug, C> fmt::Debug for Balance<K, S, P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("name", &self.shared.name)
            .field("picker", &self.shared.picker)
            .field("endpoints", &self.shared.snapshot.load().set)
            .finish_non_exhaustive()
    }
}

impl<K, S, P, C, Req> Service<Req> for Balance<K, S, P, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Pick,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<K, S, P, C, Req>;

    /// Always ready: the chosen endpoint's readiness is awaited by the response future.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let now = crate::clock::now();
        let shared = &self.shared;
        let rng = self
            .rng
            .get_or_insert_with(|| PickRng::with_seed(shared.clone_seed()));
        let picked = shared.pick(rng, now);
        ResponseFuture::new(Arc::clone(shared), picked, req, now, rng)
    }
}

/// The balancer's verdict task: records calls whose response bodies decided their verdict
/// (gRPC trailers), each time one does; ends with the last `Balance`.
async fn record_verdicts<K, S, P: Pick, C>(
    shared: std::sync::Weak<Shared<K, S, P, C>>,
    mut settled: tokio::sync::mpsc::UnboundedReceiver<u64>,
) {
    while let Some(call) = settled.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.settle_deferred(call);
    }
}

/// Configures and builds a [`Balance`].
pub struct Builder<D: Discover, P, C> {
    discover: D,
    picker: P,
    classify: C,
    name: Arc<str>,
    wait_for_endpoints: Option<Duration>,
    seed: Option<u64>,
    weight_of: fn(&D::Service) -> u32,
    endpoint_breaker: Option<BreakerConfig>,
    max_ejection_percent: f64,
    panic_threshold: f64,
    health_check: Option<HealthCheck<D::Key, D::Service>>,
}

impl<D: Discover, P, C> Builder<D, P, C> {
    /// The picker. Default is [`P2c`].
    pub fn picker<P2: Pick>(self, picker: P2) -> Builder<D, P2, C> {
        Builder {
            discover: self.discover,
            picker,
            classify: self.classify,
            name: self.name,
            wait_for_endpoints: self.wait_for_endpoints,
            seed: self.seed,
            weight_of: self.weight_of,
            endpoint_breaker: self.endpoint_breaker,
            max_ejection_percent: self.max_ejection_percent,
            panic_threshold: self.panic_threshold,
            health_check: self.health_check,
        }
    }

    /// How results count for the load estimate and metrics. Default is [`ErrorsAreFailures`];
    /// for HTTP use [`HttpStatus`](crate::classify::HttpStatus) so a 5xx counts as a failure.
    pub fn classify<C2>(self, classify: C2) -> Builder<D, P, C2> {
        Builder {
            discover: self.discover,
            picker: self.picker,
            classify,
            name: self.name,
            wait_for_endpoints: self.wait_for_endpoints,
            seed: self.seed,
            weight_of: self.weight_of,
            endpoint_breaker: self.endpoint_breaker,
            max_ejection_percent: self.max_ejection_percent,
            panic_threshold: self.panic_threshold,
            health_check: self.health_check,
        }
    }

    /// The name used in metric labels (`upstream`), logs and errors. Default is `"default"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Lets a call made while the set is empty wait up to `wait` for the first endpoints
    /// (useful at start-up, before discovery has answered). Default is no wait: such a call fails
    /// at once with [`NoEndpoints`](crate::NoEndpoints).
    pub fn wait_for_endpoints(mut self, wait: Duration) -> Self {
        self.wait_for_endpoints = Some(wait);
        self
    }

    /// Gives every endpoint its own circuit breaker, so an endpoint that fails is taken out of
    /// rotation (outlier ejection): every picker skips it while its circuit is open, and after
    /// the open period it receives exactly its trial calls. Results are classified by
    /// [`classify`](Self::classify). Default is no per-endpoint breakers.
    ///
    /// At most [`max_ejection_percent`](Self::max_ejection_percent) of the endpoints are
    /// ejected at once, and below [`panic_threshold`](Self::panic_threshold) available
    /// endpoints the balancer uses all of them anyway (Envoy's panic mode).
    pub fn endpoint_breaker(mut self, config: BreakerConfig) -> Self {
        self.endpoint_breaker = Some(config);
        self
    }

    /// The most endpoints, in percent, that per-endpoint breakers may eject at once; an
    /// ejection is allowed while `100 × ejected < percent × endpoints`, so one endpoint can
    /// always be ejected (Envoy's original rule; see the crate's breaker docs for why not the
    /// current one). Default is 50 — Envoy's 10 suits fleets of dozens of hosts, not three.
    /// Only meaningful with [`endpoint_breaker`](Self::endpoint_breaker).
    pub fn max_ejection_percent(mut self, percent: f64) -> Self {
        self.max_ejection_percent = percent;
        self
    }

    /// Below this percentage of available (not ejected) endpoints — strictly below, as in
    /// Envoy — the balancer ignores ejections and uses every endpoint. 0 disables panic mode:
    /// with every endpoint ejected, calls then fail at once with
    /// [`AllEjected`](crate::AllEjected). Default is 50 (Envoy's). Only meaningful with
    /// [`endpoint_breaker`](Self::endpoint_breaker) or [`health_check`](Self::health_check).
    pub fn panic_threshold(mut self, percent: f64) -> Self {
        self.panic_threshold = percent;
        self
    }

    /// Probes every endpoint actively and takes those that fail out of rotation (HAProxy's
    /// rise/fall rule; see [`health`](crate::health)). A down endpoint is held out through
    /// the same state per-endpoint breakers use, so it counts towards the
    /// [`panic_threshold`](Self::panic_threshold); without
    /// [`endpoint_breaker`](Self::endpoint_breaker), endpoints get breakers that only the
    /// health check moves. Default is no active checks.
    pub fn health_check(mut self, check: HealthCheck<D::Key, D::Service>) -> Self {
        self.health_check = Some(check);
        self
    }

    /// Seeds the random choices (P2C draws, least-connection ties) for reproducible runs.
    /// Default is a random seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Takes each endpoint's weight from its service's [`Weight`] implementation (for example
    /// [`Weighted`](super::Weighted) or [`HttpEndpoint`](crate::http::HttpEndpoint)). Default
    /// is weight 1 for every endpoint.
    pub fn weighted(mut self) -> Self
    where
        D::Service: Weight,
    {
        self.weight_of = <D::Service as Weight>::weight;
        self
    }

    /// Builds the balancer and spawns its discovery task on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`BuildError`] when called outside a Tokio runtime.
    pub fn build(self) -> Result<Balance<D::Key, D::Service, P, C>, BuildError>
    where
        D: Send + 'static,
        D::Key: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
        D::Service: Send + Sync + 'static,
        D::Error: Into<BoxError>,
        P: Pick,
        C: Send + Sync + 'static,
    {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| BuildError::no_runtime())?;
        // Health checks act through endpoint breakers; without configured ones they get
        // breakers that only the health check moves.
        let breaker = match (self.endpoint_breaker, &self.health_check) {
            (Some(config), _) => Some(config),
            (None, Some(_)) => Some(BreakerConfig::default().mode(Mode::Disabled)),
            (None, None) => None,
        };
        let ejection = match breaker {
            Some(breaker) => {
                breaker.validate().map_err(BuildError::config)?;
                let percent = |p: f64| (0.0..=100.0).contains(&p);
                if !percent(self.max_ejection_percent) {
                    return Err(BuildError::invalid(
                        "max_ejection_percent",
                        "must be in [0, 100]",
                    ));
                }
                if !percent(self.panic_threshold) {
                    return Err(BuildError::invalid(
                        "panic_threshold",
                        "must be in [0, 100]",
                    ));
                }
                Some(Ejection {
                    breaker,
                    budget: Arc::new(EjectionBudget::new(self.max_ejection_percent)),
                    panic_threshold: self.panic_threshold,
                })
            }
            None => None,
        };
        let empty = EndpointSet::empty();
        let schedule = self.picker.schedule(&empty);
        let (settled_tx, settled_rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot {
                generation: 0,
                set: empty,
                schedule,
            }),
            picker: self.picker,
            classify: self.classify,
            metrics: BalanceMetrics::new(&self.name),
            name: self.name,
            epoch: Instant::now(),
            published: watch::Sender::new((0, 0)),
            wait_for_endpoints: self.wait_for_endpoints,
            ejection,
            seeds: SeedSequence::new(self.seed),
            deferred: std::sync::Mutex::new(std::collections::HashMap::new()),
            next_deferred: std::sync::atomic::AtomicU64::new(0),
            verdicts: settled_tx,
        });
        let mut tasks = vec![runtime.spawn(worker::run(
            self.discover,
            Arc::downgrade(&shared),
            EndpointTable::new(),
            self.weight_of,
        ))];
        if let Some(check) = self.health_check {
            tasks.push(runtime.spawn(crate::health::run(Arc::downgrade(&shared), check)));
        }
        tasks.push(runtime.spawn(record_verdicts(Arc::downgrade(&shared), settled_rx)));
        Ok(Balance {
            rng: None,
            shared,
            _worker: Arc::new(WorkerGuard(tasks)),
        })
    }
}

impl<D: Discover, P: fmt::Debug, C> fmt::Debug for Builder<D, P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("picker", &self.picker)
            .field("wait_for_endpoints", &self.wait_for_endpoints)
            .finish_non_exhaustive()
    }
}
