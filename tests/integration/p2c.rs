//! P2C through a whole Balance, with real (paused-clock) latencies and failures.

use std::collections::HashMap;
use std::time::Duration;

use seawall::BoxError;
use seawall::balance::{Balance, P2c};
use seawall::discover::from_list;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Service, ServiceExt};

use crate::support::eventually;

#[derive(Clone, Copy)]
enum Behaviour {
    Fast,
    Slow,
    FailsFast,
}

/// An endpoint that answers in 2 ms, answers in 200 ms, or fails in 1 ms.
#[derive(Clone, Copy)]
struct Endpoint {
    name: &'static str,
    behaviour: Behaviour,
}

impl Service<()> for Endpoint {
    type Response = &'static str;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<&'static str, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        let Self { name, behaviour } = *self;
        Box::pin(async move {
            let (delay, ok) = match behaviour {
                Behaviour::Fast => (2, true),
                Behaviour::Slow => (200, true),
                Behaviour::FailsFast => (1, false),
            };
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if ok {
                Ok(name)
            } else {
                Err(format!("{name} is broken").into())
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn p2c_sends_little_to_a_slow_or_a_fast_failing_endpoint() {
    let endpoints = [
        ("fast-1", Behaviour::Fast),
        ("fast-2", Behaviour::Fast),
        ("fast-3", Behaviour::Fast),
        ("fast-4", Behaviour::Fast),
        ("fast-5", Behaviour::Fast),
        ("fast-6", Behaviour::Fast),
        ("slow", Behaviour::Slow),
        ("fails-fast", Behaviour::FailsFast),
    ]
    .map(|(name, behaviour)| (name, Endpoint { name, behaviour }));
    let balance = Balance::builder(from_list(endpoints))
        .picker(P2c::new())
        .seed(42)
        .build()
        .unwrap();
    eventually("published", || balance.endpoints().len() == 8).await;

    // 8 concurrent callers, 100 calls each.
    let mut callers = Vec::new();
    for _ in 0..8 {
        let balance = balance.clone();
        callers.push(tokio::spawn(async move {
            let mut seen: HashMap<&'static str, usize> = HashMap::new();
            for _ in 0..100 {
                // Only the failing endpoint answers with an error.
                let name = balance.clone().oneshot(()).await.unwrap_or("fails-fast");
                *seen.entry(name).or_default() += 1;
            }
            seen
        }));
    }
    let mut total: HashMap<&'static str, usize> = HashMap::new();
    for caller in callers {
        for (name, n) in caller.await.unwrap() {
            *total.entry(name).or_default() += n;
        }
    }
    let share = |name: &str| total.get(name).copied().unwrap_or(0) as f64 / 800.0;
    // Round robin would give each 12.5%; tower's PeakEwma sends most traffic to the endpoint
    // that fails in 1 ms. Here a bad endpoint is chosen essentially only when both draws are
    // bad: 2 of 8 endpoints, so 1/28 ≈ 3.6% of picks.
    assert!(
        share("fails-fast") < 0.01,
        "fast-failing endpoint got {:.1}%: {total:?}",
        100.0 * share("fails-fast")
    );
    assert!(
        share("slow") < 0.06,
        "slow endpoint got {:.1}%: {total:?}",
        100.0 * share("slow")
    );
    let healthy: f64 = (1..=6).map(|i| share(&format!("fast-{i}"))).sum();
    assert!(healthy > 0.93, "{total:?}");
}
