//! The circuit breaker as a tower layer: shared state, fast rejections, one trial under a race.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use seawall::breaker::{Breaker, BreakerConfig, State, Transition};
use seawall::{BoxError, CircuitOpen};
use tokio_test::{assert_pending, task};
use tower::{Layer, Service, ServiceExt, service_fn};

use crate::support::Gated;

fn config() -> BreakerConfig {
    BreakerConfig::default()
        .minimum_calls(4)
        .open_for(Duration::from_secs(5))
}

/// A service whose answer the test sets: Ok or Err.
fn scripted(
    fail: Arc<AtomicUsize>,
) -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(move |()| {
        let fail = fail.load(Ordering::SeqCst) != 0;
        async move {
            if fail {
                Err::<(), BoxError>("boom".into())
            } else {
                Ok(())
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn services_from_one_breaker_share_the_circuit_and_fail_fast() {
    let breaker = Breaker::new("users", config()).unwrap();
    let mut transitions = breaker.subscribe();
    let fail = Arc::new(AtomicUsize::new(1));
    // Two services (think: two axum routes) built from one layer value.
    let a = breaker.layer().layer(scripted(fail.clone()));
    let b = breaker.layer().layer(scripted(fail.clone()));
    for _ in 0..2 {
        assert!(a.clone().oneshot(()).await.is_err());
        assert!(b.clone().oneshot(()).await.is_err());
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        transitions.recv().await.unwrap(),
        Transition {
            from: State::Closed,
            to: State::Open
        }
    );

    // Rejected at once, with the time until a trial.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let error = b.clone().oneshot(()).await.unwrap_err();
    let open = error.downcast_ref::<CircuitOpen>().expect("CircuitOpen");
    assert_eq!(open.breaker(), "users");
    let after = open.retry_after().unwrap();
    assert!(
        after > Duration::from_secs(3) - Duration::from_millis(1)
            && after <= Duration::from_secs(3) + Duration::from_nanos(1),
        "{after:?}"
    );
    assert!(error.to_string().contains("fail fast"));

    // After the open period a good trial closes it for every service.
    tokio::time::sleep(Duration::from_secs(3) + Duration::from_millis(1)).await;
    fail.store(0, Ordering::SeqCst);
    a.clone().oneshot(()).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
    b.clone().oneshot(()).await.unwrap();
    assert_eq!(transitions.recv().await.unwrap().to, State::HalfOpen);
    assert_eq!(transitions.recv().await.unwrap().to, State::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_trial_while_many_callers_race() {
    let breaker = Breaker::new("race", config().open_for(Duration::from_millis(20))).unwrap();
    let fail = Arc::new(AtomicUsize::new(1));
    let tripper = breaker.layer().layer(scripted(fail));
    for _ in 0..4 {
        let _ = tripper.clone().oneshot(()).await;
    }
    assert_eq!(breaker.state(), State::Open);
    tokio::time::sleep(Duration::from_millis(30)).await;

    // 64 callers at once on two threads; the trial hangs until the gate opens.
    let endpoint = Gated::new("upstream");
    endpoint.ready.open();
    let service = breaker.layer().layer(endpoint.clone());
    let start = Arc::new(tokio::sync::Barrier::new(64));
    let callers: Vec<_> = (0..64)
        .map(|_| {
            let service = service.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                service.oneshot(()).await
            })
        })
        .collect();
    // Everyone but the trial is refused at once.
    crate::support::eventually("63 refusals", || {
        callers.iter().filter(|c| c.is_finished()).count() == 63
    })
    .await;
    assert_eq!(
        endpoint.calls.load(Ordering::SeqCst),
        1,
        "exactly one trial reached the upstream"
    );
    endpoint.done.open();
    let mut admitted = 0;
    for caller in callers {
        match caller.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(error) => assert!(
                error
                    .downcast_ref::<CircuitOpen>()
                    .unwrap()
                    .retry_after()
                    .is_none()
            ),
        }
    }
    assert_eq!(admitted, 1);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_trial_reopens_the_circuit() {
    let breaker = Breaker::new("cancel", config()).unwrap();
    let fail = Arc::new(AtomicUsize::new(1));
    let tripper = breaker.layer().layer(scripted(fail));
    for _ in 0..4 {
        let _ = tripper.clone().oneshot(()).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let endpoint = Gated::new("upstream");
    endpoint.ready.open();
    let mut service = breaker.layer().layer(endpoint);
    let mut trial = task::spawn(service.call(()));
    assert_pending!(trial.poll());
    assert_eq!(breaker.state(), State::HalfOpen);
    drop(trial);
    assert_eq!(breaker.state(), State::Open);
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn http_5xx_counts_as_failure_with_the_http_classifier() {
    use seawall::classify::HttpStatus;
    let breaker = Breaker::new("http", config()).unwrap();
    let upstream = service_fn(|()| async {
        Ok::<_, BoxError>(http::Response::builder().status(503).body(()).unwrap())
    });
    let service = breaker.layer().classify(HttpStatus).layer(upstream);
    for _ in 0..4 {
        let response = service.clone().oneshot(()).await.unwrap();
        assert_eq!(
            response.status(),
            503,
            "the response itself is passed through"
        );
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.counts().failures, 4);
    assert_eq!(breaker.failure_rate(), 100.0);
}

#[test]
fn an_invalid_config_names_the_field() {
    let error = Breaker::new("bad", BreakerConfig::default().failure_rate(0.0)).unwrap_err();
    assert_eq!(error.field(), "failure_rate");
    assert!(error.to_string().contains("failure_rate"));
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_rejects_at_once_and_counts_against_the_breaker() {
    use seawall::bulkhead::{BulkheadLayer, Overloaded};
    use tower::ServiceBuilder;

    let breaker = Breaker::new("bulkhead", config()).unwrap();
    let upstream = Gated::new("upstream");
    upstream.ready.open();
    let service = ServiceBuilder::new()
        .layer(breaker.layer())
        .layer(BulkheadLayer::new(2))
        .service(upstream.clone());

    let mut first = task::spawn(service.clone().oneshot(()));
    let mut second = task::spawn(service.clone().oneshot(()));
    assert_pending!(first.poll());
    assert_pending!(second.poll());
    // The third call finds the bulkhead full: an immediate error, not a wait.
    let error = service.clone().oneshot(()).await.unwrap_err();
    assert!(error.is::<Overloaded>(), "{error}");
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        breaker.counts().failures,
        1,
        "the rejection counts as a breaker failure"
    );

    upstream.done.open();
    assert!(first.await.is_ok() && second.await.is_ok());
    service.clone().oneshot(()).await.unwrap();
    assert_eq!(breaker.counts().calls, 4);
}
