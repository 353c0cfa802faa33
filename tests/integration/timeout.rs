//! Per-try timeouts and deadlines, with a paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use seawall::timeout::{Deadline, DeadlineLayer, PerTryTimeoutLayer, PropagationHeader};
use seawall::{BoxError, DeadlineExceeded, TryTimeout};
use tokio::time::Instant;
use tower::{Layer, ServiceExt, service_fn};

/// What a request carried: `grpc-timeout`, `x-timeout-ms`, the deadline extension.
type Seen = (Option<String>, Option<String>, Option<Deadline>);

/// A service that records what it saw and never answers.
#[derive(Clone, Default)]
struct Hang {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Hang {
    fn service(
        &self,
    ) -> impl tower::Service<http::Request<()>, Response = (), Error = BoxError, Future: Send> + Clone
    {
        let seen = self.seen.clone();
        service_fn(move |req: http::Request<()>| {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            seen.lock().unwrap().push((
                header("grpc-timeout"),
                header("x-timeout-ms"),
                req.extensions().get::<Deadline>().copied(),
            ));
            async { std::future::pending::<Result<(), BoxError>>().await }
        })
    }
}

fn grpc_request() -> http::Request<()> {
    http::Request::post("/greeter.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_the_whole_call() {
    let hang = Hang::default();
    let service = DeadlineLayer::new(Duration::from_secs(2)).layer(hang.service());
    let start = Instant::now();
    let error = service.oneshot(http::Request::new(())).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let exceeded = error
        .downcast_ref::<DeadlineExceeded>()
        .expect("DeadlineExceeded");
    assert_eq!(exceeded.after(), Duration::from_secs(2));
    let deadline = hang.seen.lock().unwrap()[0]
        .2
        .expect("the deadline is in the extensions");
    assert_eq!(deadline.instant(), start + Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn an_earlier_deadline_or_incoming_grpc_timeout_wins() {
    let hang = Hang::default();
    let service = DeadlineLayer::new(Duration::from_secs(10))
        .honor_grpc_timeout(true)
        .layer(hang.service());
    let mut request = grpc_request();
    request
        .headers_mut()
        .insert("grpc-timeout", "500m".parse().unwrap());
    let start = Instant::now();
    service.clone().oneshot(request).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(500));

    let mut request = http::Request::new(());
    request
        .extensions_mut()
        .insert(Deadline::after(Duration::from_millis(300)));
    let start = Instant::now();
    service.oneshot(request).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn each_attempt_gets_min_of_per_try_and_the_time_left_and_says_so_downstream() {
    let hang = Hang::default();
    let per_try = PerTryTimeoutLayer::new(Duration::from_millis(300))
        .propagate_in(PropagationHeader::new(http::HeaderName::from_static(
            "x-timeout-ms",
        )))
        .layer(hang.service());
    // One request with a 1 s deadline, attempted again and again (as a retry layer would).
    let deadline = Deadline::after(Duration::from_secs(1));
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let mut request = grpc_request();
        request.extensions_mut().insert(deadline);
        let error = per_try.clone().oneshot(request).await.unwrap_err();
        outcomes.push(if error.is::<TryTimeout>() {
            "try"
        } else if error.is::<DeadlineExceeded>() {
            "deadline"
        } else {
            "other"
        });
    }
    // 300 + 300 + 300 ms, then 100 ms left (the deadline decides), then nothing left.
    assert_eq!(outcomes, ["try", "try", "try", "deadline", "deadline"]);
    let seen = hang.seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        4,
        "no attempt is sent once the deadline has passed"
    );
    let grpc: Vec<&str> = seen.iter().map(|s| s.0.as_deref().unwrap()).collect();
    assert_eq!(
        grpc,
        ["300000u", "300000u", "300000u", "100000u"],
        "grpc-timeout shrinks"
    );
    let ms: Vec<&str> = seen.iter().map(|s| s.1.as_deref().unwrap()).collect();
    assert_eq!(ms, ["300", "300", "300", "100"]);
}

#[tokio::test(start_paused = true)]
async fn plain_http_gets_no_grpc_timeout_and_a_fast_answer_passes() {
    let hang = Hang::default();
    let per_try = PerTryTimeoutLayer::new(Duration::from_millis(300)).layer(hang.service());
    per_try.oneshot(http::Request::new(())).await.unwrap_err();
    assert_eq!(hang.seen.lock().unwrap()[0].0, None);

    let fast = PerTryTimeoutLayer::new(Duration::from_millis(300)).layer(service_fn(
        |_: http::Request<()>| async { Ok::<_, BoxError>(7) },
    ));
    let stack = DeadlineLayer::new(Duration::from_secs(1)).layer(fast);
    assert_eq!(stack.oneshot(http::Request::new(())).await.unwrap(), 7);
}

/// An endpoint that answers at once, or never, and counts its calls.
#[derive(Clone)]
struct MaybeHung {
    hung: bool,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl tower::Service<http::Request<()>> for MaybeHung {
    type Response = bool;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<bool, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let hung = self.hung;
        Box::pin(async move {
            if hung {
                std::future::pending::<()>().await;
            }
            Ok(hung)
        })
    }
}

/// A per-try timeout above the balancer charges the timed-out endpoint a failure, so a hung
/// instance is ejected even by round robin; a caller that merely drops its call is not held
/// against the endpoint.
#[tokio::test(start_paused = true)]
async fn timeouts_eject_a_hung_endpoint_and_cancellations_do_not() {
    use seawall::balance::{Balance, RoundRobin};
    use seawall::breaker::{BreakerConfig, State, Window};
    use seawall::discover::Change;

    let hung = MaybeHung {
        hung: true,
        calls: Default::default(),
    };
    let fine = MaybeHung {
        hung: false,
        calls: Default::default(),
    };
    let (tx, discover) = crate::support::channel();
    tx.send(Ok(Change::Insert("hung", hung.clone()))).unwrap();
    tx.send(Ok(Change::Insert("fine", fine.clone()))).unwrap();
    let balance = Balance::builder(discover)
        .picker(RoundRobin::new())
        .endpoint_breaker(
            BreakerConfig::default()
                .window(Window::Count { calls: 10 })
                .minimum_calls(3)
                .failure_rate(50.0)
                .open_for(Duration::from_secs(5)),
        )
        .build()
        .unwrap();
    crate::support::eventually("published", || balance.endpoints().len() == 2).await;
    let state = |balance: &Balance<&'static str, MaybeHung, RoundRobin>| {
        balance
            .endpoints()
            .iter()
            .find(|e| *e.key() == "hung")
            .and_then(|e| e.breaker_state())
    };

    // Callers that give up on their own (not a seawall timeout) cancel: no failure counted.
    for _ in 0..6 {
        let call = balance.clone().oneshot(http::Request::new(()));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), call)
                .await
                .map_or(true, |r| r.is_ok())
        );
    }
    assert_eq!(hung.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(state(&balance), Some(State::Closed));

    // Through a per-try timeout, the third timed-out call opens the hung endpoint's breaker.
    let per_try = PerTryTimeoutLayer::new(Duration::from_millis(100)).layer(balance.clone());
    let mut timeouts = 0;
    for _ in 0..20 {
        match per_try.clone().oneshot(http::Request::new(())).await {
            Ok(hung) => assert!(!hung),
            Err(e) => {
                assert!(e.is::<TryTimeout>(), "{e}");
                timeouts += 1;
            }
        }
    }
    assert_eq!(timeouts, 3, "ejected after its third timeout");
    assert_eq!(hung.calls.load(std::sync::atomic::Ordering::SeqCst), 6);
    assert_eq!(state(&balance), Some(State::Open));
    assert_eq!(fine.calls.load(std::sync::atomic::Ordering::SeqCst), 3 + 17);
}
