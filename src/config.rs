//! Configuration files: every seawall configuration from TOML, YAML or JSON (feature `serde`).
//!
//! [`BreakerConfig`], [`RetryConfig`] (with its [`Backoff`] and [`BudgetConfig`]),
//! [`UpstreamConfig`], and — with their features — `EtcdConfig` and `DnsConfig` implement
//! `serde::Deserialize`. Every field is optional and defaults to what the type's `default()`
//! (or constructor) gives; an unknown field is an error, so a typo does not silently keep a
//! default. Durations are human-readable strings: `"250ms"`, `"5s"`, `"1.5s"`, `"2m"`, `"1h"`
//! (also `ns`, `us`). A value out of range fails with an error that names the field:
//!
//! ```
//! use seawall::breaker::BreakerConfig;
//!
//! let config: BreakerConfig = serde_json::from_str(
//!     r#"{ "window": { "calls": 20 }, "failure_rate": 50, "open_for": "5s" }"#,
//! ).unwrap();
//! assert_eq!(config, BreakerConfig::default()
//!     .window(seawall::breaker::Window::Count { calls: 20 })
//!     .open_for(std::time::Duration::from_secs(5)));
//!
//! let error = serde_json::from_str::<BreakerConfig>(r#"{ "failure_rate": 150 }"#).unwrap_err();
//! assert!(error.to_string().contains("`failure_rate` must be in (0, 100]"), "{error}");
//! ```
//!
//! The same in TOML, as the example cluster's `cluster.toml` has it:
//!
//! ```toml
//! [users]
//! picker = "least-conn"
//! per_try_timeout = "300ms"
//! deadline = "2s"
//!
//! [users.retry]
//! max_attempts = 3
//! backoff = { base = "25ms", max = "250ms" }
//! budget = { ratio = 0.2, min_retries_per_sec = 10, ttl = "10s" }
//!
//! [users.endpoint_breaker]
//! window = { calls = 5 }
//! minimum_calls = 3
//! failure_rate = 60
//! open_for = "5s"
//! ```
//!
//! For your own configuration structs, [`duration`] and [`option_duration`] read the same
//! duration strings: `#[serde(with = "seawall::config::duration")]`.
//!
//! A type mismatch (a string where a number belongs) is reported by the format crate, which
//! gives the line and column (TOML, YAML) but not always the key (JSON);
//! `serde_path_to_error` adds the full path when you need it.

use std::fmt;
use std::time::Duration;

use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, Serialize};

use crate::balance::PickerKind;
use crate::breaker::{BreakerConfig, Mode, Window};
#[cfg(feature = "http")]
use crate::retry::RetryConfig;
use crate::retry::{Backoff, BudgetConfig};

/// A duration string could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError {
    text: String,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a duration: write a number and a unit, like 250ms, 5s, 1.5s, 2m or 1h",
            self.text
        )
    }
}

impl std::error::Error for DurationError {}

/// Reads `250ms`, `5s`, `1.5s`, `2m`, `1h`, `100us`, `10ns` (spaces allowed between number
/// and unit). A bare number is refused: its unit would be a guess.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use seawall::config::parse_duration;
///
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("250 ms"), Ok(Duration::from_millis(250)));
/// assert!(parse_duration("5").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let error = || DurationError {
        text: text.to_owned(),
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(error)?;
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| error())?;
    let unit_secs = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        _ => return Err(error()),
    };
    Duration::try_from_secs_f64(number * unit_secs).map_err(|_| error())
}

/// `#[serde(with = "seawall::config::duration")]`: a [`Duration`] as a string like `"5s"`.
pub mod duration {
    use super::*;

    /// Reads a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map_err(D::Error::custom)
    }

    /// Writes a duration as milliseconds (`"250ms"`), or seconds when whole (`"5s"`).
    pub fn serialize<S: serde::Serializer>(
        duration: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        format_duration(*duration).serialize(serializer)
    }
}

/// `#[serde(default, with = "seawall::config::option_duration")]`: an optional duration
/// string.
pub mod option_duration {
    use super::*;

    /// Reads an optional duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| parse_duration(&text).map_err(D::Error::custom))
            .transpose()
    }

    /// Writes an optional duration like [`duration::serialize`].
    pub fn serialize<S: serde::Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        duration.map(format_duration).serialize(serializer)
    }
}

fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{}ns", duration.as_nanos())
    }
}

/// A field's value was out of range, or not what the field takes.
#[derive(Debug)]
struct Invalid {
    config: &'static str,
    field: String,
    reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} config: `{}` {}",
            self.config, self.field, self.reason
        )
    }
}

fn invalid(config: &'static str, field: &str, reason: impl fmt::Display) -> Invalid {
    Invalid {
        config,
        field: field.to_owned(),
        reason: reason.to_string(),
    }
}

/// Reads the duration string of `field`.
fn time(config: &'static str, field: &str, text: &str) -> Result<Duration, Invalid> {
    parse_duration(text).map_err(|e| invalid(config, field, format_args!("is wrong: {e}")))
}

fn time_opt(
    config: &'static str,
    field: &str,
    text: Option<&String>,
) -> Result<Option<Duration>, Invalid> {
    text.map(|t| time(config, field, t)).transpose()
}

// ---------------------------------------------------------------------------------------------
// Breakers

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerFile {
    window: Option<WindowFile>,
    minimum_calls: Option<u32>,
    failure_rate: Option<f64>,
    slow_calls: Option<SlowCallsFile>,
    open_for: Option<String>,
    open_backoff: Option<OpenBackoffFile>,
    trials: Option<u32>,
    mode: Option<ModeName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    calls: Option<u32>,
    length: Option<String>,
    buckets: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlowCallsFile {
    threshold: String,
    percent: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBackoffFile {
    multiplier: f64,
    max: String,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum ModeName {
    Normal,
    ForcedOpen,
    ForcedClosed,
    Disabled,
    MetricsOnly,
}

impl From<ModeName> for Mode {
    fn from(name: ModeName) -> Self {
        match name {
            ModeName::Normal => Self::Normal,
            ModeName::ForcedOpen => Self::ForcedOpen,
            ModeName::ForcedClosed => Self::ForcedClosed,
            ModeName::Disabled => Self::Disabled,
            ModeName::MetricsOnly => Self::MetricsOnly,
        }
    }
}

const BREAKER: &str = "breaker";

impl BreakerFile {
    fn into_config(self) -> Result<BreakerConfig, Invalid> {
        let mut config = BreakerConfig::default();
        if let Some(window) = self.window {
            config = config.window(match (window.calls, window.length) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        BREAKER,
                        "window",
                        "takes either `calls` (a count window) or `length` and `buckets` (a time window), not both",
                    ));
                }
                (Some(calls), None) => {
                    if window.buckets.is_some() {
                        return Err(invalid(
                            BREAKER,
                            "window.buckets",
                            "belongs to a time window (`length`), not to `calls`",
                        ));
                    }
                    Window::Count { calls }
                }
                (None, Some(length)) => Window::Time {
                    length: time(BREAKER, "window.length", &length)?,
                    buckets: window.buckets.unwrap_or(10),
                },
                (None, None) => {
                    return Err(invalid(
                        BREAKER,
                        "window",
                        "needs `calls` (a count window) or `length` (a time window)",
                    ));
                }
            });
        }
        if let Some(calls) = self.minimum_calls {
            config = config.minimum_calls(calls);
        }
        if let Some(rate) = self.failure_rate {
            config = config.failure_rate(rate);
        }
        if let Some(slow) = self.slow_calls {
            let threshold = time(BREAKER, "slow_calls.threshold", &slow.threshold)?;
            config = config.slow_calls(threshold, slow.percent);
        }
        if let Some(open_for) = self.open_for {
            config = config.open_for(time(BREAKER, "open_for", &open_for)?);
        }
        if let Some(backoff) = self.open_backoff {
            let max = time(BREAKER, "open_backoff.max", &backoff.max)?;
            config = config.open_backoff(backoff.multiplier, max);
        }
        if let Some(trials) = self.trials {
            config = config.trials(trials);
        }
        if let Some(mode) = self.mode {
            config = config.mode(mode.into());
        }
        config
            .validate()
            .map_err(|e| invalid(BREAKER, e.field(), e.reason()))?;
        Ok(config)
    }
}

impl<'de> Deserialize<'de> for BreakerConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BreakerFile::deserialize(deserializer)?
            .into_config()
            .map_err(D::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Retries

#[cfg(feature = "http")]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    max_attempts: Option<u32>,
    backoff: Option<BackoffFile>,
    budget: Option<BudgetFile>,
    replay_cap: Option<usize>,
    max_server_wait: Option<String>,
    hedge_after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffFile {
    base: Option<String>,
    max: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetFile {
    ratio: Option<f64>,
    min_retries_per_sec: Option<u32>,
    ttl: Option<String>,
}

const RETRY: &str = "retry";

impl BackoffFile {
    fn into_config(self, prefix: &str) -> Result<Backoff, Invalid> {
        let default = Backoff::default();
        let base = time_opt(RETRY, &format!("{prefix}base"), self.base.as_ref())?
            .unwrap_or(default.base());
        let max = time_opt(RETRY, &format!("{prefix}max"), self.max.as_ref())?
            .unwrap_or_else(|| default.max().max(base));
        if max < base {
            return Err(invalid(
                RETRY,
                &format!("{prefix}max"),
                "must not be shorter than `base`",
            ));
        }
        Ok(Backoff::new(base, max))
    }
}

impl BudgetFile {
    fn into_config(self, prefix: &str) -> Result<BudgetConfig, Invalid> {
        let mut budget = BudgetConfig::default();
        if let Some(ratio) = self.ratio {
            if !(ratio.is_finite() && (0.0..=1000.0).contains(&ratio)) {
                return Err(invalid(
                    RETRY,
                    &format!("{prefix}ratio"),
                    "must be between 0 and 1000 (0.2 is 20 % of requests)",
                ));
            }
            budget = budget.ratio(ratio);
        }
        if let Some(n) = self.min_retries_per_sec {
            budget = budget.min_retries_per_sec(n);
        }
        if let Some(ttl) = time_opt(RETRY, &format!("{prefix}ttl"), self.ttl.as_ref())? {
            if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
                return Err(invalid(
                    RETRY,
                    &format!("{prefix}ttl"),
                    "must be between 1s and 60s",
                ));
            }
            budget = budget.ttl(ttl);
        }
        Ok(budget)
    }
}

#[cfg(feature = "http")]
impl RetryFile {
    fn into_config(self) -> Result<RetryConfig, Invalid> {
        let mut config = RetryConfig::default();
        if let Some(attempts) = self.max_attempts {
            if attempts == 0 {
                return Err(invalid(
                    RETRY,
                    "max_attempts",
                    "must be at least 1 (the first attempt counts)",
                ));
            }
            config = config.max_attempts(attempts);
        }
        if let Some(backoff) = self.backoff {
            config = config.backoff(backoff.into_config("backoff.")?);
        }
        if let Some(budget) = self.budget {
            config = config.budget(budget.into_config("budget.")?);
        }
        if let Some(cap) = self.replay_cap {
            config = config.replay_cap(cap);
        }
        if let Some(wait) = time_opt(RETRY, "max_server_wait", self.max_server_wait.as_ref())? {
            config = config.max_server_wait(wait);
        }
        if let Some(delay) = time_opt(RETRY, "hedge_after", self.hedge_after.as_ref())? {
            if delay.is_zero() {
                return Err(invalid(
                    RETRY,
                    "hedge_after",
                    "must be longer than zero (leave it out for no hedging)",
                ));
            }
            config = config.hedge_after(delay);
        }
        Ok(config)
    }
}

#[cfg(feature = "http")]
impl<'de> Deserialize<'de> for RetryConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RetryFile::deserialize(deserializer)?
            .into_config()
            .map_err(D::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Backoff {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BackoffFile::deserialize(deserializer)?
            .into_config("")
            .map_err(D::Error::custom)
    }
}

impl<'de> Deserialize<'de> for BudgetConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BudgetFile::deserialize(deserializer)?
            .into_config("")
            .map_err(D::Error::custom)
    }
}

impl<'de> Deserialize<'de> for PickerKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(D::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Upstreams

/// Everything [`Upstream`](crate::Upstream) is built from, as data: read it from a file and
/// hand it to [`Upstream::from_config`](crate::Upstream::from_config).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use seawall::config::UpstreamConfig;
///
/// let config: UpstreamConfig = serde_json::from_str(r#"{
///     "picker": "round-robin",
///     "per_try_timeout": "300ms",
///     "deadline": "2s",
///     "retry": { "max_attempts": 2 },
///     "endpoint_breaker": { "window": { "calls": 5 }, "minimum_calls": 3 }
/// }"#).unwrap();
/// assert_eq!(config.deadline, Some(Duration::from_secs(2)));
/// ```
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `round-robin`, `least-conn` or `p2c` (the default).
    #[serde(default)]
    pub picker: PickerKind,
    /// Per-endpoint breakers (outlier ejection); none when absent.
    #[serde(default)]
    pub endpoint_breaker: Option<BreakerConfig>,
    /// Retries; [`RetryConfig::default`] when absent.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// The time one attempt may take; bounded only by the deadline when absent.
    #[serde(default, with = "option_duration")]
    pub per_try_timeout: Option<Duration>,
    /// The time the whole call may take, retries included; 15 s when absent.
    #[serde(default, with = "option_duration")]
    pub deadline: Option<Duration>,
    /// How long a call waits for discovery's first endpoints; no wait when absent.
    #[serde(default, with = "option_duration")]
    pub wait_for_endpoints: Option<Duration>,
}

// ---------------------------------------------------------------------------------------------
// Discovery

#[cfg(feature = "etcd")]
mod etcd_config {
    use super::*;
    use crate::discover::etcd::EtcdConfig;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct EtcdFile {
        endpoints: Vec<String>,
        connect_timeout: Option<String>,
        request_timeout: Option<String>,
        backoff: Option<BackoffFile>,
        prefix: Option<String>,
    }

    const ETCD: &str = "etcd";

    impl<'de> Deserialize<'de> for EtcdConfig {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let file = EtcdFile::deserialize(deserializer)?;
            let read = || -> Result<EtcdConfig, Invalid> {
                if file.endpoints.is_empty() {
                    return Err(invalid(
                        ETCD,
                        "endpoints",
                        "needs at least one URL, like http://127.0.0.1:2379",
                    ));
                }
                let mut config = EtcdConfig::new(file.endpoints.iter().cloned());
                if let Some(t) = time_opt(ETCD, "connect_timeout", file.connect_timeout.as_ref())? {
                    config = config.connect_timeout(t);
                }
                if let Some(t) = time_opt(ETCD, "request_timeout", file.request_timeout.as_ref())? {
                    config = config.request_timeout(t);
                }
                if let Some(backoff) = &file.backoff {
                    let min = time_opt(ETCD, "backoff.base", backoff.base.as_ref())?
                        .unwrap_or(Duration::from_millis(100));
                    let max = time_opt(ETCD, "backoff.max", backoff.max.as_ref())?
                        .unwrap_or(Duration::from_secs(5));
                    if max < min {
                        return Err(invalid(
                            ETCD,
                            "backoff.max",
                            "must not be shorter than `base`",
                        ));
                    }
                    config = config.backoff(min, max);
                }
                if let Some(prefix) = &file.prefix {
                    config = config.prefix(prefix.clone());
                }
                Ok(config)
            };
            read().map_err(D::Error::custom)
        }
    }
}

#[cfg(feature = "dns")]
mod dns_config {
    use std::net::SocketAddr;

    use super::*;
    use crate::discover::dns::DnsConfig;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct DnsFile {
        servers: Option<Vec<SocketAddr>>,
        min_ttl: Option<String>,
        max_ttl: Option<String>,
        error_retry: Option<String>,
        timeout: Option<String>,
    }

    const DNS: &str = "dns";

    impl<'de> Deserialize<'de> for DnsConfig {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let file = DnsFile::deserialize(deserializer)?;
            let read = || -> Result<DnsConfig, Invalid> {
                let mut config = match &file.servers {
                    Some(servers) => DnsConfig::with_servers(servers.iter().copied()),
                    None => DnsConfig::system()
                        .map_err(|e| invalid(DNS, "servers", format_args!("left out, and {e}")))?,
                };
                let min = time_opt(DNS, "min_ttl", file.min_ttl.as_ref())?
                    .unwrap_or(Duration::from_secs(1));
                let max = time_opt(DNS, "max_ttl", file.max_ttl.as_ref())?
                    .unwrap_or(Duration::from_secs(60));
                if max < min {
                    return Err(invalid(
                        DNS,
                        "max_ttl",
                        "must not be shorter than `min_ttl`",
                    ));
                }
                config = config.ttl_bounds(min, max);
                if let Some(t) = time_opt(DNS, "error_retry", file.error_retry.as_ref())? {
                    config = config.error_retry(t);
                }
                if let Some(t) = time_opt(DNS, "timeout", file.timeout.as_ref())? {
                    config = config.timeout(t);
                }
                Ok(config)
            };
            read().map_err(D::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_every_unit_and_refuse_guesses() {
        let ok = [
            ("10ns", Duration::from_nanos(10)),
            ("100us", Duration::from_micros(100)),
            ("250ms", Duration::from_millis(250)),
            (" 1.5 s ", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
        for text in [
            "",
            "5",
            "s",
            "5 parsecs",
            "-1s",
            "1e3s",
            "1..5s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
    }
}
