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

/// The upstream's deadline has no timer of its own (retries never wait past it and every
/// attempt gets at most the time left): a call to instances that never answer still ends
/// by the deadline, timed out, after as many attempts as fit.
#[tokio::test(start_paused = true)]
async fn the_deadline_holds_when_every_instance_hangs() {
    let registry = Registry::new();
    let mut held = Vec::new();
    for i in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        registry
            .register(
                "stuck",
                Instance::new(format!("stuck-{i}"), listener.local_addr().unwrap()),
                Duration::from_secs(300),
            )
            .unwrap();
        // Accepts and reads nothing, answers nothing, until the test ends.
        held.push(tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        }));
    }
    let stuck = Upstream::builder("stuck")
        .picker(RoundRobin::new())
        .retry(RetryConfig::default().max_attempts(10))
        .per_try_timeout(Duration::from_millis(300))
        .deadline(Duration::from_millis(1000))
        .wait_for_endpoints(Duration::from_secs(1))
        .build_http(
            registry.watch("stuck"),
            default_client::<ReplayBody<Empty<Bytes>>>(),
        )
        .unwrap();
    let started = tokio::time::Instant::now();
    let get = http::Request::get("/slow").body(Empty::new()).unwrap();
    let error = stuck.clone().oneshot(get).await.unwrap_err();
    let took = started.elapsed();
    // The last attempt ran into the deadline, or the retry layer saw no room for another.
    assert!(
        matches!(
            seawall::ErrorKind::of(error.as_ref()),
            seawall::ErrorKind::DeadlineExceeded | seawall::ErrorKind::TryTimeout
        ),
        "{error}"
    );
    assert!(
        took <= Duration::from_millis(1000),
        "ended at the deadline, not after: {took:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "used the time it had (three 300 ms attempts and backoff): {took:?}"
    );
    assert!(stuck.retries() >= 2, "retried within the deadline");

    // An attempt gets no more than the time left, the first one too: with 800 ms per try
    // and a 500 ms deadline, it is cut at 500 ms, and nothing is retried.
    let tight = Upstream::builder("stuck")
        .picker(RoundRobin::new())
        .retry(RetryConfig::default().max_attempts(3))
        .per_try_timeout(Duration::from_millis(800))
        .deadline(Duration::from_millis(500))
        .wait_for_endpoints(Duration::from_secs(1))
        .build_http1(
            registry.watch("stuck"),
            seawall::http::Http1Config::default(),
        )
        .unwrap();
    let started = tokio::time::Instant::now();
    let get = http::Request::get("/slow")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let error = tight.clone().oneshot(get).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        seawall::ErrorKind::of(error.as_ref()),
        seawall::ErrorKind::DeadlineExceeded,
        "{error}"
    );
    assert_eq!(tight.retries(), 0, "no time left for a retry");
    assert_eq!(took, Duration::from_millis(500), "cut at the deadline");
    for task in held {
        task.abort();
    }
}
