//! Per-endpoint breakers inside Balance: ejection, trials, the cap, panic mode, idleness.

use std::sync::atomic::Ordering;
use std::time::Duration;

use seawall::AllEjected;
use seawall::balance::{Balance, LeastConn, P2c, Pick, RoundRobin};
use seawall::breaker::{BreakerConfig, State, Window};
use seawall::discover::Change;
use tower::ServiceExt;

use crate::support::{Flaky, channel, eventually};

fn config() -> BreakerConfig {
    BreakerConfig::default()
        .window(Window::Count { calls: 10 })
        .minimum_calls(3)
        .failure_rate(50.0)
        .open_for(Duration::from_secs(5))
}

type Endpoints = Vec<Flaky>;

async fn balancer<P: Pick>(
    picker: P,
    endpoints: &Endpoints,
    tune: impl FnOnce(
        seawall::balance::Builder<
            crate::support::ChannelDiscover<&'static str, Flaky>,
            P,
            seawall::classify::ErrorsAreFailures,
        >,
    ) -> seawall::balance::Builder<
        crate::support::ChannelDiscover<&'static str, Flaky>,
        P,
        seawall::classify::ErrorsAreFailures,
    >,
) -> Balance<&'static str, Flaky, P> {
    let (tx, discover) = channel();
    for e in endpoints {
        tx.send(Ok(Change::Insert(e.name, e.clone()))).unwrap();
    }
    std::mem::forget(tx); // keep the stream open for the test's lifetime
    let balance = tune(
        Balance::builder(discover)
            .picker(picker)
            .seed(7)
            .endpoint_breaker(config()),
    )
    .build()
    .unwrap();
    eventually("published", || balance.endpoints().len() == endpoints.len()).await;
    balance
}

fn state(balance: &Balance<&'static str, Flaky, impl Pick>, name: &str) -> Option<State> {
    balance
        .endpoints()
        .iter()
        .find(|e| *e.key() == name)?
        .breaker_state()
}

async fn calls(balance: &Balance<&'static str, Flaky, impl Pick>, n: usize) -> usize {
    let mut failed = 0;
    for _ in 0..n {
        if balance.clone().oneshot(()).await.is_err() {
            failed += 1;
        }
    }
    failed
}

async fn ejection_and_recovery<P: Pick>(picker: P) {
    let (tx, discover) = channel();
    let balance = Balance::builder(discover)
        .picker(picker)
        .seed(7)
        .endpoint_breaker(config())
        .build()
        .unwrap();
    // c arrives first, alone, and fails: it is ejected after 3 failures, but as the only
    // endpoint it is still used (0% available is below the panic threshold).
    let c = Flaky::new("c", true);
    tx.send(Ok(Change::Insert("c", c.clone()))).unwrap();
    eventually("c published", || balance.endpoints().len() == 1).await;
    assert_eq!(calls(&balance, 5).await, 5);
    assert_eq!(state(&balance, "c"), Some(State::Open), "c ejected");
    assert_eq!(
        c.calls(),
        5,
        "panic mode: the only endpoint is used though ejected"
    );

    // a and b arrive: now every picker must skip c for its whole open period.
    let (a, b) = (Flaky::new("a", false), Flaky::new("b", false));
    tx.send(Ok(Change::Insert("a", a.clone()))).unwrap();
    tx.send(Ok(Change::Insert("b", b.clone()))).unwrap();
    eventually("a, b published", || balance.endpoints().len() == 3).await;
    assert_eq!(
        calls(&balance, 100).await,
        0,
        "the healthy endpoints answer everything"
    );
    assert_eq!(c.calls(), 5);

    // After it, exactly one trial; a failed trial re-ejects with a fresh open period.
    tokio::time::sleep(Duration::from_secs(5) + Duration::from_millis(1)).await;
    assert_eq!(calls(&balance, 100).await, 1, "only the trial fails");
    assert_eq!(c.calls(), 6, "exactly one trial call");
    assert_eq!(state(&balance, "c"), Some(State::Open));

    // Healthy again: the next trial succeeds and c is back in rotation.
    c.set_failing(false);
    tokio::time::sleep(Duration::from_secs(5) + Duration::from_millis(1)).await;
    assert_eq!(calls(&balance, 90).await, 0);
    assert_eq!(state(&balance, "c"), Some(State::Closed));
    assert!(c.calls() > 6, "c takes traffic again");
    assert_eq!(balance.ejection_stats().unwrap().ejected, 0);
}

#[tokio::test(start_paused = true)]
async fn round_robin_skips_an_ejected_endpoint_and_takes_it_back() {
    ejection_and_recovery(RoundRobin::new()).await;
}

#[tokio::test(start_paused = true)]
async fn least_conn_skips_an_ejected_endpoint_and_takes_it_back() {
    ejection_and_recovery(LeastConn::new()).await;
}

#[tokio::test(start_paused = true)]
async fn p2c_skips_an_ejected_endpoint_and_takes_it_back() {
    ejection_and_recovery(P2c::new()).await;
}

#[tokio::test(start_paused = true)]
async fn the_ejection_cap_keeps_endpoints_in_rotation() {
    let endpoints: Endpoints = ["a", "b", "c", "d"]
        .into_iter()
        .map(|n| Flaky::new(n, true))
        .collect();
    let balance = balancer(RoundRobin::new(), &endpoints, |b| {
        b.max_ejection_percent(50.0)
    })
    .await;
    calls(&balance, 80).await;
    // 0 < 50% of 4 and 1 < 50% of 4 allow two ejections; 2 is not below 2.
    let stats = balance.ejection_stats().unwrap();
    assert_eq!(stats.ejected, 2);
    assert!(stats.refused_by_cap > 0);
    let open = ["a", "b", "c", "d"]
        .iter()
        .filter(|n| state(&balance, n) == Some(State::Open))
        .count();
    assert_eq!(open, 2);
}

#[tokio::test(start_paused = true)]
async fn below_the_panic_threshold_every_endpoint_is_used() {
    let endpoints = vec![Flaky::new("a", true), Flaky::new("b", true)];
    let balance = balancer(RoundRobin::new(), &endpoints, |b| {
        b.max_ejection_percent(100.0).panic_threshold(50.0)
    })
    .await;
    calls(&balance, 20).await;
    assert_eq!(balance.ejection_stats().unwrap().ejected, 2);
    // Both ejected: 0% available < 50%, so calls go to them anyway instead of failing fast.
    let (a, b) = (endpoints[0].calls(), endpoints[1].calls());
    calls(&balance, 10).await;
    assert_eq!(endpoints[0].calls() + endpoints[1].calls(), a + b + 10);
}

#[tokio::test(start_paused = true)]
async fn without_panic_mode_all_ejected_fails_fast_with_a_typed_error() {
    let endpoints = vec![Flaky::new("a", true), Flaky::new("b", true)];
    let balance = balancer(RoundRobin::new(), &endpoints, |b| {
        b.max_ejection_percent(100.0).panic_threshold(0.0)
    })
    .await;
    calls(&balance, 20).await;
    let sent = endpoints[0].calls() + endpoints[1].calls();
    let error = balance.clone().oneshot(()).await.unwrap_err();
    let all = error.downcast_ref::<AllEjected>().expect("AllEjected");
    assert_eq!(all.upstream(), "default");
    assert_eq!(
        endpoints[0].calls() + endpoints[1].calls(),
        sent,
        "nothing was sent"
    );
}

#[tokio::test(start_paused = true)]
async fn nothing_runs_while_endpoints_are_ejected_and_no_request_arrives() {
    let (tx, discover) = channel();
    let polls = discover.polls.clone();
    let endpoints = [Flaky::new("a", false), Flaky::new("b", true)];
    for e in &endpoints {
        tx.send(Ok(Change::Insert(e.name, e.clone()))).unwrap();
    }
    let balance = Balance::builder(discover)
        .picker(RoundRobin::new())
        .endpoint_breaker(config())
        .build()
        .unwrap();
    eventually("published", || balance.endpoints().len() == 2).await;
    calls(&balance, 20).await;
    assert_eq!(state(&balance, "b"), Some(State::Open));

    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let polled = polls.load(Ordering::SeqCst);
    // A minute of paused time passes; with no timer registered nothing is woken.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        polls.load(Ordering::SeqCst),
        polled,
        "the discovery task was not woken"
    );
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        tasks
    );
    assert_eq!(
        tasks, 2,
        "only the discovery task and the (idle) verdict task exist"
    );
    // The ejected endpoint's trial is due, and the first call after the idle minute takes it.
    endpoints[1].set_failing(false);
    let before = endpoints[1].calls();
    calls(&balance, 2).await;
    assert_eq!(endpoints[1].calls(), before + 1);
    assert_eq!(state(&balance, "b"), Some(State::Closed));
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_ejection_config_names_the_field() {
    let (_tx, discover) = channel::<&'static str, Flaky>();
    let error = Balance::builder(discover)
        .endpoint_breaker(BreakerConfig::default().trials(0))
        .build()
        .unwrap_err();
    assert_eq!(error.field(), Some("trials"));
    let (_tx, discover) = channel::<&'static str, Flaky>();
    let error = Balance::builder(discover)
        .endpoint_breaker(BreakerConfig::default())
        .panic_threshold(120.0)
        .build()
        .unwrap_err();
    assert_eq!(error.field(), Some("panic_threshold"));
}
