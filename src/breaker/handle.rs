use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Label};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::config::{BreakerConfig, ConfigError, Mode};
use super::endpoint::state_value;
use super::layer::CircuitBreakerLayer;
use super::state::{CircuitCore, Ending, Permit, Refusal, State, Transition};
use crate::classify::{ErrorsAreFailures, Outcome};
use crate::error::CircuitOpen;

/// A circuit breaker's shared state: every service built from one `Breaker` (or its clones)
/// counts into and obeys the same circuit.
///
/// Sharing is explicit. Under axum, `Router::route_layer(breaker.layer())` applies one layer
/// value to several routes, and each route's service is built from the same handle, so they
/// share one circuit; to give each route its own circuit, create one `Breaker` per route.
///
/// # Examples
///
/// ```
/// use seawall::breaker::{Breaker, BreakerConfig, State};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), seawall::BoxError> {
/// let breaker = Breaker::new("users", BreakerConfig::default())?;
/// assert_eq!(breaker.state(), State::Closed);
/// breaker.force_open();
/// assert_eq!(breaker.state(), State::Open);
/// breaker.reset();
/// assert_eq!(breaker.state(), State::Closed);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    core: CircuitCore,
    epoch: Instant,
    transitions: broadcast::Sender<Transition>,
    state_gauge: Gauge,
    rejections: Counter,
}

impl Breaker {
    /// A breaker named `name` (used in errors, logs and metric labels).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a value is out of range.
    pub fn new(name: impl Into<Arc<str>>, config: BreakerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let (transitions, _) = broadcast::channel(64);
        let name: Arc<str> = name.into();
        let label = || vec![Label::new("breaker", name.to_string())];
        let state_gauge = metrics::gauge!(crate::metrics::BREAKER_STATE, label());
        let core = CircuitCore::new(config);
        state_gauge.set(state_value(core.state()));
        Ok(Self {
            inner: Arc::new(Inner {
                rejections: metrics::counter!(crate::metrics::BREAKER_REJECTIONS_TOTAL, label()),
                state_gauge,
                name,
                core,
                epoch: Instant::now(),
                transitions,
            }),
        })
    }

    /// A layer whose services all share this breaker, classifying with
    /// [`ErrorsAreFailures`]; see [`CircuitBreakerLayer::classify`] for HTTP or gRPC.
    pub fn layer(&self) -> CircuitBreakerLayer<ErrorsAreFailures> {
        CircuitBreakerLayer::new(self.clone())
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current state. Forced open reads `Open`; forced closed, disabled and metrics-only
    /// read `Closed`.
    pub fn state(&self) -> State {
        self.inner.core.state()
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.inner.core.mode()
    }

    /// Calls, failures and slow calls in the current window.
    pub fn counts(&self) -> WindowCounts {
        let counts = self.inner.core.counts(self.now());
        WindowCounts {
            calls: counts.calls,
            failures: counts.failures,
            slow: counts.slow,
        }
    }

    /// The failure percentage in the current window (0 when it is empty).
    pub fn failure_rate(&self) -> f64 {
        let counts = self.counts();
        if counts.calls == 0 {
            0.0
        } else {
            counts.failures as f64 * 100.0 / counts.calls as f64
        }
    }

    /// Rejects every call until [`reset`](Self::reset) or another mode.
    pub fn force_open(&self) {
        self.set_mode(Mode::ForcedOpen);
    }

    /// Admits every call and never trips, until [`reset`](Self::reset) or another mode.
    pub fn force_closed(&self) {
        self.set_mode(Mode::ForcedClosed);
    }

    /// Sets the mode (see [`Mode`]).
    pub fn set_mode(&self, mode: Mode) {
        let transition = self.inner.core.set_mode(mode);
        self.publish(transition);
    }

    /// Back to normal and closed, with an empty window.
    pub fn reset(&self) {
        let transition = self.inner.core.reset();
        self.publish(transition);
    }

    /// Transitions from now on. A receiver that falls more than 64 transitions behind skips
    /// the oldest (see [`broadcast::Receiver`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.inner.transitions.subscribe()
    }

    /// Asks for leave to make one call outside a tower stack (resilience4j's
    /// `tryAcquirePermission`): report how it ended with [`BreakerPermit::record`]; dropping
    /// the permit unrecorded counts the call as cancelled.
    ///
    /// # Errors
    ///
    /// [`CircuitOpen`] when the call must not be made now.
    ///
    /// # Examples
    ///
    /// ```
    /// use seawall::breaker::{Breaker, BreakerConfig};
    /// use seawall::classify::Outcome;
    ///
    /// # fn main() -> Result<(), seawall::BoxError> {
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    /// # let _guard = runtime.enter();
    /// let breaker = Breaker::new("ledger", BreakerConfig::default())?;
    /// let permit = breaker.try_acquire()?;
    /// let answer = 6 * 7; // the guarded work
    /// permit.record(if answer == 42 { Outcome::Success } else { Outcome::Failure });
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<BreakerPermit<'_>, CircuitOpen> {
        let permit = self.acquire()?;
        Ok(BreakerPermit {
            breaker: self,
            permit,
            started: self.start(),
            recorded: false,
        })
    }

    pub(crate) fn now(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.inner.epoch))
    }

    #[inline]
    pub(crate) fn acquire(&self) -> Result<Permit, CircuitOpen> {
        if let Some(permit) = self.inner.core.try_acquire_closed() {
            return Ok(permit);
        }
        let now = self.now();
        let (decision, transition) = self.inner.core.acquire(now);
        self.publish(transition);
        decision.map_err(|refusal| {
            self.inner.rejections.increment(1);
            self.refusal(refusal, now)
        })
    }

    /// The start time a call must keep, if its duration will matter.
    #[inline]
    pub(crate) fn start(&self) -> Option<Instant> {
        self.inner.core.tracks_duration().then(Instant::now)
    }

    #[inline]
    pub(crate) fn record(&self, permit: Permit, ending: Ending, started: Option<Instant>) {
        if !permit.counted() {
            return;
        }
        let core = &self.inner.core;
        // Read the clock once, and only if the window or the slow-call rule needs it, or the
        // result may change the state (a trial, or a failure that may trip).
        let needs_now = core.needs_time_to_record()
            || started.is_some()
            || permit.trial()
            || ending != Ending::Classified(Outcome::Success);
        let (now, elapsed) = if needs_now {
            let now = Instant::now();
            let elapsed = started.map_or(0, |s| nanos(now.saturating_duration_since(s)));
            (
                nanos(now.saturating_duration_since(self.inner.epoch)),
                elapsed,
            )
        } else {
            (0, 0)
        };
        let transition = core.record(permit, ending, elapsed, now);
        self.publish(transition);
    }

    fn refusal(&self, refusal: Refusal, now: u64) -> CircuitOpen {
        let name = Arc::clone(&self.inner.name);
        match refusal {
            // A trial is admitted strictly after `until`.
            Refusal::Open { until_ns } => CircuitOpen::open(
                name,
                Duration::from_nanos(until_ns.saturating_sub(now).saturating_add(1)),
            ),
            Refusal::TrialsBusy => CircuitOpen::trials_busy(name),
            Refusal::Forced => CircuitOpen::forced(name),
        }
    }

    fn publish(&self, transition: Option<Transition>) {
        let Some(transition) = transition else { return };
        let name = &*self.inner.name;
        match transition.to {
            State::Open => tracing::warn!(
                breaker = name,
                from = transition.from.as_str(),
                "circuit opened"
            ),
            State::HalfOpen => {
                tracing::info!(breaker = name, "circuit half-open: admitting trial calls")
            }
            State::Closed => tracing::info!(
                breaker = name,
                from = transition.from.as_str(),
                "circuit closed"
            ),
        }
        self.inner.state_gauge.set(state_value(transition.to));
        metrics::counter!(
            crate::metrics::BREAKER_TRANSITIONS_TOTAL,
            "breaker" => name.to_owned(),
            "from" => transition.from.as_str(),
            "to" => transition.to.as_str()
        )
        .increment(1);
        // No subscriber is not an error.
        let _ = self.inner.transitions.send(transition);
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .field("mode", &self.mode())
            .field("config", self.inner.core.config())
            .finish()
    }
}

/// Calls counted in a breaker's current window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Calls that counted (successes and failures; ignored and cancelled calls do not).
    pub calls: u64,
    /// Failures among them.
    pub failures: u64,
    /// Slow calls among them (0 unless slow calls are configured).
    pub slow: u64,
}

/// Leave to make one call, from [`Breaker::try_acquire`].
///
/// # Cancellation
///
/// Dropped without [`record`](Self::record), the call counts as cancelled: nothing for an
/// ordinary call, a failure for a half-open trial. Dropped by a seawall timeout layer whose
/// time ran out (the permit lives in a future under it), it counts as a failure.
#[derive(Debug)]
pub struct BreakerPermit<'a> {
    breaker: &'a Breaker,
    permit: Permit,
    started: Option<Instant>,
    recorded: bool,
}

impl BreakerPermit<'_> {
    /// Reports how the call ended.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker
            .record(self.permit, Ending::Classified(outcome), self.started);
    }

    /// True when this call is a half-open trial: its result decides the circuit.
    pub fn is_trial(&self) -> bool {
        self.permit.trial()
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker
                .record(self.permit, Ending::dropped(), self.started);
        }
    }
}
