//! Active health checks: HAProxy's rise/fall, through the balancer, with a paused clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seawall::balance::{Balance, RoundRobin};
use seawall::discover::Change;
use seawall::health::{Health, HealthCheck};
use tower::ServiceExt;

use crate::support::{Flaky, channel, eventually};

/// Probe answers per endpoint, set by the test; `None` hangs forever.
#[derive(Clone, Default)]
struct Probes {
    answers: Arc<Mutex<HashMap<&'static str, Option<bool>>>>,
    count: Arc<AtomicUsize>,
}

impl Probes {
    fn set(&self, key: &'static str, answer: Option<bool>) {
        self.answers.lock().unwrap().insert(key, answer);
    }

    fn check(&self) -> HealthCheck<&'static str, Flaky> {
        let probes = self.clone();
        HealthCheck::new(move |key: &&'static str, _: &Flaky| {
            probes.count.fetch_add(1, Ordering::SeqCst);
            let answer = probes
                .answers
                .lock()
                .unwrap()
                .get(key)
                .copied()
                .unwrap_or(Some(true));
            Box::pin(async move {
                match answer {
                    Some(healthy) => healthy,
                    None => std::future::pending().await,
                }
            })
        })
        .interval(Duration::from_secs(1))
        .timeout(Duration::from_millis(200))
        .rise(2)
        .fall(3)
    }
}

async fn balancer(
    probes: &Probes,
    names: &[&'static str],
) -> Balance<&'static str, Flaky, RoundRobin> {
    let (tx, discover) = channel();
    for &name in names {
        tx.send(Ok(Change::Insert(name, Flaky::new(name, false))))
            .unwrap();
    }
    std::mem::forget(tx);
    let balance = Balance::builder(discover)
        .picker(RoundRobin::new())
        .health_check(probes.check())
        .build()
        .unwrap();
    eventually("published", || balance.endpoints().len() == names.len()).await;
    balance
}

fn health(balance: &Balance<&'static str, Flaky, RoundRobin>, name: &str) -> Option<Health> {
    balance
        .endpoints()
        .iter()
        .find(|e| *e.key() == name)?
        .health()
}

async fn served_by(
    balance: &Balance<&'static str, Flaky, RoundRobin>,
    n: usize,
) -> Vec<&'static str> {
    let mut names = Vec::new();
    for _ in 0..n {
        names.push(balance.clone().oneshot(()).await.unwrap());
    }
    names.sort();
    names.dedup();
    names
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_goes_down_after_fall_failures_and_back_after_rise_passes() {
    let probes = Probes::default();
    let balance = balancer(&probes, &["a", "b"]).await;
    // The first round (t = 0) passes: both up, at the top of the counter.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(health(&balance, "b"), Some(Health::Up));

    probes.set("b", Some(false));
    // Failures at t = 1 s and 2 s: still up (fall is 3).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(health(&balance, "b"), Some(Health::Up));
    assert_eq!(served_by(&balance, 10).await, ["a", "b"]);
    // The third failure (t = 3 s) takes it down: out of rotation.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(health(&balance, "b"), Some(Health::Down));
    assert_eq!(served_by(&balance, 10).await, ["a"]);

    probes.set("b", Some(true));
    // One pass (t = 4 s) is not enough (rise is 2)...
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(health(&balance, "b"), Some(Health::Down));
    // ...the second (t = 5 s) brings it back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(health(&balance, "b"), Some(Health::Up));
    assert_eq!(served_by(&balance, 10).await, ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_hangs_fails_at_its_timeout() {
    let probes = Probes::default();
    probes.set("b", None);
    let balance = balancer(&probes, &["a", "b"]).await;
    // A new endpoint is up until its first failed probe (HAProxy starts it at `rise`).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        health(&balance, "b"),
        Some(Health::Down),
        "timed out after 200 ms"
    );
    assert_eq!(health(&balance, "a"), Some(Health::Up));
}

#[tokio::test(start_paused = true)]
async fn with_every_endpoint_down_the_balancer_uses_them_all() {
    let probes = Probes::default();
    probes.set("a", Some(false));
    probes.set("b", Some(false));
    let balance = balancer(&probes, &["a", "b"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(health(&balance, "a"), Some(Health::Down));
    assert_eq!(health(&balance, "b"), Some(Health::Down));
    // 0 % available is below the panic threshold: calls are not refused.
    assert_eq!(served_by(&balance, 10).await, ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn health_checks_stop_with_the_balancer() {
    let probes = Probes::default();
    let balance = balancer(&probes, &["a"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let probed = probes.count.load(Ordering::SeqCst);
    assert!(probed >= 3);
    drop(balance);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        probes.count.load(Ordering::SeqCst),
        probed,
        "no probe after the drop"
    );
}
