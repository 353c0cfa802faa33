//! The whole path from one builder, over loopback: retries and ejection hide a failing
//! instance from idempotent calls; a POST is never sent twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use seawall::Upstream;
use seawall::balance::RoundRobin;
use seawall::breaker::{BreakerConfig, Window};
use seawall::discover::{Instance, Registry};
use seawall::http::{ReplayBody, default_client};
use seawall::retry::RetryConfig;
use tower::ServiceExt;

use crate::support::status_server;

#[tokio::test]
async fn one_builder_hides_a_failing_instance_from_gets_and_never_repeats_a_post() {
    let counts: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let registry = Registry::new();
    for (i, status) in [200, 200, 503].into_iter().enumerate() {
        let addr = status_server(status, counts[i].clone()).await;
        registry
            .register(
                "users",
                Instance::new(format!("users-{i}"), addr),
                Duration::from_secs(30),
            )
            .unwrap();
    }
    let users = Upstream::builder("users")
        .picker(RoundRobin::new())
        .endpoint_breaker(
            BreakerConfig::default()
                .window(Window::Count { calls: 10 })
                .minimum_calls(3),
        )
        .retry(RetryConfig::default())
        .per_try_timeout(Duration::from_secs(1))
        .deadline(Duration::from_secs(3))
        .wait_for_endpoints(Duration::from_secs(1))
        .build_http(
            registry.watch("users"),
            default_client::<ReplayBody<Empty<Bytes>>>(),
        )
        .unwrap();
    for _ in 0..60 {
        let get = http::Request::get("/users/1").body(Empty::new()).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), users.clone().oneshot(get))
            .await
            .expect("bounded")
            .unwrap();
        assert_eq!(response.status(), 200, "every GET succeeds");
    }
    let bad = counts[2].load(Ordering::SeqCst);
    assert!(
        bad <= 5,
        "the failing instance was ejected after a few failures: {bad}"
    );

    // Without breakers the failing instance stays in rotation: a POST that lands on it gets
    // its 503 back and is not sent again; GETs there are retried elsewhere.
    let plain = Upstream::builder("users-plain")
        .picker(RoundRobin::new())
        .wait_for_endpoints(Duration::from_secs(1))
        .build_http(
            registry.watch("users"),
            default_client::<ReplayBody<Empty<Bytes>>>(),
        )
        .unwrap();
    let before: usize = counts.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    let mut unavailable = 0;
    for _ in 0..6 {
        let post = http::Request::post("/orders").body(Empty::new()).unwrap();
        if plain.clone().oneshot(post).await.unwrap().status() == 503 {
            unavailable += 1;
        }
    }
    let after: usize = counts.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    assert_eq!(after - before, 6, "six POSTs, six executions");
    assert_eq!(
        unavailable, 2,
        "round robin sent two POSTs to the failing instance"
    );
}
