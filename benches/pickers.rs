//! Pick cost against the number of endpoints, and the cost of publishing discovery changes.
//!
//! `cargo bench --bench pickers`

#![allow(clippy::unwrap_used)]

mod support;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use seawall::balance::{
    Endpoint, LeastConn, Observation, P2c, Pick, PickContext, PickRng, RoundRobin,
};
use seawall::classify::Outcome;

use support::{Noop, SIZES, set, table};

fn bench_pick<P: Pick>(c: &mut Criterion, name: &str, picker: P, weighted: bool) {
    let mut group = c.benchmark_group(format!("pick/{name}"));
    for n in SIZES {
        let set = if weighted {
            table(n, |i| 1 + (i % 5) as u32).snapshot()
        } else {
            set(n)
        };
        // Give every endpoint a latency estimate and some load, as in a running balancer.
        for (i, endpoint) in set.iter().enumerate() {
            picker.observe(
                endpoint,
                Observation {
                    latency_ns: 1_000_000 + (i as u64 % 7) * 10_000,
                    outcome: Outcome::Success,
                    now_ns: 1 + i as u64 * 997,
                },
            );
        }
        let schedule = picker.schedule(&set);
        let mut rng = PickRng::with_seed(1);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let mut cx = PickContext::new(1_000, &mut rng);
                black_box(picker.pick(black_box(&set), &schedule, &mut cx))
            })
        });
    }
    group.finish();
}

fn pickers(c: &mut Criterion) {
    bench_pick(c, "round_robin", RoundRobin::new(), false);
    bench_pick(c, "round_robin_weighted", RoundRobin::new(), true);
    bench_pick(c, "least_conn", LeastConn::new(), false);
    bench_pick(c, "p2c", P2c::new(), false);
}

/// One insert (or remove) applied to a table of n endpoints and published as a snapshot with
/// the round-robin schedule, as the discovery task does.
fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_one_change");
    let rr = RoundRobin::new();
    for n in SIZES {
        let mut table = table(n, |_| 1);
        let mut next = n;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                // Alternate: insert a new endpoint, then remove it again.
                if next % 2 == 0 {
                    table.insert(Endpoint::new(usize::MAX, Noop, 1, "bench"));
                } else {
                    table.remove(&usize::MAX);
                }
                next += 1;
                let snapshot = table.snapshot();
                let schedule = rr.schedule(&snapshot);
                black_box((snapshot, schedule))
            })
        });
    }
    group.finish();

    // A burst of 1 000 changes at 10 000 endpoints, published once.
    let mut group = c.benchmark_group("publish_burst_1000");
    let mut table = table(10_000, |_| 1);
    group.bench_function("10000", |b| {
        b.iter(|| {
            for k in 0..500 {
                table.remove(&k);
            }
            for k in 0..500 {
                table.insert(Endpoint::new(k, Noop, 1, "bench"));
            }
            let snapshot = table.snapshot();
            black_box(rr.schedule(&snapshot))
        })
    });
    group.finish();
}

criterion_group!(benches, pickers, publish);
criterion_main!(benches);
