//! The success path (admit + call + record) through a circuit breaker over a no-op service,
//! uncontended and with two threads on one breaker, side by side with tower-resilience's
//! circuit breaker on the same workload.
//!
//! `cargo bench --bench breaker`

// Benchmarks time with std::time::Instant on purpose (real time) and unwrap broken fixtures.
#![allow(clippy::unwrap_used, clippy::panic, clippy::disallowed_methods)]

mod support;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use seawall::breaker::{Breaker, BreakerConfig, Window};
use seawall::classify::Outcome;
use tower::{Layer, Service};

use support::Noop;

/// Drives one call to completion by polling; a future that waits on a contended lock is
/// polled again until it gets it (the same for every contestant).
fn call_once<S: Service<()>>(service: &mut S, cx: &mut Context<'_>) {
    while service.poll_ready(cx).is_pending() {
        std::hint::spin_loop();
    }
    let mut future = pin!(service.call(()));
    loop {
        match future.as_mut().poll(cx) {
            Poll::Ready(Ok(_)) => return,
            Poll::Ready(Err(_)) => panic!("the no-op service never fails"),
            Poll::Pending => std::hint::spin_loop(),
        }
    }
}

fn run<S>(service: &S, threads: usize, iters: u64) -> Duration
where
    S: Service<()> + Clone + Send,
{
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let mut service = service.clone();
                scope.spawn(move || {
                    // A runtime context for tokio's clock, entered once; futures are polled by hand.
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    let _guard = runtime.enter();
                    let mut cx = Context::from_waker(Waker::noop());
                    let start = Instant::now();
                    for _ in 0..iters {
                        call_once(&mut service, &mut cx);
                    }
                    start.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .max()
            .unwrap_or_default()
    })
}

/// Admit + record on the success path through the permit API, on `threads` threads.
fn admit_record(breaker: &Breaker, threads: usize, iters: u64) -> Duration {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    let _guard = runtime.enter();
                    let start = Instant::now();
                    for _ in 0..iters {
                        breaker.try_acquire().unwrap().record(Outcome::Success);
                    }
                    start.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .max()
            .unwrap_or_default()
    })
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let seawall_time = Breaker::new("bench", BreakerConfig::default())
        .unwrap()
        .layer()
        .layer(Noop);
    let seawall_count = Breaker::new(
        "bench",
        BreakerConfig::default().window(Window::Count { calls: 100 }),
    )
    .unwrap()
    .layer()
    .layer(Noop);
    let tower_resilience = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .unwrap()
        .layer(Noop);

    let time_breaker = Breaker::new("bench", BreakerConfig::default()).unwrap();
    let count_breaker = Breaker::new(
        "bench",
        BreakerConfig::default().window(Window::Count { calls: 100 }),
    )
    .unwrap();
    for (threads, label) in [(1, "uncontended"), (2, "two_threads")] {
        let mut group = c.benchmark_group(format!("breaker_admit_record/{label}"));
        group.bench_function("seawall_time_window", |b| {
            b.iter_custom(|i| admit_record(&time_breaker, threads, i))
        });
        group.bench_function("seawall_count_window", |b| {
            b.iter_custom(|i| admit_record(&count_breaker, threads, i))
        });
        group.finish();
    }
    let mut group = c.benchmark_group("clock");
    group.bench_function("tokio_instant_now", |b| b.iter(tokio::time::Instant::now));
    group.bench_function("std_instant_now", |b| b.iter(Instant::now));
    group.finish();

    for (threads, label) in [(1, "uncontended"), (2, "two_threads")] {
        let mut group = c.benchmark_group(format!("breaker_success/{label}"));
        group.bench_function("seawall_time_window", |b| {
            b.iter_custom(|i| run(&seawall_time, threads, i))
        });
        group.bench_function("seawall_count_window", |b| {
            b.iter_custom(|i| run(&seawall_count, threads, i))
        });
        group.bench_function("tower_resilience", |b| {
            b.iter_custom(|i| run(&tower_resilience, threads, i))
        });
        group.bench_function("bare_service", |b| {
            b.iter_custom(|i| run(&Noop, threads, i))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
