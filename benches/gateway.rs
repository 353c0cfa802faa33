//! End to end through the example cluster's gateway over loopback, beside direct calls to one
//! instance: one request at a time (latency of a hop) and 64 concurrent callers (throughput).
//!
//! ```sh
//! cargo bench --bench gateway
//! ```
//!
//! The gateway runs as in `cargo run --example cluster -- --gateway-only`: one worker thread
//! with its own runtime, in front of three instances of the cluster's `users` service, with
//! the cluster's whole resilience path (deadline, retry, per-try timeout, p2c balance,
//! per-endpoint breakers). Everything stays on 127.0.0.1. For side-by-side numbers with nginx
//! and HAProxy on the same machine, see `../shared/bench/proxy-compare.sh` and the README.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub
)]

#[path = "../examples/cluster/gateway.rs"]
#[allow(dead_code)]
mod gateway;
#[path = "../examples/cluster/instance.rs"]
#[allow(dead_code)]
mod instance;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use seawall::discover::Registry;

use crate::gateway::{Fleet, GatewayConfig, Routing};
use crate::instance::Node;

type BenchClient = Client<HttpConnector, Empty<Bytes>>;

const CONCURRENCY: u64 = 64;

async fn get(client: &BenchClient, uri: &http::Uri) {
    let response = client
        .get(uri.clone())
        .await
        .expect("the bench target answers");
    assert!(response.status().is_success(), "{}", response.status());
    response.into_body().collect().await.expect("a body");
}

/// `iters` requests spread over `CONCURRENCY` callers; the wall time they took.
async fn concurrent(client: &BenchClient, uri: &http::Uri, iters: u64) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..CONCURRENCY {
        let share = iters / CONCURRENCY + u64::from(caller < iters % CONCURRENCY);
        let client = client.clone();
        let uri = uri.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                get(&client, &uri).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("a caller finished");
    }
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    // Callers, instances and the gateway each have their own thread, as separate processes
    // would: a direct call pays two thread hand-offs, a call through the gateway four.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let instances = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let registry = Registry::new();
    let nodes = instances.block_on(async {
        let tokens = instance::Tokens::default();
        let mut nodes = Vec::new();
        for n in 1..=3 {
            nodes.push(
                Node::start(registry.clone(), &tokens, "users", format!("users-{n}"))
                    .await
                    .expect("an instance"),
            );
        }
        nodes
    });
    let (fleet, direct) = runtime.block_on(async {
        let mut config = GatewayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.routing = Routing::Single;
        let watch = registry.clone();
        let fleet = Fleet::start(
            config,
            1,
            move || vec![("users".to_owned(), watch.watch("users"))],
            None,
            None,
            Duration::from_secs(1),
        )
        .expect("the gateway");
        while fleet.endpoints("users").len() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let direct = nodes[0].addr().expect("users-1 is up");
        (fleet, direct)
    });
    let client: BenchClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let targets: [(&str, http::Uri); 2] = [
        (
            "direct",
            format!("http://{direct}/users/1").parse().unwrap(),
        ),
        (
            "gateway",
            format!("http://{}/users/1", fleet.addr).parse().unwrap(),
        ),
    ];

    let mut group = c.benchmark_group("gateway/one at a time");
    group.throughput(Throughput::Elements(1));
    for (name, uri) in &targets {
        group.bench_function(*name, |b| {
            b.to_async(&runtime).iter(|| get(&client, uri));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("gateway/64 concurrent");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    for (name, uri) in &targets {
        group.bench_function(*name, |b| {
            b.to_async(&runtime)
                .iter_custom(|iters| concurrent(&client, uri, iters));
        });
    }
    group.finish();

    runtime.block_on(fleet.shutdown());
    for node in nodes {
        node.stop();
    }
    drop(instances);
}

criterion_group!(benches, bench);
criterion_main!(benches);
