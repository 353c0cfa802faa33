use std::fmt;
use std::time::Duration;

/// How a breaker counts recent calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The calls of the last `length`, in `buckets` equal slices that roll out one at a time
    /// (Hystrix). Default: 10 s in 10 buckets.
    Time {
        /// How far back the window reaches.
        length: Duration,
        /// How many slices it is kept in; a whole slice rolls out at once.
        buckets: u32,
    },
    /// The last `calls` calls, however old (resilience4j's count-based window).
    Count {
        /// How many calls the window holds.
        calls: u32,
    },
}

/// How a breaker behaves; see [`Breaker::set_mode`](super::Breaker::set_mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Trips and recovers on its own. The default.
    Normal,
    /// Rejects every call until the mode changes (Hystrix `forceOpen`).
    ForcedOpen,
    /// Admits every call and never trips; still counts (Hystrix `forceClosed`).
    ForcedClosed,
    /// Admits every call and counts nothing.
    Disabled,
    /// Admits every call and counts, and reports when it *would* trip, without tripping
    /// (resilience4j `METRICS_ONLY`).
    MetricsOnly,
}

/// A breaker's configuration. Defaults follow Hystrix: a 10 s window in 10 buckets, at least
/// 20 calls, trip at ≥ 50 % failures, 5 s open, then 1 trial call.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use seawall::breaker::{BreakerConfig, Window};
///
/// let config = BreakerConfig::default()
///     .window(Window::Count { calls: 50 })
///     .minimum_calls(10)
///     .failure_rate(40.0)
///     .open_for(Duration::from_secs(2))
///     .open_backoff(2.0, Duration::from_secs(60));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub(crate) window: Window,
    pub(crate) minimum_calls: u32,
    pub(crate) failure_rate: f64,
    pub(crate) slow_call: Option<(Duration, f64)>,
    pub(crate) open_for: Duration,
    pub(crate) backoff_multiplier: f64,
    pub(crate) max_open_for: Duration,
    pub(crate) trials: u32,
    pub(crate) mode: Mode,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Window::Time {
                length: Duration::from_secs(10),
                buckets: 10,
            },
            minimum_calls: 20,
            failure_rate: 50.0,
            slow_call: None,
            open_for: Duration::from_secs(5),
            backoff_multiplier: 1.0,
            max_open_for: Duration::from_secs(5),
            trials: 1,
            mode: Mode::Normal,
        }
    }
}

impl BreakerConfig {
    /// The window over which failures are counted. Default is
    /// `Window::Time { length: 10 s, buckets: 10 }`.
    pub fn window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }

    /// The fewest calls in the window before the breaker may trip (Hystrix
    /// `requestVolumeThreshold`). Default is 20.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = calls;
        self
    }

    /// The failure percentage at or above which the breaker trips. Default is 50.
    pub fn failure_rate(mut self, percent: f64) -> Self {
        self.failure_rate = percent;
        self
    }

    /// Counts calls slower than `threshold` (strictly) as slow, and trips when at least
    /// `percent` of the window's calls are slow (resilience4j). Default is off.
    pub fn slow_calls(mut self, threshold: Duration, percent: f64) -> Self {
        self.slow_call = Some((threshold, percent));
        self
    }

    /// How long the breaker stays open before it admits a trial (Hystrix
    /// `sleepWindowInMilliseconds`); it leaves open only strictly after this. Default is 5 s.
    pub fn open_for(mut self, duration: Duration) -> Self {
        self.open_for = duration;
        self.max_open_for = self.max_open_for.max(duration);
        self
    }

    /// Grows the open duration on consecutive re-opens (a failed trial): the k-th re-open lasts
    /// `open_for × multiplier^k`, capped at `max`. A close resets the growth. Default is no
    /// growth (multiplier 1).
    pub fn open_backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.backoff_multiplier = multiplier;
        self.max_open_for = max;
        self
    }

    /// How many trial calls the half-open breaker admits, across all clones; all must succeed
    /// to close it. Default is 1.
    pub fn trials(mut self, trials: u32) -> Self {
        self.trials = trials;
        self
    }

    /// The mode the breaker starts in. Default is [`Mode::Normal`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Checks every value.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, reason: &'static str| Err(ConfigError { field, reason });
        match self.window {
            Window::Time { length, buckets } => {
                if buckets == 0 || buckets > 1000 {
                    return bad("window.buckets", "must be between 1 and 1000");
                }
                if length < Duration::from_millis(u64::from(buckets)) {
                    return bad("window.length", "must give every bucket at least 1 ms");
                }
            }
            Window::Count { calls } => {
                if calls == 0 || calls > 100_000 {
                    return bad("window.calls", "must be between 1 and 100000");
                }
            }
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 100.0) {
            return bad("failure_rate", "must be in (0, 100]");
        }
        if let Some((_, rate)) = self.slow_call {
            if !(rate > 0.0 && rate <= 100.0) {
                return bad("slow_calls.percent", "must be in (0, 100]");
            }
        }
        if self.open_for.is_zero() {
            return bad("open_for", "must be longer than zero");
        }
        if !(self.backoff_multiplier >= 1.0 && self.backoff_multiplier.is_finite()) {
            return bad("open_backoff.multiplier", "must be a finite number ≥ 1");
        }
        if self.max_open_for < self.open_for {
            return bad("open_backoff.max", "must not be shorter than open_for");
        }
        if self.trials == 0 {
            return bad("trials", "must be at least 1");
        }
        Ok(())
    }

    /// How long the breaker stays open after `reopens` consecutive failed trials.
    pub(crate) fn open_duration(&self, reopens: u32) -> Duration {
        let factor = self.backoff_multiplier.powi(reopens.min(64) as i32);
        let nanos =
            (self.open_for.as_nanos() as f64 * factor).min(self.max_open_for.as_nanos() as f64);
        Duration::from_nanos(nanos as u64).clamp(self.open_for, self.max_open_for)
    }
}

/// A configuration value is out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: &'static str,
}

impl ConfigError {
    /// The field that is out of range.
    pub fn field(&self) -> &str {
        self.field
    }

    /// What the field must be.
    pub fn reason(&self) -> &str {
        self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid breaker config: `{}` {}",
            self.field, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}
