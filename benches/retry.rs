//! The success path (no retry happens) through deadline + retry + per-try timeout, beside the
//! bare service, per call.
//!
//! Requests are built the way hyper's server builds them: the URI is a slice of a shared
//! buffer (cloning it bumps a count), and the extensions start empty, so the deadline's
//! insertion pays for creating the map.
//!
//! `cargo bench --bench retry`

// Benchmarks unwrap broken fixtures and panic on impossible states.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::Full;
use seawall::BoxError;
use seawall::retry::{RetryConfig, RetryLayer};
use seawall::timeout::{DeadlineLayer, PerTryTimeoutLayer};
use tower::{Service, ServiceBuilder, service_fn};

fn call_once<S: Service<http::Request<Full<Bytes>>>>(
    service: &mut S,
    cx: &mut Context<'_>,
    uri: &Bytes,
    body: &'static [u8],
) {
    assert!(service.poll_ready(cx).is_ready());
    let request = http::Request::get(http::Uri::from_maybe_shared(uri.clone()).unwrap())
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let future = pin!(service.call(request));
    match future.poll(cx) {
        Poll::Ready(Ok(_)) => {}
        _ => panic!("the no-op service answers at once"),
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let mut bare = service_fn(|_: http::Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(http::Response::new(()))
    });
    let mut stack = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(2)))
        .layer(RetryLayer::new("bench", RetryConfig::default()))
        .layer(PerTryTimeoutLayer::new(Duration::from_millis(500)))
        .service(service_fn(
            |_: http::Request<seawall::http::ReplayBody<Full<Bytes>>>| async {
                Ok::<_, BoxError>(http::Response::new(()))
            },
        ));
    // Each layer alone, to see where the stack's cost goes.
    let mut deadline_only = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(2)))
        .service(bare);
    let mut retry_only = ServiceBuilder::new()
        .layer(RetryLayer::new("bench", RetryConfig::default()))
        .service(service_fn(
            |_: http::Request<seawall::http::ReplayBody<Full<Bytes>>>| async {
                Ok::<_, BoxError>(http::Response::new(()))
            },
        ));
    let mut per_try_only = ServiceBuilder::new()
        .layer(PerTryTimeoutLayer::new(Duration::from_millis(500)))
        .service(bare);
    let mut cx = Context::from_waker(Waker::noop());
    // A shared buffer, as hyper's read buffer is once a request line is split off it.
    let uri = Bytes::from(b"/users/42".to_vec());
    let _shared = uri.clone();
    let mut group = c.benchmark_group("retry_success_path");
    for (label, body) in [
        ("empty_body", &b""[..]),
        ("small_body", &b"{\"id\":42}"[..]),
    ] {
        group.bench_function(format!("bare_service/{label}"), |b| {
            b.iter(|| call_once(&mut bare, &mut cx, &uri, body))
        });
        group.bench_function(format!("deadline_retry_per_try/{label}"), |b| {
            b.iter(|| call_once(&mut stack, &mut cx, &uri, body))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("retry_success_path_by_layer");
    group.bench_function("deadline", |b| {
        b.iter(|| call_once(&mut deadline_only, &mut cx, &uri, b""))
    });
    group.bench_function("retry", |b| {
        b.iter(|| call_once(&mut retry_only, &mut cx, &uri, b""))
    });
    group.bench_function("per_try", |b| {
        b.iter(|| call_once(&mut per_try_only, &mut cx, &uri, b""))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
