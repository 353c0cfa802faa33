//! Every configuration from TOML, YAML and JSON; invalid values fail naming the field.

use std::time::Duration;

use seawall::balance::PickerKind;
use seawall::breaker::{BreakerConfig, Mode, Window};
use seawall::config::UpstreamConfig;
use seawall::retry::{Backoff, BudgetConfig, RetryConfig};

const TOML: &str = r#"
picker = "least-conn"
per_try_timeout = "300ms"
deadline = "2s"
wait_for_endpoints = "1.5s"

[retry]
max_attempts = 4
backoff = { base = "10ms", max = "1s" }
budget = { ratio = 0.5, min_retries_per_sec = 3, ttl = "20s" }
replay_cap = 1024
max_server_wait = "3s"
hedge_after = "150ms"

[endpoint_breaker]
window = { length = "30s", buckets = 15 }
minimum_calls = 7
failure_rate = 40.5
slow_calls = { threshold = "800ms", percent = 90 }
open_for = "2s"
open_backoff = { multiplier = 2.0, max = "1m" }
trials = 3
mode = "metrics-only"
"#;

const YAML: &str = r#"
picker: least-conn
per_try_timeout: 300ms
deadline: 2s
wait_for_endpoints: 1.5s
retry:
  max_attempts: 4
  backoff: { base: 10ms, max: 1s }
  budget: { ratio: 0.5, min_retries_per_sec: 3, ttl: 20s }
  replay_cap: 1024
  max_server_wait: 3s
  hedge_after: 150ms
endpoint_breaker:
  window: { length: 30s, buckets: 15 }
  minimum_calls: 7
  failure_rate: 40.5
  slow_calls: { threshold: 800ms, percent: 90 }
  open_for: 2s
  open_backoff: { multiplier: 2.0, max: 1m }
  trials: 3
  mode: metrics-only
"#;

const JSON: &str = r#"{
  "picker": "least-conn",
  "per_try_timeout": "300ms",
  "deadline": "2s",
  "wait_for_endpoints": "1.5s",
  "retry": {
    "max_attempts": 4,
    "backoff": { "base": "10ms", "max": "1s" },
    "budget": { "ratio": 0.5, "min_retries_per_sec": 3, "ttl": "20s" },
    "replay_cap": 1024,
    "max_server_wait": "3s",
    "hedge_after": "150ms"
  },
  "endpoint_breaker": {
    "window": { "length": "30s", "buckets": 15 },
    "minimum_calls": 7,
    "failure_rate": 40.5,
    "slow_calls": { "threshold": "800ms", "percent": 90 },
    "open_for": "2s",
    "open_backoff": { "multiplier": 2.0, "max": "1m" },
    "trials": 3,
    "mode": "metrics-only"
  }
}"#;

fn expected_breaker() -> BreakerConfig {
    BreakerConfig::default()
        .window(Window::Time {
            length: Duration::from_secs(30),
            buckets: 15,
        })
        .minimum_calls(7)
        .failure_rate(40.5)
        .slow_calls(Duration::from_millis(800), 90.0)
        .open_for(Duration::from_secs(2))
        .open_backoff(2.0, Duration::from_secs(60))
        .trials(3)
        .mode(Mode::MetricsOnly)
}

fn expected_retry() -> String {
    let retry = RetryConfig::default()
        .max_attempts(4)
        .backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_secs(1),
        ))
        .budget(
            BudgetConfig::default()
                .ratio(0.5)
                .min_retries_per_sec(3)
                .ttl(Duration::from_secs(20)),
        )
        .replay_cap(1024)
        .max_server_wait(Duration::from_secs(3))
        .hedge_after(Duration::from_millis(150));
    format!("{retry:?}")
}

fn check(config: UpstreamConfig) {
    assert_eq!(config.picker, PickerKind::LeastConn);
    assert_eq!(config.per_try_timeout, Some(Duration::from_millis(300)));
    assert_eq!(config.deadline, Some(Duration::from_secs(2)));
    assert_eq!(config.wait_for_endpoints, Some(Duration::from_millis(1500)));
    assert_eq!(config.endpoint_breaker, Some(expected_breaker()));
    assert_eq!(format!("{:?}", config.retry.unwrap()), expected_retry());
}

#[test]
fn one_upstream_config_reads_the_same_from_toml_yaml_and_json() {
    check(toml::from_str(TOML).unwrap());
    check(serde_yaml_ng::from_str(YAML).unwrap());
    check(serde_json::from_str(JSON).unwrap());
}

#[test]
fn left_out_fields_keep_their_defaults() {
    let config: UpstreamConfig = toml::from_str("").unwrap();
    assert_eq!(config.picker, PickerKind::P2c);
    assert!(config.retry.is_none() && config.endpoint_breaker.is_none());
    let breaker: BreakerConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(breaker, BreakerConfig::default());
    let retry: RetryConfig = serde_yaml_ng::from_str("{}").unwrap();
    assert_eq!(
        format!("{retry:?}"),
        format!("{:?}", RetryConfig::default())
    );
}

/// Each bad value, in TOML, YAML and JSON, with the text the error must contain.
#[test]
fn invalid_values_fail_naming_the_field_in_every_format() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (toml, yaml, json, expected)
        (
            "[endpoint_breaker]\nfailure_rate = 150",
            "endpoint_breaker: { failure_rate: 150 }",
            r#"{"endpoint_breaker": {"failure_rate": 150}}"#,
            "`failure_rate` must be in (0, 100]",
        ),
        (
            "[endpoint_breaker]\nopen_for = \"5 parsecs\"",
            "endpoint_breaker: { open_for: 5 parsecs }",
            r#"{"endpoint_breaker": {"open_for": "5 parsecs"}}"#,
            "`open_for` is wrong: `5 parsecs` is not a duration",
        ),
        (
            "[endpoint_breaker]\nwindow = { calls = 5, length = \"10s\" }",
            "endpoint_breaker: { window: { calls: 5, length: 10s } }",
            r#"{"endpoint_breaker": {"window": {"calls": 5, "length": "10s"}}}"#,
            "`window` takes either `calls`",
        ),
        (
            "[endpoint_breaker]\nwindow = { length = \"10s\", buckets = 0 }",
            "endpoint_breaker: { window: { length: 10s, buckets: 0 } }",
            r#"{"endpoint_breaker": {"window": {"length": "10s", "buckets": 0}}}"#,
            "`window.buckets` must be between 1 and 1000",
        ),
        (
            "[retry]\nbudget = { ratio = -1 }",
            "retry: { budget: { ratio: -1 } }",
            r#"{"retry": {"budget": {"ratio": -1}}}"#,
            "`budget.ratio` must be between 0 and 1000",
        ),
        (
            "[retry]\nmax_attempts = 0",
            "retry: { max_attempts: 0 }",
            r#"{"retry": {"max_attempts": 0}}"#,
            "`max_attempts` must be at least 1",
        ),
        (
            "[retry]\nbackoff = { base = \"1s\", max = \"10ms\" }",
            "retry: { backoff: { base: 1s, max: 10ms } }",
            r#"{"retry": {"backoff": {"base": "1s", "max": "10ms"}}}"#,
            "`backoff.max` must not be shorter than `base`",
        ),
        (
            "deadline = \"soon\"",
            "deadline: soon",
            r#"{"deadline": "soon"}"#,
            "`soon` is not a duration",
        ),
        (
            "picker = \"random\"",
            "picker: random",
            r#"{"picker": "random"}"#,
            "unknown picker `random`",
        ),
        (
            "[endpoint_breaker]\nfailur_rate = 50",
            "endpoint_breaker: { failur_rate: 50 }",
            r#"{"endpoint_breaker": {"failur_rate": 50}}"#,
            "unknown field `failur_rate`",
        ),
        (
            "[endpoint_breaker]\nmode = \"sometimes\"",
            "endpoint_breaker: { mode: sometimes }",
            r#"{"endpoint_breaker": {"mode": "sometimes"}}"#,
            "unknown variant `sometimes`",
        ),
    ];
    for (toml_text, yaml_text, json_text, expected) in cases {
        let errors = [
            toml::from_str::<UpstreamConfig>(toml_text)
                .err()
                .map(|e| e.to_string()),
            serde_yaml_ng::from_str::<UpstreamConfig>(yaml_text)
                .err()
                .map(|e| e.to_string()),
            serde_json::from_str::<UpstreamConfig>(json_text)
                .err()
                .map(|e| e.to_string()),
        ];
        for (format, error) in ["toml", "yaml", "json"].iter().zip(errors) {
            let error = error.unwrap_or_else(|| panic!("{format}: {expected:?} was accepted"));
            assert!(
                error.contains(expected),
                "{format}: {error:?} should contain {expected:?}"
            );
        }
    }
}

#[cfg(feature = "etcd")]
#[test]
fn etcd_config_needs_an_endpoint() {
    use seawall::discover::etcd::EtcdConfig;
    let config: EtcdConfig = toml::from_str(
        "endpoints = [\"http://127.0.0.1:2379\"]\nconnect_timeout = \"1s\"\nprefix = \"/prod\"",
    )
    .unwrap();
    assert_eq!(config.key("users", "u1"), "/prod/users/u1");
    let error = toml::from_str::<EtcdConfig>("endpoints = []").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("`endpoints` needs at least one URL"),
        "{error}"
    );
}

#[cfg(feature = "dns")]
#[test]
fn dns_config_bounds_must_be_ordered() {
    use seawall::discover::dns::DnsConfig;
    let ok: Result<DnsConfig, _> =
        serde_json::from_str(r#"{"servers": ["127.0.0.1:53"], "min_ttl": "2s", "max_ttl": "30s"}"#);
    assert!(ok.is_ok(), "{ok:?}");
    let error = serde_json::from_str::<DnsConfig>(
        r#"{"servers": ["127.0.0.1:53"], "min_ttl": "2m", "max_ttl": "30s"}"#,
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("`max_ttl` must not be shorter"),
        "{error}"
    );
}
