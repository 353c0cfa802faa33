//! Safe retries: idempotency, never-sent failures, body replay, server waits, deadlines,
//! endpoint avoidance.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use seawall::BoxError;
use seawall::http::ReplayBody;
use seawall::retry::{Idempotent, NotRetried, RetryConfig, RetryLayer};
use seawall::timeout::{DeadlineLayer, PerTryTimeoutLayer};
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

/// A scripted answer: a status and its headers.
type Answer = (u16, Vec<(&'static str, &'static str)>);

/// Answers with the scripted statuses in turn (then 200), recording every body it read.
#[derive(Clone, Default)]
struct Script {
    statuses: Arc<Mutex<VecDeque<Answer>>>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Script {
    fn new(statuses: &[(u16, &[(&'static str, &'static str)])]) -> Self {
        let script = Self::default();
        script
            .statuses
            .lock()
            .unwrap()
            .extend(statuses.iter().map(|(s, h)| (*s, h.to_vec())));
        script
    }

    fn calls(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }

    fn service<B>(
        &self,
    ) -> impl tower::Service<
        Request<ReplayBody<B>>,
        Response = Response<()>,
        Error = BoxError,
        Future: Send,
    > + Clone
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let script = self.clone();
        service_fn(move |req: Request<ReplayBody<B>>| {
            let script = script.clone();
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                script.bodies.lock().unwrap().push(body);
                let (status, headers) = script
                    .statuses
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or((200, vec![]));
                let mut response = Response::builder().status(status);
                for (name, value) in headers {
                    response = response.header(name, value);
                }
                Ok::<_, BoxError>(response.body(())?)
            }
        })
    }
}

fn retry() -> RetryLayer {
    RetryLayer::new("test", RetryConfig::default())
}

#[tokio::test(start_paused = true)]
async fn a_get_is_retried_on_503_and_a_post_is_not() {
    let script = Script::new(&[(503, &[]), (503, &[])]);
    let service = retry().layer(script.service::<Full<Bytes>>());
    let get = Request::get("/").body(Full::default()).unwrap();
    assert_eq!(service.clone().oneshot(get).await.unwrap().status(), 200);
    assert_eq!(script.calls(), 3, "two 503s, then the third attempt");

    let script = Script::new(&[(503, &[])]);
    let service = retry().layer(script.service::<Full<Bytes>>());
    let post = Request::post("/orders").body(Full::from("order")).unwrap();
    assert_eq!(service.clone().oneshot(post).await.unwrap().status(), 503);
    assert_eq!(script.calls(), 1, "a POST is never sent twice");

    // Unless it says it is safe to repeat.
    let script = Script::new(&[(503, &[])]);
    let service = retry().layer(script.service::<Full<Bytes>>());
    let mut post = Request::post("/orders").body(Full::from("order")).unwrap();
    post.extensions_mut().insert(Idempotent);
    assert_eq!(service.oneshot(post).await.unwrap().status(), 200);
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_streamed_chunked_body_is_replayed_byte_for_byte() {
    let script = Script::new(&[(502, &[])]);
    let service = retry().layer(script.service());
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..50u8)
        .map(|i| {
            Ok(http_body::Frame::data(Bytes::from(vec![
                i;
                100 + usize::from(
                    i
                )
            ])))
        })
        .collect();
    let expected: Vec<u8> = (0..50u8)
        .flat_map(|i| vec![i; 100 + usize::from(i)])
        .collect();
    let body = StreamBody::new(futures_stream(chunks));
    let put = Request::put("/blob").body(body).unwrap();
    assert_eq!(service.oneshot(put).await.unwrap().status(), 200);
    let bodies = script.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0], expected);
    assert_eq!(bodies[1], expected, "the retry sent the same bytes");
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_cap_is_sent_once_and_not_retried() {
    let script = Script::new(&[(503, &[])]);
    let service = RetryLayer::new("test", RetryConfig::default().replay_cap(1024))
        .layer(script.service::<Full<Bytes>>());
    let put = Request::put("/blob")
        .body(Full::from(vec![7u8; 4096]))
        .unwrap();
    assert_eq!(service.oneshot(put).await.unwrap().status(), 503);
    assert_eq!(script.calls(), 1);

    // When the attempt fails with an error, the reason is in the error.
    let failing = service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
        req.into_body().collect().await?;
        Err::<Response<()>, BoxError>("connection reset".into())
    });
    let service = RetryLayer::new("test", RetryConfig::default().replay_cap(1024)).layer(failing);
    let put = Request::put("/blob")
        .body(Full::from(vec![7u8; 4096]))
        .unwrap();
    let error = service.oneshot(put).await.unwrap_err();
    let not_retried = error.downcast_ref::<NotRetried>().expect("NotRetried");
    assert_eq!(not_retried.cap(), 1024);
    assert!(error.to_string().contains("replay cap"));
}

#[tokio::test(start_paused = true)]
async fn retry_after_and_grpc_pushback_set_the_wait() {
    let script = Script::new(&[(503, &[("retry-after", "2")])]);
    let service = retry().layer(script.service::<Full<Bytes>>());
    let start = Instant::now();
    service
        .oneshot(Request::get("/").body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));

    let script = Script::new(&[(429, &[("retry-after", "1")])]);
    let service = retry().layer(script.service::<Full<Bytes>>());
    let start = Instant::now();
    assert_eq!(
        service
            .oneshot(Request::get("/").body(Full::default()).unwrap())
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(start.elapsed(), Duration::from_secs(1));

    // 429 without Retry-After is not retried.
    let script = Script::new(&[(429, &[])]);
    let service = retry().layer(script.service::<Full<Bytes>>());
    assert_eq!(
        service
            .oneshot(Request::get("/").body(Full::default()).unwrap())
            .await
            .unwrap()
            .status(),
        429
    );

    // gRPC UNAVAILABLE with a pushback of 700 ms; a negative pushback stops retries.
    let grpc = |headers: &'static [(&'static str, &'static str)]| Script::new(&[(200, headers)]);
    let script = grpc(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "700")]);
    let service = retry().layer(script.service::<Full<Bytes>>());
    let start = Instant::now();
    let call =
        Request::post("/greeter.Greeter/SayHello").header("content-type", "application/grpc");
    let mut request = call.body(Full::default()).unwrap();
    request.extensions_mut().insert(Idempotent);
    service.oneshot(request).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(700));
    assert_eq!(script.calls(), 2, "gRPC UNAVAILABLE retried");

    let script = grpc(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "-1")]);
    let service = retry().layer(script.service::<Full<Bytes>>());
    let mut request = Request::get("/").body(Full::default()).unwrap();
    request.extensions_mut().insert(Idempotent);
    service.oneshot(request).await.unwrap();
    assert_eq!(script.calls(), 1, "pushback said don't");
}

#[tokio::test(start_paused = true)]
async fn no_retry_outlives_the_deadline() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let hang = service_fn(move |_: Request<ReplayBody<Full<Bytes>>>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { std::future::pending::<Result<Response<()>, BoxError>>().await }
    });
    let service = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_millis(1000)))
        .layer(RetryLayer::new(
            "test",
            RetryConfig::default().max_attempts(10),
        ))
        .layer(PerTryTimeoutLayer::new(Duration::from_millis(400)))
        .service(hang);
    let start = Instant::now();
    let error = service
        .oneshot(Request::get("/").body(Full::default()).unwrap())
        .await
        .unwrap_err();
    assert!(error.is::<seawall::DeadlineExceeded>(), "{error}");
    assert!(
        start.elapsed() <= Duration::from_millis(1000),
        "{:?}",
        start.elapsed()
    );
    // 400 ms, 400 ms (+ seeded backoff), then what is left — never more than the deadline
    // allows.
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

/// A `Stream` over a vector, for `StreamBody`.
fn futures_stream<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Unpin {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T: Unpin> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

mod through_balance {
    use super::*;
    use crate::support::{eventually, status_server};
    use seawall::balance::{Balance, LeastConn, RoundRobin};
    use seawall::classify::HttpStatus;
    use seawall::discover::{Change, Instance};
    use seawall::http::{HttpEndpoints, default_client};

    type HttpBalance<P> =
        Balance<&'static str, seawall::http::HttpEndpoint<ReplayBody<Full<Bytes>>>, P, HttpStatus>;

    /// A balancer over the given instances, classifying 5xx as failures.
    async fn balance_over<P: seawall::balance::Pick>(
        instances: &[(&'static str, std::net::SocketAddr)],
        picker: P,
    ) -> HttpBalance<P> {
        let (tx, discover) = crate::support::channel();
        for &(name, addr) in instances {
            tx.send(Ok(Change::Insert(name, Instance::new(name, addr))))
                .unwrap();
        }
        std::mem::forget(tx); // the set stays as it is for the test's lifetime
        let balance = Balance::builder(HttpEndpoints::new(
            default_client::<ReplayBody<Full<Bytes>>>(),
            discover,
        ))
        .picker(picker)
        .classify(HttpStatus)
        .seed(5)
        .build()
        .unwrap();
        eventually("published", || balance.endpoints().len() == instances.len()).await;
        balance
    }

    /// An address nothing listens on (bound, then closed).
    async fn dead_address() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test]
    async fn a_post_that_hit_a_refused_connection_is_retried_and_runs_once() {
        let served = Arc::new(AtomicUsize::new(0));
        let live = status_server(200, served.clone()).await;
        let dead = dead_address().await;
        let balance = balance_over(&[("dead", dead), ("live", live)], RoundRobin::new()).await;
        let service = retry().layer(balance);
        for i in 0..10 {
            let post = Request::post("/orders")
                .body(Full::from(format!("order {i}")))
                .unwrap();
            let response =
                tokio::time::timeout(Duration::from_secs(5), service.clone().oneshot(post))
                    .await
                    .expect("bounded")
                    .unwrap();
            assert_eq!(response.status(), 200);
        }
        assert_eq!(
            served.load(Ordering::SeqCst),
            10,
            "every POST executed exactly once"
        );
    }

    #[tokio::test]
    async fn a_retry_goes_to_an_endpoint_not_yet_tried() {
        let (bad, good) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let bad_addr = status_server(503, bad.clone()).await;
        let good_addr = status_server(200, good.clone()).await;
        // Least connection with random ties: without avoidance a retry would go back to the
        // same endpoint half the time.
        let balance =
            balance_over(&[("bad", bad_addr), ("good", good_addr)], LeastConn::new()).await;
        let service =
            RetryLayer::new("avoid", RetryConfig::default().max_attempts(2)).layer(balance);
        for _ in 0..30 {
            let get = Request::get("/").body(Full::default()).unwrap();
            let response =
                tokio::time::timeout(Duration::from_secs(5), service.clone().oneshot(get))
                    .await
                    .expect("bounded")
                    .unwrap();
            assert_eq!(
                response.status(),
                200,
                "with 2 attempts, the retry must go to the other endpoint (bad {} good {})",
                bad.load(Ordering::SeqCst),
                good.load(Ordering::SeqCst)
            );
        }
        assert_eq!(good.load(Ordering::SeqCst), 30);
        // Every failure on the bad endpoint was followed by a success on the good one (the
        // status check above); make sure there were such retries, or the test proves nothing.
        let bad = bad.load(Ordering::SeqCst);
        assert!(
            (1..30).contains(&bad),
            "retries exercised: {bad} first picks of the bad endpoint"
        );
    }
}

/// Answers call `n` after `delays[n]` (`None`: never), with `x-call: n`.
fn delayed(
    delays: &'static [Option<u64>],
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<ReplayBody<Full<Bytes>>>,
    Response = Response<()>,
    Error = BoxError,
    Future: Send,
> + Clone {
    service_fn(move |_: Request<ReplayBody<Full<Bytes>>>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            match delays.get(n).copied().flatten() {
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                None => std::future::pending().await,
            }
            Ok::<_, BoxError>(Response::builder().header("x-call", n).body(())?)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_stalled_get_is_hedged_after_the_delay_and_the_first_final_answer_wins() {
    let hedged = || {
        RetryLayer::new(
            "hedge",
            RetryConfig::default().hedge_after(Duration::from_millis(50)),
        )
    };
    let call = |layer: &RetryLayer, delays: &'static [Option<u64>], request| {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = layer.layer(delayed(delays, calls.clone()));
        async move {
            let started = Instant::now();
            let response = service.oneshot(request).await.unwrap();
            let winner = response.headers()["x-call"].to_str().unwrap().to_owned();
            (winner, started.elapsed(), calls.load(Ordering::SeqCst))
        }
    };
    let get = || Request::get("/").body(Full::default()).unwrap();

    // The first attempt never answers: the hedge, sent at 50 ms, answers at once.
    let layer = hedged();
    let (winner, took, calls) = call(&layer, &[None, Some(0)], get()).await;
    assert_eq!(
        (winner.as_str(), took, calls),
        ("1", Duration::from_millis(50), 2)
    );
    assert_eq!(layer.hedges(), 1);

    // An answer before the delay: no hedge.
    let layer = hedged();
    let (winner, took, calls) = call(&layer, &[Some(10)], get()).await;
    assert_eq!(
        (winner.as_str(), took, calls),
        ("0", Duration::from_millis(10), 1)
    );
    assert_eq!(layer.hedges(), 0);

    // The original answers after the hedge left but before the hedge answers: it wins.
    let layer = hedged();
    let (winner, took, calls) = call(&layer, &[Some(80), Some(200)], get()).await;
    assert_eq!(
        (winner.as_str(), took, calls),
        ("0", Duration::from_millis(80), 2)
    );

    // A POST is never hedged: it waits for its one attempt.
    let layer = hedged();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = layer.layer(delayed(&[None, Some(0)], calls.clone()));
    let post = Request::post("/orders").body(Full::from("order")).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), service.oneshot(post))
            .await
            .is_err()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(layer.hedges(), 0);

    // Hedges are attempts: with max_attempts(1) there is none.
    let layer = RetryLayer::new(
        "hedge",
        RetryConfig::default()
            .max_attempts(1)
            .hedge_after(Duration::from_millis(50)),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let service = layer.layer(delayed(&[None, Some(0)], calls.clone()));
    assert!(
        tokio::time::timeout(Duration::from_secs(1), service.oneshot(get()))
            .await
            .is_err()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Over a per-try timeout, the retry layer's hedge instant is kept by the per-try timer (one
/// timer per attempt instead of two); the hedge still leaves on time, and the attempt keeps
/// its own timeout.
#[tokio::test(start_paused = true)]
async fn a_hedge_over_a_per_try_timeout_leaves_on_time_and_the_attempt_keeps_its_timeout() {
    let stack = |max_attempts: u32, delays: &'static [Option<u64>], calls: Arc<AtomicUsize>| {
        ServiceBuilder::new()
            .layer(RetryLayer::new(
                "hedge",
                RetryConfig::default()
                    .max_attempts(max_attempts)
                    .hedge_after(Duration::from_millis(50)),
            ))
            .layer(PerTryTimeoutLayer::new(Duration::from_secs(1)))
            .service(delayed(delays, calls))
    };
    let get = || Request::get("/").body(Full::default()).unwrap();

    // The first attempt never answers; the hedge leaves at 50 ms and answers at once.
    let calls = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let response = stack(3, &[None, Some(0)], calls.clone())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(response.headers()["x-call"], "1");
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Neither answers: the first attempt still times out at 1 s (its timer went on after
    // waking the call for the hedge), the hedge at 1.05 s, and the call ends with it.
    let calls = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let error = stack(2, &[None, None], calls.clone())
        .oneshot(get())
        .await
        .unwrap_err();
    assert!(error.is::<seawall::TryTimeout>(), "{error}");
    assert_eq!(started.elapsed(), Duration::from_millis(1050));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // An answer before the hedge delay: no hedge, and nothing fires later.
    let calls = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let response = stack(3, &[Some(10)], calls.clone())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(response.headers()["x-call"], "0");
    assert_eq!(started.elapsed(), Duration::from_millis(10));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
