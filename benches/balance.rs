//! A whole Balance call over no-op endpoints, side by side with tower's `p2c::Balance` behind
//! `Buffer` (the way tower's balancer is shared), sequentially and with 64 concurrent callers,
//! on a current-thread and on a 2-worker runtime.
//!
//! `cargo bench --bench balance`

// Benchmarks time with std::time::Instant on purpose (real time, no tokio clock) and unwrap:
// a failure there is a broken fixture.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use seawall::balance::{Balance, LeastConn, P2c, Pick, RoundRobin};
use seawall::discover::from_list;
use tokio::runtime::Runtime;
use tower::balance::p2c;
use tower::buffer::Buffer;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::{BoxError, Service, ServiceExt};

use support::Noop;

const ENDPOINTS: usize = 10;
const CONCURRENCY: u64 = 64;

fn runtimes() -> [(&'static str, Runtime); 2] {
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    [("current_thread", current), ("multi_thread_2", multi)]
}

fn seawall<P: Pick>(rt: &Runtime, picker: P) -> Balance<usize, Noop, P> {
    let _guard = rt.enter();
    let balance = Balance::builder(from_list((0..ENDPOINTS).map(|i| (i, Noop))))
        .picker(picker)
        .build()
        .unwrap();
    rt.block_on(async {
        while balance.endpoints().len() < ENDPOINTS {
            tokio::task::yield_now().await;
        }
    });
    balance
}

type TowerBalance =
    Buffer<(), <p2c::Balance<ServiceList<Vec<PendingRequests<Noop>>>, ()> as Service<()>>::Future>;

fn tower(rt: &Runtime) -> TowerBalance {
    let _guard = rt.enter();
    let endpoints = (0..ENDPOINTS)
        .map(|_| PendingRequests::new(Noop, CompleteOnResponse::default()))
        .collect::<Vec<_>>();
    Buffer::new(p2c::Balance::new(ServiceList::new(endpoints)), 1024)
}

/// `iters` calls one after another on one service value.
fn sequential<S>(rt: &Runtime, service: &S, iters: u64) -> Duration
where
    S: Service<(), Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    let mut service = service.clone();
    rt.block_on(async move {
        let start = Instant::now();
        for _ in 0..iters {
            service
                .ready()
                .await
                .map_err(Into::into)
                .unwrap()
                .call(())
                .await
                .map_err(Into::into)
                .unwrap();
        }
        start.elapsed()
    })
}

/// `iters` calls spread over 64 tasks, each with its own clone; time per call.
fn concurrent<S>(rt: &Runtime, service: &S, iters: u64) -> Duration
where
    S: Service<(), Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    let per_task = iters.div_ceil(CONCURRENCY);
    let service = service.clone();
    rt.block_on(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let mut service = service.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        service
                            .ready()
                            .await
                            .map_err(Into::into)
                            .unwrap()
                            .call(())
                            .await
                            .map_err(Into::into)
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        start.elapsed()
    })
}

#[derive(Clone, Copy)]
enum Mode {
    Sequential,
    Concurrent,
}

fn run<S>(mode: Mode, rt: &Runtime, service: &S, iters: u64) -> Duration
where
    S: Service<(), Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    match mode {
        Mode::Sequential => sequential(rt, service, iters),
        Mode::Concurrent => concurrent(rt, service, iters),
    }
}

fn bench(c: &mut Criterion) {
    for (rt_name, rt) in runtimes() {
        let rr = seawall(&rt, RoundRobin::new());
        let lc = seawall(&rt, LeastConn::new());
        let p2c = seawall(&rt, P2c::new());
        let tower = tower(&rt);
        for (mode_name, mode) in [
            ("sequential", Mode::Sequential),
            ("concurrent64", Mode::Concurrent),
        ] {
            let mut group = c.benchmark_group(format!("balance_call/{mode_name}/{rt_name}"));
            group.bench_function(BenchmarkId::from_parameter("seawall_round_robin"), |b| {
                b.iter_custom(|iters| run(mode, &rt, &rr, iters))
            });
            group.bench_function(BenchmarkId::from_parameter("seawall_least_conn"), |b| {
                b.iter_custom(|iters| run(mode, &rt, &lc, iters))
            });
            group.bench_function(BenchmarkId::from_parameter("seawall_p2c"), |b| {
                b.iter_custom(|iters| run(mode, &rt, &p2c, iters))
            });
            group.bench_function(BenchmarkId::from_parameter("tower_p2c_buffer"), |b| {
                b.iter_custom(|iters| run(mode, &rt, &tower, iters))
            });
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
