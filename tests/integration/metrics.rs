//! The series a balancer emits, read back from a debugging recorder.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use seawall::NoEndpoints;
use seawall::balance::{Balance, RoundRobin};
use seawall::discover::Change;
use tower::ServiceExt;

use crate::support::{Named, channel, eventually};

/// One recorded series: kind, name, labels, value.
type Series = (MetricKind, String, Vec<(String, String)>, DebugValue);

/// Tests that read the recorder run one at a time: a snapshot resets every counter and gauge.
static RECORDER_IN_USE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One global recorder for the test binary; each test filters by its own upstream name.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other global recorder in this binary");
        snapshotter
    })
}

fn series(upstream: &str) -> Vec<Series> {
    series_labelled("upstream", upstream)
}

/// Every series carrying the label `key = value`.
fn series_labelled(label: &str, wanted: &str) -> Vec<Series> {
    snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value): (CompositeKey, _, _, DebugValue)| {
            let (kind, key) = key.into_parts();
            let labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels
                .iter()
                .any(|(k, v)| k == label && v == wanted)
                .then(|| (kind, key.name().to_owned(), labels, value))
        })
        .collect()
}

fn value<'a>(all: &'a [Series], name: &str, labels: &[(&str, &str)]) -> Option<&'a DebugValue> {
    all.iter()
        .find(|(_, n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(.., v)| v)
}

/// A counter's value; panics (naming it) when it is missing or of another kind.
fn counter(all: &[Series], name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(all, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

/// A gauge's value; panics (naming it) when it is missing or of another kind.
fn gauge(all: &[Series], name: &str, labels: &[(&str, &str)]) -> f64 {
    match value(all, name, labels) {
        Some(DebugValue::Gauge(g)) => g.into_inner(),
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_balancer_emits_the_documented_series() {
    let _exclusive = RECORDER_IN_USE.lock().await;
    snapshotter();
    let (tx, discover) = channel();
    let balance = Balance::builder(discover)
        .name("metrics-test")
        .picker(RoundRobin::new())
        .build()
        .unwrap();
    let error = balance.clone().oneshot(()).await.unwrap_err();
    assert!(error.is::<NoEndpoints>());

    tx.send(Ok(Change::Insert("a", Named::new("a")))).unwrap();
    tx.send(Ok(Change::Insert("b", Named::new("b")))).unwrap();
    eventually("published", || balance.endpoints().len() == 2).await;
    for _ in 0..6 {
        balance.clone().oneshot(()).await.unwrap();
    }
    tx.send(Ok(Change::Remove("b"))).unwrap();
    eventually("removed", || balance.endpoints().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(1)).await;

    let all = series("metrics-test");
    let counter = |name, labels: &[(&str, &str)]| counter(&all, name, labels);
    let gauge = |name, labels: &[(&str, &str)]| gauge(&all, name, labels);
    assert_eq!(counter("seawall_no_endpoints_total", &[]), 1);
    assert_eq!(
        counter(
            "seawall_requests_total",
            &[("endpoint", "a"), ("outcome", "success")]
        ),
        3
    );
    assert_eq!(
        counter(
            "seawall_requests_total",
            &[("endpoint", "b"), ("outcome", "success")]
        ),
        3
    );
    assert_eq!(
        counter("seawall_discovery_changes_total", &[("change", "insert")]),
        2
    );
    assert_eq!(
        counter("seawall_discovery_changes_total", &[("change", "remove")]),
        1
    );
    assert_eq!(gauge("seawall_endpoints", &[("state", "ready")]), 1.0);
    assert_eq!(gauge("seawall_in_flight", &[("endpoint", "a")]), 0.0);
    match value(
        &all,
        "seawall_request_duration_seconds",
        &[("endpoint", "a")],
    ) {
        Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 3),
        other => panic!("histogram: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn breakers_emit_state_transitions_rejections_and_ejections() {
    use seawall::breaker::{Breaker, BreakerConfig, Window};
    use tower::{Layer, service_fn};

    let _exclusive = RECORDER_IN_USE.lock().await;
    snapshotter();
    // A standalone breaker opens and rejects.
    let breaker =
        Breaker::new("metrics-breaker", BreakerConfig::default().minimum_calls(2)).unwrap();
    let failing = breaker.layer().layer(service_fn(|()| async {
        Err::<(), seawall::BoxError>("down".into())
    }));
    for _ in 0..3 {
        let _ = failing.clone().oneshot(()).await;
    }
    let all = series_labelled("breaker", "metrics-breaker");
    assert!(
        matches!(value(&all, "seawall_breaker_state", &[]), Some(DebugValue::Gauge(g)) if g.into_inner() == 1.0)
    );
    assert!(matches!(
        value(
            &all,
            "seawall_breaker_transitions_total",
            &[("from", "closed"), ("to", "open")]
        ),
        Some(DebugValue::Counter(1))
    ));
    assert!(matches!(
        value(&all, "seawall_breaker_rejections_total", &[]),
        Some(DebugValue::Counter(1))
    ));

    // An endpoint is ejected inside a balancer.
    let (tx, discover) = channel();
    tx.send(Ok(Change::Insert(
        "good",
        crate::support::Flaky::new("good", false),
    )))
    .unwrap();
    tx.send(Ok(Change::Insert(
        "bad",
        crate::support::Flaky::new("bad", true),
    )))
    .unwrap();
    let balance = Balance::builder(discover)
        .name("metrics-eject")
        .picker(RoundRobin::new())
        .endpoint_breaker(
            BreakerConfig::default()
                .window(Window::Count { calls: 10 })
                .minimum_calls(2),
        )
        .build()
        .unwrap();
    eventually("published", || balance.endpoints().len() == 2).await;
    for _ in 0..10 {
        let _ = balance.clone().oneshot(()).await;
    }
    let all = series("metrics-eject");
    let gauge = |name, labels: &[(&str, &str)]| gauge(&all, name, labels);
    assert_eq!(gauge("seawall_endpoints", &[("state", "ejected")]), 1.0);
    assert_eq!(gauge("seawall_breaker_state", &[("endpoint", "bad")]), 1.0);
    assert_eq!(gauge("seawall_breaker_state", &[("endpoint", "good")]), 0.0);
    assert!(matches!(
        value(
            &all,
            "seawall_breaker_transitions_total",
            &[("endpoint", "bad"), ("to", "open")]
        ),
        Some(DebugValue::Counter(1))
    ));
}

/// One upstream, scripted: an endpoint starts answering 503, the call is retried on the other,
/// the failing endpoint's breaker opens and ejects it. Every series the chapter in
/// `seawall::metrics` promises for that story is read back.
#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn a_scripted_outage_emits_retry_breaker_and_ejection_series() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http::{Request, Response, StatusCode};
    use http_body_util::Empty;
    use seawall::breaker::{BreakerConfig, Window};
    use seawall::classify::HttpStatus;
    use seawall::retry::{RetryConfig, RetryLayer};
    use tower::{Layer, service_fn};

    let _exclusive = RECORDER_IN_USE.lock().await;
    snapshotter();
    let endpoint = |failing: Arc<AtomicBool>| {
        service_fn(move |_: Request<_>| {
            let failing = failing.load(Ordering::SeqCst);
            async move {
                let status = if failing {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                Ok::<_, seawall::BoxError>(
                    Response::builder()
                        .status(status)
                        .body(Empty::<bytes::Bytes>::new())
                        .unwrap(),
                )
            }
        })
    };
    let outage = Arc::new(AtomicBool::new(false));
    let (tx, discover) = channel();
    tx.send(Ok(Change::Insert("api-1", endpoint(Arc::clone(&outage)))))
        .unwrap();
    tx.send(Ok(Change::Insert(
        "api-2",
        endpoint(Arc::new(AtomicBool::new(false))),
    )))
    .unwrap();
    let balance = Balance::builder(discover)
        .name("metrics-story")
        .picker(RoundRobin::new())
        .classify(HttpStatus)
        .endpoint_breaker(
            BreakerConfig::default()
                .window(Window::Count { calls: 5 })
                .minimum_calls(3)
                .failure_rate(60.0),
        )
        .build()
        .unwrap();
    eventually("published", || balance.endpoints().len() == 2).await;
    let upstream = RetryLayer::new("metrics-story", RetryConfig::default()).layer(balance.clone());

    // Healthy, then api-1 starts failing: every GET still succeeds, through retries.
    let get = || {
        Request::get("http://api/")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    for _ in 0..4 {
        let response = upstream.clone().oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    outage.store(true, Ordering::SeqCst);
    for _ in 0..12 {
        let response = upstream.clone().oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    let all = series("metrics-story");
    let counter = |name, labels: &[(&str, &str)]| counter(&all, name, labels);
    let gauge = |name, labels: &[(&str, &str)]| gauge(&all, name, labels);
    // Three 503s open api-1's circuit (minimum 3 calls, 60 %); each was retried on api-2.
    assert_eq!(counter("seawall_retries_total", &[]), 3);
    assert_eq!(
        counter(
            "seawall_requests_total",
            &[("endpoint", "api-1"), ("outcome", "failure")]
        ),
        3
    );
    assert_eq!(
        counter(
            "seawall_breaker_transitions_total",
            &[("endpoint", "api-1"), ("from", "closed"), ("to", "open")]
        ),
        1
    );
    assert_eq!(
        gauge("seawall_breaker_state", &[("endpoint", "api-1")]),
        1.0
    );
    assert_eq!(gauge("seawall_endpoints", &[("state", "ejected")]), 1.0);
    assert_eq!(gauge("seawall_endpoints", &[("state", "ready")]), 2.0);
    // After the ejection, api-2 took everything: 2 before the outage, 3 retries, 12 - 3 more.
    assert_eq!(
        counter(
            "seawall_requests_total",
            &[("endpoint", "api-2"), ("outcome", "success")]
        ),
        2 + 3 + 9
    );
}
