//! Every metric seawall emits, in one place.
//!
//! seawall records through the [`metrics`](https://docs.rs/metrics) facade: install any recorder
//! (for example `metrics-exporter-prometheus`) and these series appear; without one, recording
//! costs a branch. Handles are created once per endpoint when discovery inserts it, never per call.
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `seawall_requests_total` | counter | `upstream`, `endpoint`, `outcome` (`success` \| `failure` \| `ignored` \| `cancelled`) | calls sent to an endpoint, by how they ended |
//! | `seawall_request_duration_seconds` | histogram | `upstream`, `endpoint` | time from the call to its response or error (cancelled calls are not recorded) |
//! | `seawall_in_flight` | gauge | `upstream`, `endpoint` | calls sent to the endpoint and not yet finished or dropped |
//! | `seawall_endpoints` | gauge | `upstream`, `state` (`ready` \| `ejected`) | endpoints in the published set (`ready`), and how many of them per-endpoint breakers have ejected (`ejected`: open or half-open) |
//! | `seawall_breaker_state` | gauge | `breaker`, or `upstream` and `endpoint` | a circuit's state: 0 closed, 1 open, 2 half-open |
//! | `seawall_breaker_transitions_total` | counter | `breaker`, or `upstream` and `endpoint`; `from`, `to` | state changes of a circuit |
//! | `seawall_breaker_rejections_total` | counter | `breaker` | calls a standalone breaker refused |
//! | `seawall_no_endpoints_total` | counter | `upstream` | calls failed at once with [`NoEndpoints`](crate::NoEndpoints) |
//! | `seawall_all_ejected_total` | counter | `upstream` | calls failed at once with [`AllEjected`](crate::AllEjected) (per-endpoint breakers never reject a call themselves: pickers skip ejected endpoints) |
//! | `seawall_retries_total` | counter | `upstream` (the retry layer's name) | retries sent |
//! | `seawall_hedges_total` | counter | `upstream` (the retry layer's name) | hedged attempts sent ([`RetryConfig::hedge_after`](crate::retry::RetryConfig::hedge_after)); also limited by the retry budget |
//! | `seawall_retries_skipped_total` | counter | `upstream`, `reason` (`not_idempotent` \| `attempts_exhausted` \| `pushback` \| `retry_after_too_long` \| `deadline` \| `budget` \| `body_not_replayable`) | retryable outcomes returned without a retry, by why |
//! | `seawall_discovery_changes_total` | counter | `upstream`, `change` (`insert` \| `remove`) | discovery changes applied |
//! | `seawall_discovery_errors_total` | counter | `upstream`, or `source` for a discovery source (a [`Polling`](crate::discover::Polling) source's name, `etcd:<service>`, `dns:<name>`) | errors from a discovery stream, poll, etcd session or DNS lookup; the last good set is kept |
//!
//! `upstream` is the name given to [`Builder::name`](crate::balance::Builder::name); `endpoint` is
//! the discovery key, formatted with `Debug` for generic keys and plainly for addresses and strings.
//!
//! # Reading them
//!
//! With `metrics-exporter-prometheus` (the example cluster serves them at `/metrics`):
//!
//! ```text
//! # success ratio per upstream over 5 minutes
//! sum by (upstream) (rate(seawall_requests_total{outcome="success"}[5m]))
//!   / sum by (upstream) (rate(seawall_requests_total{outcome=~"success|failure"}[5m]))
//! # instances ejected now, and circuits that opened in the last 10 minutes
//! seawall_endpoints{state="ejected"}
//! increase(seawall_breaker_transitions_total{to="open"}[10m])
//! # how much of the load is retries, and why retries were refused
//! sum by (upstream) (rate(seawall_retries_total[5m])) / sum by (upstream) (rate(seawall_requests_total[5m]))
//! sum by (upstream, reason) (rate(seawall_retries_skipped_total[5m]))
//! # p99 per endpoint
//! histogram_quantile(0.99, sum by (upstream, endpoint, le) (rate(seawall_request_duration_seconds_bucket[5m])))
//! ```
//!
//! An alert worth having:
//! `seawall_endpoints{state="ejected"} / ignoring(state) seawall_endpoints{state="ready"} > 0.5`
//! (half an upstream ejected: the rest is taking all of its load).
//! `tests/integration/metrics.rs` reads these series back from a `metrics-util` debugging
//! recorder while a scripted outage opens a circuit, retries and ejects an endpoint.

use metrics::{Counter, Gauge, Histogram, Label};

/// `seawall_requests_total`: calls sent to an endpoint, labelled by outcome.
pub const REQUESTS_TOTAL: &str = "seawall_requests_total";
/// `seawall_request_duration_seconds`: latency of finished calls per endpoint.
pub const REQUEST_DURATION_SECONDS: &str = "seawall_request_duration_seconds";
/// `seawall_in_flight`: unfinished calls per endpoint.
pub const IN_FLIGHT: &str = "seawall_in_flight";
/// `seawall_endpoints`: endpoints in the published set, by state.
pub const ENDPOINTS: &str = "seawall_endpoints";
/// `seawall_breaker_state`: a circuit's state (0 closed, 1 open, 2 half-open).
pub const BREAKER_STATE: &str = "seawall_breaker_state";
/// `seawall_breaker_transitions_total`: state changes of a circuit.
pub const BREAKER_TRANSITIONS_TOTAL: &str = "seawall_breaker_transitions_total";
/// `seawall_breaker_rejections_total`: calls a standalone breaker refused.
pub const BREAKER_REJECTIONS_TOTAL: &str = "seawall_breaker_rejections_total";
/// `seawall_no_endpoints_total`: calls rejected because no endpoint existed.
pub const NO_ENDPOINTS_TOTAL: &str = "seawall_no_endpoints_total";
/// `seawall_retries_total`: retries sent.
pub const RETRIES_TOTAL: &str = "seawall_retries_total";
/// `seawall_retries_skipped_total`: retryable outcomes not retried, by reason.
pub const RETRIES_SKIPPED_TOTAL: &str = "seawall_retries_skipped_total";
/// `seawall_hedges_total`: hedged attempts sent (see
/// [`RetryConfig::hedge_after`](crate::retry::RetryConfig::hedge_after)); they are also
/// attempts, limited by the same budget as retries.
#[cfg(feature = "http")]
pub const HEDGES_TOTAL: &str = "seawall_hedges_total";
/// `seawall_all_ejected_total`: calls rejected because every endpoint was ejected.
pub const ALL_EJECTED_TOTAL: &str = "seawall_all_ejected_total";
/// `seawall_discovery_changes_total`: discovery changes applied, by kind.
pub const DISCOVERY_CHANGES_TOTAL: &str = "seawall_discovery_changes_total";
/// `seawall_discovery_errors_total`: discovery errors; the last good set is kept.
pub const DISCOVERY_ERRORS_TOTAL: &str = "seawall_discovery_errors_total";

/// Handles for one endpoint, created when it is inserted.
#[derive(Debug, Clone)]
pub(crate) struct EndpointMetrics {
    pub(crate) success: Counter,
    pub(crate) failure: Counter,
    pub(crate) ignored: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) in_flight: Gauge,
    pub(crate) duration: Histogram,
}

impl EndpointMetrics {
    pub(crate) fn new(upstream: &str, endpoint: &str) -> Self {
        let labels = |outcome: &'static str| {
            [
                Label::new("upstream", upstream.to_owned()),
                Label::new("endpoint", endpoint.to_owned()),
                Label::new("outcome", outcome),
            ]
        };
        let base = [
            Label::new("upstream", upstream.to_owned()),
            Label::new("endpoint", endpoint.to_owned()),
        ];
        Self {
            success: metrics::counter!(REQUESTS_TOTAL, labels("success").to_vec()),
            failure: metrics::counter!(REQUESTS_TOTAL, labels("failure").to_vec()),
            ignored: metrics::counter!(REQUESTS_TOTAL, labels("ignored").to_vec()),
            cancelled: metrics::counter!(REQUESTS_TOTAL, labels("cancelled").to_vec()),
            in_flight: metrics::gauge!(IN_FLIGHT, base.to_vec()),
            duration: metrics::histogram!(REQUEST_DURATION_SECONDS, base.to_vec()),
        }
    }
}

/// Handles for one balancer, created when it is built.
#[derive(Debug, Clone)]
pub(crate) struct BalanceMetrics {
    pub(crate) endpoints_ready: Gauge,
    pub(crate) no_endpoints: Counter,
    pub(crate) all_ejected: Counter,
    pub(crate) inserts: Counter,
    pub(crate) removes: Counter,
    pub(crate) discovery_errors: Counter,
}

impl BalanceMetrics {
    pub(crate) fn new(upstream: &str) -> Self {
        let up = || Label::new("upstream", upstream.to_owned());
        Self {
            endpoints_ready: metrics::gauge!(ENDPOINTS, vec![up(), Label::new("state", "ready")]),
            no_endpoints: metrics::counter!(NO_ENDPOINTS_TOTAL, vec![up()]),
            all_ejected: metrics::counter!(ALL_EJECTED_TOTAL, vec![up()]),
            inserts: metrics::counter!(
                DISCOVERY_CHANGES_TOTAL,
                vec![up(), Label::new("change", "insert")]
            ),
            removes: metrics::counter!(
                DISCOVERY_CHANGES_TOTAL,
                vec![up(), Label::new("change", "remove")]
            ),
            discovery_errors: metrics::counter!(DISCOVERY_ERRORS_TOTAL, vec![up()]),
        }
    }
}
