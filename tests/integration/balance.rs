//! Balance as a service: never hangs, shares state across clones, counts in-flight calls
//! exactly, and applies discovery (errors, duplicates, removals) as documented.

use std::sync::atomic::Ordering;
use std::time::Duration;

use seawall::NoEndpoints;
use seawall::balance::{Balance, LeastConn, RoundRobin};
use seawall::discover::Change;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower::{Service, ServiceExt};

use crate::support::{Gated, Named, channel, eventually};

#[tokio::test(start_paused = true)]
async fn zero_endpoints_fail_within_one_call() {
    let (_tx, discover) = channel::<u32, Named>();
    let mut balance = Balance::builder(discover).name("users").build().unwrap();
    let mut call = task::spawn(balance.ready().await.unwrap().call(()));
    let error = assert_ready!(call.poll()).unwrap_err();
    let no_endpoints = error
        .downcast_ref::<NoEndpoints>()
        .expect("a NoEndpoints error");
    assert_eq!(no_endpoints.upstream(), "users");
    assert!(
        error
            .to_string()
            .contains("no endpoints for upstream `users`")
    );
}

#[tokio::test(start_paused = true)]
async fn bounded_wait_for_the_first_endpoints() {
    let (tx, discover) = channel();
    let balance = Balance::builder(discover)
        .wait_for_endpoints(Duration::from_secs(2))
        .build()
        .unwrap();

    // Nothing arrives: the call fails after exactly the wait.
    let start = Instant::now();
    let error = balance.clone().oneshot(()).await.unwrap_err();
    assert!(error.is::<NoEndpoints>());
    assert_eq!(start.elapsed(), Duration::from_secs(2));

    // An endpoint arrives during the wait: the call goes to it.
    let waiting = tokio::spawn(balance.clone().oneshot(()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.send(Ok(Change::Insert(1, Named::new("a")))).unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), "a");
}

#[tokio::test(start_paused = true)]
async fn discovery_is_applied_without_requests() {
    let (tx, discover) = channel();
    let balance = Balance::builder(discover).build().unwrap();
    for (key, name) in [(1, "a"), (2, "b"), (3, "c")] {
        tx.send(Ok(Change::Insert(key, Named::new(name)))).unwrap();
    }
    eventually("three endpoints published", || {
        balance.endpoints().len() == 3
    })
    .await;
    tx.send(Ok(Change::Remove(2))).unwrap();
    eventually("removal published", || balance.endpoints().len() == 2).await;
}

#[tokio::test(start_paused = true)]
async fn clones_continue_one_round_robin_sequence() {
    let (tx, discover) = channel();
    for (key, name) in [(1, "a"), (2, "b"), (3, "c")] {
        tx.send(Ok(Change::Insert(key, Named::new(name)))).unwrap();
    }
    let first = Balance::builder(discover)
        .picker(RoundRobin::new())
        .build()
        .unwrap();
    eventually("published", || first.endpoints().len() == 3).await;
    let mut clones = [first.clone(), first.clone(), first];
    let mut seen = Vec::new();
    for i in 0..9 {
        let balance = &mut clones[i % 3];
        seen.push(balance.ready().await.unwrap().call(()).await.unwrap());
    }
    // One shared position: every clone continues where the previous call left off.
    let order: Vec<&str> = seen[..3].to_vec();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "b", "c"]);
    assert_eq!(seen, [order.clone(), order.clone(), order].concat());
}

#[tokio::test(start_paused = true)]
async fn in_flight_is_released_on_completion_and_on_drop() {
    let (tx, discover) = channel();
    let endpoint = Gated::new("a");
    endpoint.ready.open();
    tx.send(Ok(Change::Insert(1, endpoint.clone()))).unwrap();
    let mut balance = Balance::builder(discover)
        .picker(LeastConn::new())
        .build()
        .unwrap();
    eventually("published", || balance.endpoints().len() == 1).await;
    let in_flight = |b: &Balance<_, _, _>| b.endpoints().get(0).unwrap().in_flight();

    let mut a = task::spawn(balance.call(()));
    let mut b = task::spawn(balance.call(()));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    assert_eq!(in_flight(&balance), 2);

    drop(a); // cancelled
    assert_eq!(in_flight(&balance), 1);

    endpoint.done.open();
    assert!(b.is_woken());
    assert_eq!(assert_ready_ok!(b.poll()), "a");
    assert_eq!(in_flight(&balance), 0);

    // Dropped before its first poll: released too.
    drop(balance.call(()));
    assert_eq!(in_flight(&balance), 0);
}

#[tokio::test(start_paused = true)]
async fn a_discovery_error_keeps_the_last_set() {
    let (tx, discover) = channel();
    tx.send(Ok(Change::Insert(1, Named::new("a")))).unwrap();
    tx.send(Ok(Change::Insert(2, Named::new("b")))).unwrap();
    tx.send(Err("registry unreachable".into())).unwrap();
    let balance = Balance::builder(discover).build().unwrap();
    eventually("published", || balance.endpoints().len() == 2).await;
    // The error did not clear anything, and calls still work.
    for _ in 0..4 {
        balance.clone().oneshot(()).await.unwrap();
    }
    assert_eq!(balance.endpoints().len(), 2);
    // After its backoff the stream is read again.
    tx.send(Ok(Change::Remove(1))).unwrap();
    eventually("removal after the error", || balance.endpoints().len() == 1).await;
    assert_eq!(*balance.endpoints().get(0).unwrap().key(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_stream_is_not_polled_in_a_tight_loop() {
    let (tx, discover) = channel::<u32, Named>();
    let consumed = discover.consumed.clone();
    let balance = Balance::builder(discover).build().unwrap();
    for _ in 0..50 {
        tx.send(Err("boom".into())).unwrap();
    }
    // Backoff is 100 ms doubling to 5 s: in 1 s at most a handful of errors are consumed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let consumed = consumed.load(Ordering::SeqCst);
    assert!(
        (2..=6).contains(&consumed),
        "consumed {consumed} errors in 1 s"
    );
    drop(balance);
}

#[tokio::test(start_paused = true)]
async fn duplicate_insert_replaces_and_old_calls_finish() {
    let (tx, discover) = channel();
    let old = Gated::new("old");
    old.ready.open();
    tx.send(Ok(Change::Insert(1, old.clone()))).unwrap();
    let mut balance = Balance::builder(discover).build().unwrap();
    eventually("published", || balance.endpoints().len() == 1).await;

    let mut on_old = task::spawn(balance.call(()));
    assert_pending!(on_old.poll());

    let new = Gated::new("new");
    new.ready.open();
    new.done.open();
    tx.send(Ok(Change::Insert(1, new.clone()))).unwrap();
    eventually("replaced", || {
        balance.endpoints().get(0).unwrap().service().name == "new"
    })
    .await;
    assert_eq!(balance.endpoints().len(), 1);
    assert_eq!(balance.clone().oneshot(()).await.unwrap(), "new");

    old.done.open();
    assert_eq!(assert_ready_ok!(on_old.poll()), "old");
    assert_eq!(old.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn removing_an_unknown_key_is_ignored() {
    let (tx, discover) = channel();
    tx.send(Ok(Change::Insert(1, Named::new("a")))).unwrap();
    tx.send(Ok(Change::Remove(99))).unwrap();
    tx.send(Ok(Change::Insert(2, Named::new("b")))).unwrap();
    let balance = Balance::builder(discover).build().unwrap();
    eventually("published", || balance.endpoints().len() == 2).await;
}

#[tokio::test(start_paused = true)]
async fn a_call_waiting_on_a_removed_endpoint_goes_elsewhere() {
    let (tx, discover) = channel();
    let a = Gated::new("a"); // not ready yet
    let b = Gated::new("b");
    b.ready.open();
    b.done.open();
    tx.send(Ok(Change::Insert("a", a.clone()))).unwrap();
    let mut balance = Balance::builder(discover)
        .picker(RoundRobin::new())
        .build()
        .unwrap();
    eventually("a published", || balance.endpoints().len() == 1).await;
    tx.send(Ok(Change::Insert("b", b.clone()))).unwrap();
    eventually("b published", || balance.endpoints().len() == 2).await;

    // Round robin over [a, b]: find a call that picked `a` (it waits for a's readiness).
    let mut waiting = task::spawn(balance.call(()));
    if waiting.poll().is_ready() {
        waiting = task::spawn(balance.call(()));
    }
    assert_pending!(waiting.poll());
    assert_eq!(
        balance
            .endpoints()
            .iter()
            .find(|e| *e.key() == "a")
            .unwrap()
            .in_flight(),
        1
    );

    tx.send(Ok(Change::Remove("a"))).unwrap();
    eventually("a removed", || balance.endpoints().len() == 1).await;
    a.ready.open();
    a.done.open();
    assert_eq!(assert_ready_ok!(waiting.poll()), "b");
    assert_eq!(
        a.calls.load(Ordering::SeqCst),
        0,
        "no call after the removal was published"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_clone_stops_discovery() {
    let (tx, discover) = channel::<u32, Named>();
    let dropped = discover.dropped.clone();
    let balance = Balance::builder(discover).build().unwrap();
    let clone = balance.clone();
    drop(balance);
    tokio::task::yield_now().await;
    assert!(!dropped.load(Ordering::SeqCst), "one clone still alive");
    drop(clone);
    eventually("discovery stream dropped", || {
        dropped.load(Ordering::SeqCst)
    })
    .await;
    assert!(tx.is_closed());
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    let (_tx, discover) = channel::<u32, Named>();
    let error = Balance::builder(discover).build().unwrap_err();
    assert!(error.is_no_runtime());
    assert!(error.to_string().contains("Tokio runtime"));
}

#[tokio::test(start_paused = true)]
async fn weights_from_discovery_give_nginx_smooth_order() {
    use seawall::balance::Weighted;
    use seawall::discover::from_list;

    let discover = from_list(
        [("a", 5), ("b", 1), ("c", 1)]
            .map(|(name, weight)| (name, Weighted::new(Named::new(name), weight))),
    );
    let mut balance = Balance::builder(discover)
        .picker(RoundRobin::new())
        .weighted()
        .build()
        .unwrap();
    eventually("published", || balance.endpoints().len() == 3).await;
    let mut order = Vec::new();
    for _ in 0..14 {
        order.push(balance.ready().await.unwrap().call(()).await.unwrap());
    }
    let period = ["a", "a", "b", "a", "c", "a", "a"];
    assert_eq!(order, [period, period].concat());
}

/// A response whose verdict its body decides keeps its call in flight until the body ends;
/// a failure in the trailers counts against the endpoint, a body dropped early is cancelled.
#[cfg(feature = "http")]
#[tokio::test]
async fn a_verdict_in_the_body_is_recorded_when_the_body_ends() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use seawall::balance::RoundRobin;
    use seawall::breaker::{BreakerConfig, State, Window};
    use seawall::classify::{GrpcStatus, GrpcTrailersBody, PendingVerdict};

    let endpoint = tower::service_fn(|_: ()| async {
        let verdict = PendingVerdict::new();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        let body = Full::new(Bytes::from_static(b"message"))
            .with_trailers(async move { Some(Ok(trailers)) });
        let response = http::Response::builder()
            .extension(verdict.clone())
            .body(GrpcTrailersBody::new(body, verdict))
            .unwrap();
        Ok::<_, seawall::BoxError>(response)
    });
    let (tx, discover) = crate::support::channel();
    tx.send(Ok(Change::Insert("only", endpoint))).unwrap();
    let balance = Balance::builder(discover)
        .picker(RoundRobin::new())
        .classify(GrpcStatus)
        .endpoint_breaker(
            BreakerConfig::default()
                .window(Window::Count { calls: 2 })
                .minimum_calls(2)
                .failure_rate(100.0),
        )
        .build()
        .unwrap();
    eventually("published", || balance.endpoints().len() == 1).await;
    let in_flight = || {
        balance
            .endpoints()
            .iter()
            .map(|e| e.in_flight())
            .sum::<usize>()
    };
    let state = || {
        balance
            .endpoints()
            .iter()
            .next()
            .and_then(|e| e.breaker_state())
    };

    // Dropped before its end: cancelled, neither success nor failure.
    let response = balance.clone().oneshot(()).await.unwrap();
    assert_eq!(in_flight(), 1, "the head alone does not end the call");
    drop(response);
    eventually("released", || in_flight() == 0).await;

    // Read to the end twice: UNAVAILABLE in the trailers, twice, opens the circuit.
    for _ in 0..2 {
        let response = balance.clone().oneshot(()).await.unwrap();
        assert_eq!(state(), Some(State::Closed));
        response.into_body().collect().await.unwrap();
    }
    eventually("the circuit opens on the trailers", || {
        state() == Some(State::Open)
    })
    .await;
    assert_eq!(in_flight(), 0);
}
