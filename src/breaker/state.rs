//! The breaker's state machine: what to admit, what a result means, when to change state.
//!
//! It is synchronous and reads no clock: every call takes `now` in nanoseconds since the
//! breaker's epoch. In the closed state (almost all the time) admitting a call is two atomic
//! loads and recording a success is one compare-and-swap in the window, so the success path
//! takes no lock. A mutex guards only the rare transitions and the half-open trial bookkeeping.
//!
//! Every permit carries the *period* (a counter bumped on each transition) it was issued in,
//! so a late result from an earlier period — a trial that outlived a manual reset, a call
//! admitted just before the breaker tripped — can never decide the state of a later one.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::config::{BreakerConfig, Mode};
use super::window::{CallWindow, Counts, Sample};
use crate::classify::Outcome;

/// The state of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls flow; failures are counted.
    Closed,
    /// Calls are rejected until the open period ends.
    Open,
    /// A bounded number of trial calls decide whether to close or open again.
    HalfOpen,
}

impl State {
    fn from_u8(value: u8) -> Self {
        match value {
            OPEN => Self::Open,
            HALF_OPEN => Self::HalfOpen,
            _ => Self::Closed,
        }
    }

    /// A lowercase name, as used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

fn mode_to_u8(mode: Mode) -> u8 {
    match mode {
        Mode::Normal => 0,
        Mode::ForcedOpen => 1,
        Mode::ForcedClosed => 2,
        Mode::Disabled => 3,
        Mode::MetricsOnly => 4,
    }
}

fn mode_from_u8(value: u8) -> Mode {
    match value {
        1 => Mode::ForcedOpen,
        2 => Mode::ForcedClosed,
        3 => Mode::Disabled,
        4 => Mode::MetricsOnly,
        _ => Mode::Normal,
    }
}

/// Leave to make one call, issued by [`CircuitCore::acquire`]: the period it was issued in
/// and two flags, packed in one word so it travels in a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Permit(u64);

impl Permit {
    const TRIAL: u64 = 1;
    const COUNTED: u64 = 2;

    #[inline]
    fn new(trial: bool, counted: bool, period: u64) -> Self {
        Self(
            (period << 2)
                | if trial { Self::TRIAL } else { 0 }
                | if counted { Self::COUNTED } else { 0 },
        )
    }

    /// A half-open trial: its result decides the circuit.
    #[inline]
    pub(crate) fn trial(self) -> bool {
        self.0 & Self::TRIAL != 0
    }

    /// Whether its result is counted at all (not in `Disabled` mode).
    #[inline]
    pub(crate) fn counted(self) -> bool {
        self.0 & Self::COUNTED != 0
    }

    #[inline]
    fn period(self) -> u64 {
        self.0 >> 2
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Open until `until_ns`; a trial is admitted strictly after it.
    Open { until_ns: u64 },
    /// Half-open and every trial slot is taken.
    TrialsBusy,
    /// Forced open by an operator.
    Forced,
}

/// How a finished call ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The classifier's verdict.
    Classified(Outcome),
    /// The caller dropped the call before it finished.
    Cancelled,
}

impl Ending {
    /// How a call dropped before it finished ends: a failure if a seawall timeout dropped it
    /// because its time ran out, a cancellation otherwise.
    pub(crate) fn dropped() -> Self {
        if crate::timeout::expiry::is_expiring() {
            Ending::Classified(Outcome::Failure)
        } else {
            Ending::Cancelled
        }
    }
}

/// A change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
}

#[derive(Debug, Default)]
struct Trials {
    admitted: u32,
    succeeded: u32,
    /// Consecutive re-opens since the last close, for the growing open duration.
    reopens: u32,
    /// Whether this circuit holds one of its balancer's ejection slots.
    ejected: bool,
}

/// How many of a balancer's endpoints are ejected (open or half-open), shared by their
/// breakers, with Envoy's cap on ejections.
///
/// The cap follows Envoy's original rule: a breaker may open while
/// `100 × ejected < max_percent × endpoints`, so at least one endpoint can always be ejected.
/// Envoy's current rule (`100 × (ejected + 1) ≤ max_percent × endpoints`) ejects nobody in a
/// cluster smaller than `100 / max_percent` hosts, which would disable outlier detection for
/// the three-instance services this crate is mostly used with.
#[derive(Debug)]
pub(crate) struct EjectionBudget {
    ejected: AtomicU64,
    /// Endpoints an active health check holds down (not capped, but unavailable).
    down: AtomicU64,
    endpoints: AtomicU64,
    max_percent: f64,
    overflow: AtomicU64,
}

impl EjectionBudget {
    pub(crate) fn new(max_percent: f64) -> Self {
        Self {
            ejected: AtomicU64::new(0),
            down: AtomicU64::new(0),
            endpoints: AtomicU64::new(0),
            max_percent,
            overflow: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_endpoints(&self, n: usize) {
        self.endpoints.store(n as u64, Ordering::Release);
    }

    pub(crate) fn ejected(&self) -> u64 {
        self.ejected.load(Ordering::Acquire)
    }

    /// Endpoints out of rotation for any reason: ejected by their breaker or held down by
    /// a health check.
    pub(crate) fn unavailable(&self) -> u64 {
        self.ejected() + self.down.load(Ordering::Acquire)
    }

    pub(crate) fn mark_down(&self) {
        self.down.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn mark_up(&self) {
        let _ = self
            .down
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Ejections the cap refused so far.
    pub(crate) fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }

    fn try_eject(&self) -> bool {
        let endpoints = self.endpoints.load(Ordering::Acquire) as f64;
        let result = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |ejected| {
                ((ejected as f64) * 100.0 < self.max_percent * endpoints).then_some(ejected + 1)
            });
        if result.is_err() {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
        result.is_ok()
    }

    fn release(&self) {
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// The breaker's state, shared by every clone of every service built from one breaker.
#[derive(Debug)]
pub(crate) struct CircuitCore {
    config: BreakerConfig,
    slow_ns: Option<u64>,
    window: CallWindow,
    phase: AtomicU8,
    mode: AtomicU8,
    open_until: AtomicU64,
    period: AtomicU64,
    /// Trial slots still free while half-open (a lock-free view for pickers).
    free_trials: AtomicU64,
    trials: Mutex<Trials>,
    budget: Option<Arc<EjectionBudget>>,
}

impl CircuitCore {
    /// A breaker for one endpoint of a balancer, counting its ejections in `budget`.
    pub(crate) fn for_endpoint(config: BreakerConfig, budget: Arc<EjectionBudget>) -> Self {
        Self {
            budget: Some(budget),
            ..Self::new(config)
        }
    }

    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            slow_ns: config
                .slow_call
                .map(|(d, _)| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            window: CallWindow::new(config.window),
            mode: AtomicU8::new(mode_to_u8(config.mode)),
            config,
            phase: AtomicU8::new(CLOSED),
            open_until: AtomicU64::new(0),
            period: AtomicU64::new(0),
            free_trials: AtomicU64::new(0),
            trials: Mutex::new(Trials::default()),
            budget: None,
        }
    }

    /// Whether [`acquire`](Self::acquire) would admit a call now — without taking the lock.
    /// Pickers use it to skip ejected endpoints; the answer may be stale by the time the call
    /// acquires, which then fails and the pick is repeated.
    #[inline]
    pub(crate) fn may_admit(&self, now_ns: u64) -> bool {
        match self.mode() {
            Mode::ForcedOpen => return false,
            Mode::Normal => {}
            _ => return true,
        }
        match self.phase.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => now_ns > self.open_until.load(Ordering::Acquire),
            _ => self.free_trials.load(Ordering::Acquire) > 0,
        }
    }

    /// A counted permit that bypasses the state (a balancer in panic mode uses every endpoint):
    /// its result is recorded in the window but decides nothing.
    pub(crate) fn bypass_permit(&self) -> Permit {
        Permit::new(false, true, self.period.load(Ordering::Acquire))
    }

    /// The ejection budget this circuit counts in, for an endpoint's breaker.
    pub(crate) fn budget(&self) -> Option<&EjectionBudget> {
        self.budget.as_deref()
    }

    /// Gives back this circuit's ejection slot (the endpoint left the balancer).
    pub(crate) fn retire(&self) {
        let mut trials = self.lock();
        self.release_ejection(&mut trials);
    }

    fn release_ejection(&self, trials: &mut Trials) {
        if std::mem::take(&mut trials.ejected) {
            if let Some(budget) = &self.budget {
                budget.release();
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Trials> {
        // Trials is plain counters, consistent after every statement.
        self.trials.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn config(&self) -> &BreakerConfig {
        &self.config
    }

    pub(crate) fn state(&self) -> State {
        State::from_u8(self.phase.load(Ordering::Acquire))
    }

    #[inline]
    pub(crate) fn mode(&self) -> Mode {
        mode_from_u8(self.mode.load(Ordering::Acquire))
    }

    pub(crate) fn counts(&self, now_ns: u64) -> Counts {
        self.window.counts(now_ns)
    }

    /// Whether recording a result needs the time: only a time window does.
    #[inline]
    pub(crate) fn needs_time_to_record(&self) -> bool {
        matches!(self.window, CallWindow::Time(_))
    }

    /// Whether a call's duration matters: only with slow-call detection.
    #[inline]
    pub(crate) fn tracks_duration(&self) -> bool {
        self.slow_ns.is_some()
    }

    /// The closed-state fast path: a permit without reading the clock, when the breaker is
    /// closed in normal mode (or passive); `None` when the full `acquire` must decide.
    #[inline]
    pub(crate) fn try_acquire_closed(&self) -> Option<Permit> {
        let period = self.period.load(Ordering::Acquire);
        match self.mode() {
            Mode::Normal if self.phase.load(Ordering::Acquire) == CLOSED => {
                Some(Permit::new(false, true, period))
            }
            Mode::ForcedClosed | Mode::MetricsOnly => Some(Permit::new(false, true, period)),
            Mode::Disabled => Some(Permit::new(false, false, period)),
            _ => None,
        }
    }

    /// Admits a call or says why not.
    pub(crate) fn acquire(&self, now_ns: u64) -> (Result<Permit, Refusal>, Option<Transition>) {
        let period = self.period.load(Ordering::Acquire);
        match self.mode() {
            Mode::ForcedOpen => return (Err(Refusal::Forced), None),
            Mode::Disabled => {
                let permit = Permit::new(false, false, period);
                return (Ok(permit), None);
            }
            Mode::ForcedClosed | Mode::MetricsOnly => {
                let permit = Permit::new(false, true, period);
                return (Ok(permit), None);
            }
            Mode::Normal => {}
        }
        match self.phase.load(Ordering::Acquire) {
            CLOSED => (Ok(Permit::new(false, true, period)), None),
            OPEN => {
                let until_ns = self.open_until.load(Ordering::Acquire);
                if now_ns <= until_ns {
                    return (Err(Refusal::Open { until_ns }), None);
                }
                let mut trials = self.lock();
                // Re-check under the lock: another caller may have moved on already.
                let transition = if self.phase.load(Ordering::Acquire) == OPEN
                    && now_ns > self.open_until.load(Ordering::Acquire)
                {
                    trials.admitted = 0;
                    trials.succeeded = 0;
                    self.free_trials
                        .store(u64::from(self.config.trials), Ordering::Release);
                    self.enter(HALF_OPEN);
                    Some(Transition {
                        from: State::Open,
                        to: State::HalfOpen,
                    })
                } else {
                    None
                };
                (self.admit_trial(&mut trials), transition)
            }
            _ => {
                let mut trials = self.lock();
                (self.admit_trial(&mut trials), None)
            }
        }
    }

    fn admit_trial(&self, trials: &mut Trials) -> Result<Permit, Refusal> {
        match self.phase.load(Ordering::Acquire) {
            HALF_OPEN if trials.admitted < self.config.trials => {
                trials.admitted += 1;
                self.free_trials.store(
                    u64::from(self.config.trials - trials.admitted),
                    Ordering::Release,
                );
                let period = self.period.load(Ordering::Acquire);
                Ok(Permit::new(true, true, period))
            }
            HALF_OPEN => Err(Refusal::TrialsBusy),
            CLOSED => {
                let period = self.period.load(Ordering::Acquire);
                Ok(Permit::new(false, true, period))
            }
            _ => Err(Refusal::Open {
                until_ns: self.open_until.load(Ordering::Acquire),
            }),
        }
    }

    /// Records how a permitted call ended; returns the transition it caused, if any.
    #[inline]
    pub(crate) fn record(
        &self,
        permit: Permit,
        ending: Ending,
        elapsed_ns: u64,
        now_ns: u64,
    ) -> Option<Transition> {
        if !permit.counted() {
            return None;
        }
        let slow = self.slow_ns.is_some_and(|limit| elapsed_ns > limit);
        if permit.trial() {
            return self.record_trial(permit, ending, slow, now_ns);
        }
        let failure = match ending {
            Ending::Classified(Outcome::Success) => false,
            Ending::Classified(Outcome::Failure) => true,
            Ending::Classified(Outcome::Ignored) | Ending::Cancelled => return None,
        };
        self.window.record(Sample { failure, slow }, now_ns);
        // Only a failure or a slow call can push a rate over its threshold.
        if !(failure || slow) || self.mode() != Mode::Normal {
            return None;
        }
        if self.phase.load(Ordering::Acquire) != CLOSED || !self.trips(self.window.counts(now_ns)) {
            return None;
        }
        let mut trials = self.lock();
        if self.phase.load(Ordering::Acquire) != CLOSED || self.mode() != Mode::Normal {
            return None;
        }
        if let Some(budget) = &self.budget {
            if !budget.try_eject() {
                return None; // the ejection cap is reached: stay in rotation
            }
            trials.ejected = true;
        }
        trials.reopens = 0;
        self.open(now_ns, 0);
        Some(Transition {
            from: State::Closed,
            to: State::Open,
        })
    }

    fn record_trial(
        &self,
        permit: Permit,
        ending: Ending,
        slow: bool,
        now_ns: u64,
    ) -> Option<Transition> {
        let mut trials = self.lock();
        if permit.period() != self.period.load(Ordering::Acquire)
            || self.phase.load(Ordering::Acquire) != HALF_OPEN
        {
            return None; // a trial from an earlier period (reset, forced, already decided)
        }
        match ending {
            Ending::Classified(Outcome::Success) if !slow => {
                trials.succeeded += 1;
                if trials.succeeded < self.config.trials {
                    return None;
                }
                trials.reopens = 0;
                self.release_ejection(&mut trials);
                self.window.reset();
                self.enter(CLOSED);
                Some(Transition {
                    from: State::HalfOpen,
                    to: State::Closed,
                })
            }
            Ending::Classified(Outcome::Ignored) => {
                // Says nothing about health: free the slot for another trial.
                trials.admitted = trials.admitted.saturating_sub(1);
                self.free_trials.store(
                    u64::from(self.config.trials - trials.admitted),
                    Ordering::Release,
                );
                None
            }
            // A failure, a slow success, or a cancelled trial opens the circuit again.
            _ => {
                trials.reopens = trials.reopens.saturating_add(1);
                self.open(now_ns, trials.reopens);
                Some(Transition {
                    from: State::HalfOpen,
                    to: State::Open,
                })
            }
        }
    }

    /// Whether counts over the window trip the breaker: enough calls, and a failure (or slow)
    /// rate at or above its threshold, compared exactly (for whole-number thresholds this is
    /// Hystrix's truncated-percentage rule).
    fn trips(&self, counts: Counts) -> bool {
        if counts.calls == 0 || counts.calls < u64::from(self.config.minimum_calls) {
            return false;
        }
        let over = |n: u64, percent: f64| (n as f64) * 100.0 >= percent * counts.calls as f64;
        over(counts.failures, self.config.failure_rate)
            || self
                .config
                .slow_call
                .is_some_and(|(_, percent)| over(counts.slow, percent))
    }

    fn open(&self, now_ns: u64, reopens: u32) {
        let duration = self.config.open_duration(reopens);
        let until = now_ns.saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        self.open_until.store(until, Ordering::Release);
        self.enter(OPEN);
    }

    fn enter(&self, phase: u8) {
        self.period.fetch_add(1, Ordering::AcqRel);
        self.phase.store(phase, Ordering::Release);
    }

    /// Sets the mode; leaving a forced or disabled mode for `Normal` starts closed and empty.
    pub(crate) fn set_mode(&self, mode: Mode) -> Option<Transition> {
        let mut trials = self.lock();
        if mode != Mode::Normal {
            self.release_ejection(&mut trials);
        }
        let before = self.mode();
        self.mode.store(mode_to_u8(mode), Ordering::Release);
        if before == mode {
            return None;
        }
        let from = self.state();
        // Forced states and the modes that never trip are reported as closed (or open) at once.
        let to = match mode {
            Mode::ForcedOpen => State::Open,
            Mode::Normal => from,
            _ => State::Closed,
        };
        if mode != Mode::Normal {
            self.enter(if to == State::Open { OPEN } else { CLOSED });
            if to == State::Open {
                self.open_until.store(u64::MAX, Ordering::Release);
            }
        } else if from != State::Closed {
            // Back to normal from a forced state: start closed.
            self.window.reset();
            self.enter(CLOSED);
        }
        let to = self.state();
        (from != to).then_some(Transition { from, to })
    }

    /// Back to closed with an empty window and no open-duration growth.
    pub(crate) fn reset(&self) -> Option<Transition> {
        let mut trials = self.lock();
        let from = self.state();
        self.release_ejection(&mut trials);
        *trials = Trials::default();
        self.window.reset();
        self.mode.store(mode_to_u8(Mode::Normal), Ordering::Release);
        self.enter(CLOSED);
        (from != State::Closed).then_some(Transition {
            from,
            to: State::Closed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::Window;
    use std::time::Duration;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;
    const OK: Ending = Ending::Classified(Outcome::Success);
    const FAIL: Ending = Ending::Classified(Outcome::Failure);
    const IGNORED: Ending = Ending::Classified(Outcome::Ignored);

    fn hystrix() -> CircuitCore {
        CircuitCore::new(BreakerConfig::default())
    }

    /// Admits and records one call at `now`.
    fn call(core: &CircuitCore, ending: Ending, now: u64) -> Result<Option<Transition>, Refusal> {
        let (permit, _) = core.acquire(now);
        Ok(core.record(permit?, ending, MS, now))
    }

    fn trip(core: &CircuitCore, now: u64) {
        for _ in 0..20 {
            let _ = call(core, FAIL, now);
        }
        assert_eq!(core.state(), State::Open);
    }

    #[test]
    fn below_the_volume_threshold_nothing_trips() {
        let core = hystrix();
        for i in 0..19 {
            assert_eq!(call(&core, FAIL, i * MS), Ok(None));
        }
        assert_eq!(core.state(), State::Closed);
        assert_eq!(core.counts(19 * MS).failures, 19);
    }

    #[test]
    fn exactly_at_the_threshold_opens() {
        let core = hystrix();
        for _ in 0..10 {
            call(&core, OK, 0).unwrap();
        }
        for _ in 0..9 {
            assert_eq!(call(&core, FAIL, 0), Ok(None));
        }
        // 10 failures of 20 calls: 50 % ≥ 50 %.
        let opened = call(&core, FAIL, 0).unwrap();
        assert_eq!(
            opened,
            Some(Transition {
                from: State::Closed,
                to: State::Open
            })
        );

        let core = hystrix();
        for _ in 0..11 {
            call(&core, OK, 0).unwrap();
        }
        for _ in 0..9 {
            call(&core, FAIL, 0).unwrap();
        }
        assert_eq!(core.state(), State::Closed, "9 of 20 is 45 %");
    }

    #[test]
    fn old_buckets_roll_out_of_the_window() {
        let core = hystrix();
        for _ in 0..15 {
            call(&core, FAIL, 0).unwrap(); // bucket [0 s, 1 s)
        }
        // At 10 s the first bucket has rolled out: 5 more failures make only 5 in the window.
        for _ in 0..5 {
            call(&core, FAIL, 10 * S).unwrap();
        }
        assert_eq!(core.state(), State::Closed);
        assert_eq!(core.counts(10 * S).calls, 5);
        // Within the window they add up.
        let core = hystrix();
        for _ in 0..15 {
            call(&core, FAIL, 0).unwrap();
        }
        for _ in 0..5 {
            call(&core, FAIL, 9_999 * MS).unwrap();
        }
        assert_eq!(core.state(), State::Open);
    }

    #[test]
    fn open_rejects_until_strictly_after_the_sleep_window() {
        let core = hystrix();
        trip(&core, S);
        let until = S + 5 * S;
        assert_eq!(
            core.acquire(S + 1).0,
            Err(Refusal::Open { until_ns: until })
        );
        assert_eq!(
            core.acquire(until).0,
            Err(Refusal::Open { until_ns: until })
        );
        let (trial, transition) = core.acquire(until + 1);
        assert!(trial.unwrap().trial());
        assert_eq!(
            transition,
            Some(Transition {
                from: State::Open,
                to: State::HalfOpen
            })
        );
        // Exactly one trial: everyone else is refused while it runs.
        for _ in 0..10 {
            assert_eq!(core.acquire(until + 2).0, Err(Refusal::TrialsBusy));
        }
    }

    #[test]
    fn a_failed_trial_reopens_with_a_fresh_sleep_window() {
        let core = hystrix();
        trip(&core, 0);
        let (trial, _) = core.acquire(5 * S + 1);
        let t = 7 * S;
        let reopened = core.record(trial.unwrap(), FAIL, MS, t);
        assert_eq!(
            reopened,
            Some(Transition {
                from: State::HalfOpen,
                to: State::Open
            })
        );
        assert_eq!(
            core.acquire(t + 5 * S).0,
            Err(Refusal::Open {
                until_ns: t + 5 * S
            })
        );
        assert!(core.acquire(t + 5 * S + 1).0.unwrap().trial());
    }

    #[test]
    fn a_cancelled_trial_reopens_but_a_cancelled_call_counts_nothing() {
        let core = hystrix();
        let (permit, _) = core.acquire(0);
        assert_eq!(core.record(permit.unwrap(), Ending::Cancelled, MS, 0), None);
        assert_eq!(core.counts(0).calls, 0);
        trip(&core, 0);
        let (trial, _) = core.acquire(5 * S + 1);
        assert_eq!(
            core.record(trial.unwrap(), Ending::Cancelled, MS, 6 * S),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Open
            })
        );
    }

    #[test]
    fn a_successful_trial_closes_and_resets_the_window() {
        let core = hystrix();
        trip(&core, 0);
        let (trial, _) = core.acquire(5 * S + 1);
        let closed = core.record(trial.unwrap(), OK, MS, 6 * S);
        assert_eq!(
            closed,
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed
            })
        );
        assert_eq!(core.counts(6 * S).calls, 0, "window starts empty");
        // The 20 old failures are gone: 19 new ones do not trip.
        for _ in 0..19 {
            call(&core, FAIL, 6 * S).unwrap();
        }
        assert_eq!(core.state(), State::Closed);
    }

    #[test]
    fn an_ignored_trial_frees_its_slot() {
        let core = hystrix();
        trip(&core, 0);
        let (trial, _) = core.acquire(5 * S + 1);
        assert_eq!(core.acquire(5 * S + 2).0, Err(Refusal::TrialsBusy));
        assert_eq!(core.record(trial.unwrap(), IGNORED, MS, 6 * S), None);
        assert_eq!(core.state(), State::HalfOpen);
        assert!(core.acquire(6 * S).0.unwrap().trial());
    }

    #[test]
    fn several_trials_must_all_succeed() {
        let core = CircuitCore::new(BreakerConfig::default().trials(3));
        trip(&core, 0);
        let trials: Vec<Permit> = (0..3).map(|_| core.acquire(5 * S + 1).0.unwrap()).collect();
        assert_eq!(core.acquire(5 * S + 1).0, Err(Refusal::TrialsBusy));
        assert_eq!(core.record(trials[0], OK, MS, 6 * S), None);
        assert_eq!(core.record(trials[1], OK, MS, 6 * S), None);
        assert_eq!(
            core.record(trials[2], OK, MS, 6 * S).map(|t| t.to),
            Some(State::Closed)
        );
    }

    #[test]
    fn a_stale_trial_cannot_decide_a_later_period() {
        let core = hystrix();
        trip(&core, 0);
        let (trial, _) = core.acquire(5 * S + 1);
        core.reset();
        trip(&core, 6 * S);
        assert_eq!(core.record(trial.unwrap(), OK, MS, 7 * S), None);
        assert_eq!(core.state(), State::Open);
    }

    #[test]
    fn late_results_of_calls_admitted_before_the_trip_change_nothing() {
        let core = hystrix();
        let (early, _) = core.acquire(0);
        trip(&core, 0);
        assert_eq!(core.record(early.unwrap(), OK, MS, S), None);
        assert_eq!(core.state(), State::Open);
    }

    #[test]
    fn the_open_duration_grows_on_consecutive_reopens() {
        let core =
            CircuitCore::new(BreakerConfig::default().open_backoff(2.0, Duration::from_secs(20)));
        trip(&core, 0);
        let mut t = 0;
        let mut durations = Vec::new();
        let mut open_for = 5 * S;
        for _ in 0..4 {
            t += open_for + 1;
            let (trial, _) = core.acquire(t);
            core.record(trial.unwrap(), FAIL, MS, t);
            let Err(Refusal::Open { until_ns }) = core.acquire(t).0 else {
                panic!("not open")
            };
            open_for = until_ns - t;
            durations.push(open_for / S);
        }
        assert_eq!(durations, [10, 20, 20, 20]);
        // A close resets the growth.
        t += open_for + 1;
        let (trial, _) = core.acquire(t);
        core.record(trial.unwrap(), OK, MS, t);
        trip(&core, t);
        assert_eq!(
            core.acquire(t).0,
            Err(Refusal::Open {
                until_ns: t + 5 * S
            })
        );
    }

    #[test]
    fn slow_calls_trip_and_a_slow_trial_fails() {
        let core = CircuitCore::new(
            BreakerConfig::default()
                .minimum_calls(10)
                .slow_calls(Duration::from_millis(100), 80.0),
        );
        for i in 0..10u64 {
            let (permit, _) = core.acquire(0);
            let elapsed = if i < 2 { MS } else { 101 * MS }; // 8 of 10 slow
            core.record(permit.unwrap(), OK, elapsed, 0);
        }
        assert_eq!(core.state(), State::Open);
        assert_eq!(core.counts(0).slow, 8);
        let (trial, _) = core.acquire(5 * S + 1);
        let reopened = core.record(trial.unwrap(), OK, 200 * MS, 6 * S);
        assert_eq!(reopened.map(|t| t.to), Some(State::Open));
    }

    #[test]
    fn a_count_window_holds_the_last_calls() {
        let core = CircuitCore::new(
            BreakerConfig::default()
                .window(Window::Count { calls: 10 })
                .minimum_calls(10),
        );
        for _ in 0..4 {
            call(&core, FAIL, 0).unwrap();
        }
        for _ in 0..10 {
            call(&core, OK, 0).unwrap(); // the failures are pushed out
        }
        for _ in 0..4 {
            call(&core, FAIL, 100 * S).unwrap(); // age does not matter
        }
        assert_eq!(core.state(), State::Closed, "4 of 10");
        call(&core, FAIL, 100 * S).unwrap();
        assert_eq!(core.state(), State::Open, "5 of 10");
    }

    #[test]
    fn forced_and_passive_modes() {
        let core = hystrix();
        core.set_mode(Mode::ForcedOpen);
        assert_eq!(core.acquire(0).0, Err(Refusal::Forced));
        assert_eq!(core.state(), State::Open);

        core.set_mode(Mode::ForcedClosed);
        for _ in 0..100 {
            call(&core, FAIL, 0).unwrap();
        }
        assert_eq!(core.state(), State::Closed, "forced closed never trips");
        assert_eq!(core.counts(0).failures, 100, "but still counts");

        let core = hystrix();
        core.set_mode(Mode::Disabled);
        for _ in 0..100 {
            call(&core, FAIL, 0).unwrap();
        }
        assert_eq!(core.counts(0).calls, 0, "disabled counts nothing");

        let core = hystrix();
        core.set_mode(Mode::MetricsOnly);
        for _ in 0..100 {
            call(&core, FAIL, 0).unwrap();
        }
        assert_eq!(core.state(), State::Closed);
        assert_eq!(core.counts(0).failures, 100);

        // Back to normal from forced open: closed, empty.
        let core = hystrix();
        core.set_mode(Mode::ForcedOpen);
        assert_eq!(
            core.set_mode(Mode::Normal),
            Some(Transition {
                from: State::Open,
                to: State::Closed
            })
        );
        assert!(core.acquire(0).0.is_ok());
    }
}
