//! A circuit breaker for one endpoint of a balancer: outlier ejection.

use std::sync::Arc;

use metrics::{Gauge, Label};
use tokio::time::Instant;

use super::BreakerConfig;
use super::state::{CircuitCore, EjectionBudget, Ending, Permit, State, Transition};
use crate::classify::Outcome;

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

    /// The endpoint left the balancer: give back its ejection slot.
    pub(crate) fn retire(&self) {
        self.core.retire();
        self.update_ejected_gauge();
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
