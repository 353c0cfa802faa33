//! A circuit breaker for one endpoint of a balancer: outlier ejection.

use std::sync::Arc;

use metrics::{Gauge, Label};
use tokio::time::Instant;

use super::BreakerConfig;
use std::sync::Mutex;

use super::Mode;
use super::state::{CircuitCore, EjectionBudget, Ending, Permit, State, Transition};
use crate::classify::Outcome;
use crate::health::{Health, HealthCounter};

/// One endpoint's breaker, with its labels and handles. Time is the balancer's: nanoseconds
/// since its epoch, read by the balancer once per call and passed in.
#[derive(Debug)]
pub(crate) struct EndpointBreaker {
    core: CircuitCore,
    epoch: Instant,
    upstream: Arc<str>,
    endpoint: Arc<str>,
    state_gauge: Gauge,
    ejected_gauge: Gauge,
    /// The mode to return to when a health check brings the endpoint back up.
    mode: Mode,
    health: Mutex<Option<HealthCounter>>,
}

impl EndpointBreaker {
    pub(crate) fn new(
        config: BreakerConfig,
        budget: Arc<EjectionBudget>,
        epoch: Instant,
        upstream: Arc<str>,
        endpoint: Arc<str>,
    ) -> Self {
        let labels = vec![
            Label::new("upstream", upstream.to_string()),
            Label::new("endpoint", endpoint.to_string()),
        ];
        let state_gauge = metrics::gauge!(crate::metrics::BREAKER_STATE, labels);
        state_gauge.set(0.0);
        let ejected_gauge = metrics::gauge!(
            crate::metrics::ENDPOINTS,
            vec![
                Label::new("upstream", upstream.to_string()),
                Label::new("state", "ejected")
            ]
        );
        Self {
            mode: config.mode,
            health: Mutex::new(None),
            core: CircuitCore::for_endpoint(config, budget),
            epoch,
            upstream,
            endpoint,
            state_gauge,
            ejected_gauge,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.core.state()
    }

    #[inline]
    pub(crate) fn may_admit(&self, now_ns: u64) -> bool {
        self.core.may_admit(now_ns)
    }

    pub(crate) fn acquire(&self, now_ns: u64) -> Option<Permit> {
        let (decision, transition) = self.core.acquire(now_ns);
        self.report(transition);
        decision.ok()
    }

    pub(crate) fn bypass_permit(&self) -> Permit {
        self.core.bypass_permit()
    }

    /// Records a result; returns the state it moved to, if it moved.
    pub(crate) fn record(
        &self,
        permit: Permit,
        ending: Ending,
        elapsed_ns: u64,
        now_ns: u64,
    ) -> Option<State> {
        let transition = self.core.record(permit, ending, elapsed_ns, now_ns);
        self.report(transition);
        transition.map(|t| t.to)
    }

    /// Whether the circuit is open or half-open and would admit a trial call now.
    #[inline]
    pub(crate) fn trial_due(&self, now_ns: u64) -> bool {
        self.core.state() != State::Closed && self.core.may_admit(now_ns)
    }

    /// The balancer's time now, for a result that arrives without it (a dropped call).
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.epoch)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    /// Frees a permit whose call was never sent.
    pub(crate) fn abandon(&self, permit: Permit) {
        let _ = self.record(
            permit,
            Ending::Classified(Outcome::Ignored),
            0,
            self.now_ns(),
        );
    }

    /// The endpoint left the balancer: give back its ejection slot and its down mark.
    pub(crate) fn retire(&self) {
        self.core.retire();
        let down = self
            .lock_health()
            .is_some_and(|c| c.health() == Health::Down);
        if down {
            if let Some(budget) = self.core.budget() {
                budget.mark_up();
            }
        }
        self.update_ejected_gauge();
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Option<HealthCounter>> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The active health check's verdict, once the endpoint has been probed.
    pub(crate) fn health(&self) -> Option<Health> {
        self.lock_health().map(|c| c.health())
    }

    /// Records one health probe; a change of health holds the circuit open (down) or gives
    /// it back to its configured mode (up).
    pub(crate) fn record_probe(&self, passed: bool, rise: u32, fall: u32) {
        let mut health = self.lock_health();
        let counter = health.get_or_insert_with(|| HealthCounter::new(rise, fall));
        let Some(change) = counter.record(passed) else {
            return;
        };
        let (upstream, endpoint) = (&*self.upstream, &*self.endpoint);
        let transition = match change {
            Health::Down => {
                tracing::warn!(upstream, endpoint, "endpoint down: health checks failing");
                if let Some(budget) = self.core.budget() {
                    budget.mark_down();
                }
                self.core.set_mode(Mode::ForcedOpen)
            }
            Health::Up => {
                tracing::info!(upstream, endpoint, "endpoint up: health checks passing");
                if let Some(budget) = self.core.budget() {
                    budget.mark_up();
                }
                self.core.set_mode(self.mode)
            }
        };
        drop(health);
        self.report(transition);
    }

    fn update_ejected_gauge(&self) {
        if let Some(budget) = self.core.budget() {
            self.ejected_gauge.set(budget.ejected() as f64);
        }
    }

    fn report(&self, transition: Option<Transition>) {
        let Some(Transition { from, to }) = transition else {
            return;
        };
        let (upstream, endpoint) = (&*self.upstream, &*self.endpoint);
        match to {
            State::Open => tracing::warn!(
                upstream,
                endpoint,
                from = from.as_str(),
                "endpoint ejected: its circuit opened"
            ),
            State::HalfOpen => {
                tracing::info!(upstream, endpoint, "ejected endpoint gets trial calls")
            }
            State::Closed => tracing::info!(
                upstream,
                endpoint,
                "endpoint back in rotation: its circuit closed"
            ),
        }
        self.state_gauge.set(state_value(to));
        self.update_ejected_gauge();
        metrics::counter!(
            crate::metrics::BREAKER_TRANSITIONS_TOTAL,
            "upstream" => upstream.to_owned(),
            "endpoint" => endpoint.to_owned(),
            "from" => from.as_str(),
            "to" => to.as_str()
        )
        .increment(1);
    }
}

/// The value of the state gauge: 0 closed, 1 open, 2 half-open.
pub(crate) fn state_value(state: State) -> f64 {
    match state {
        State::Closed => 0.0,
        State::Open => 1.0,
        State::HalfOpen => 2.0,
    }
}
