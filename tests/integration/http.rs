//! HTTP endpoints over real loopback servers: one pooled hyper-util client, or connections
//! of each endpoint's own.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use seawall::balance::{Balance, RoundRobin};
use seawall::classify::HttpStatus;
use seawall::discover::{Instance, Registry};
use seawall::http::{HttpEndpoints, default_client};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::support::eventually;

/// A server on 127.0.0.1:0 that answers every request with its name, the path it saw and
/// the `Host` header.
async fn server(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (addr, _, task) = counting_server(name).await;
    (addr, task)
}

#[tokio::test]
async fn balances_http_over_registered_instances() {
    let registry = Registry::new();
    let mut servers = Vec::new();
    for name in ["a", "b", "c"] {
        let (addr, task) = server(name).await;
        registry
            .register("users", Instance::new(name, addr), Duration::from_secs(30))
            .unwrap();
        servers.push((name, addr, task));
    }
    let client = default_client::<Empty<Bytes>>();
    let users = Balance::builder(HttpEndpoints::new(client, registry.watch("users")))
        .name("users")
        .picker(RoundRobin::new())
        .classify(HttpStatus)
        .weighted()
        .build()
        .unwrap();
    eventually("3 instances", || users.endpoints().len() == 3).await;

    let get = |path: &'static str| {
        let users = users.clone();
        async move {
            let request = http::Request::get(path).body(Empty::new()).unwrap();
            let response = tokio::time::timeout(Duration::from_secs(5), users.oneshot(request))
                .await
                .expect("bounded")
                .unwrap();
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(body.to_vec()).unwrap()
        }
    };

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let body = get("/users/42?full=1").await;
        let mut words = body.split(' ');
        let name = words.next().unwrap().to_owned();
        assert_eq!(
            words.next(),
            Some("/users/42?full=1"),
            "path and query kept"
        );
        let addr = servers.iter().find(|(n, ..)| *n == name).unwrap().1;
        assert_eq!(
            words.next(),
            Some(addr.to_string().as_str()),
            "host is the instance"
        );
        *counts.entry(name).or_default() += 1;
    }
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [10, 10, 10]);

    // Deregister one: the others take all traffic.
    assert!(registry.deregister("users", "b"));
    eventually("b removed", || users.endpoints().len() == 2).await;
    for _ in 0..10 {
        assert!(!get("/").await.starts_with("b "));
    }
    for (.., task) in servers {
        task.abort();
    }
}

#[tokio::test]
async fn an_http_health_check_takes_a_failing_instance_out() {
    use seawall::health::Health;
    use seawall::http::http_health_check;

    // Two instances; b's /health answers 503 once `sick` is set.
    let sick = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (a, a_task) = server("a").await;
    let (b, b_task) = health_server("b", sick.clone()).await;
    let registry = Registry::new();
    registry
        .register("users", Instance::new("a", a), Duration::from_secs(30))
        .unwrap();
    registry
        .register("users", Instance::new("b", b), Duration::from_secs(30))
        .unwrap();
    let users = Balance::builder(HttpEndpoints::new(
        default_client::<Empty<Bytes>>(),
        registry.watch("users"),
    ))
    .picker(RoundRobin::new())
    .health_check(
        http_health_check("/health")
            .interval(Duration::from_millis(20))
            .rise(1)
            .fall(1),
    )
    .build()
    .unwrap();
    let health = |name: &str| {
        users
            .endpoints()
            .iter()
            .find(|e| *e.key() == name)
            .and_then(|e| e.health())
    };
    eventually("both probed up", || {
        health("a") == Some(Health::Up) && health("b") == Some(Health::Up)
    })
    .await;
    sick.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually("b down", || health("b") == Some(Health::Down)).await;
    for _ in 0..6 {
        let request = http::Request::get("/").body(Empty::new()).unwrap();
        let response = users.clone().oneshot(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"a "), "only a serves while b is down");
    }
    sick.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("b up again", || health("b") == Some(Health::Up)).await;
    a_task.abort();
    b_task.abort();
}

/// A server whose `/health` answers 503 while `sick` is set.
async fn health_server(
    name: &'static str,
    sick: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sick = sick.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let sick = sick.load(std::sync::atomic::Ordering::SeqCst);
                    async move {
                        let status = if req.uri().path() == "/health" && sick {
                            503
                        } else {
                            200
                        };
                        let response = http::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from(format!("{name} {}", req.uri()))))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// A server like [`server`] that also counts the connections it accepted.
async fn counting_server(
    name: &'static str,
) -> (
    SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let body = format!("{name} {} {host}", req.uri());
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    },
                );
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted, task)
}

#[tokio::test]
async fn own_connections_are_kept_per_instance_and_requests_go_out_in_origin_form() {
    use seawall::http::Http1Config;
    let registry = Registry::new();
    let mut servers = Vec::new();
    for name in ["a", "b"] {
        let (addr, accepted, task) = counting_server(name).await;
        registry
            .register("users", Instance::new(name, addr), Duration::from_secs(30))
            .unwrap();
        servers.push((name, addr, accepted, task));
    }
    let users = Balance::builder(HttpEndpoints::http1(
        Http1Config::default(),
        registry.watch("users"),
    ))
    .picker(RoundRobin::new())
    .classify(HttpStatus)
    .build()
    .unwrap();
    eventually("2 instances", || users.endpoints().len() == 2).await;
    for i in 0..20 {
        // Absolute form in, origin form out; the Host is the instance's.
        let request = http::Request::get(format!("http://users.internal/users/{i}?full=1"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), users.clone().oneshot(request))
            .await
            .expect("bounded")
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        let mut words = body.split(' ');
        let name = words.next().unwrap();
        let addr = servers.iter().find(|(n, ..)| *n == name).unwrap().1;
        assert_eq!(words.next(), Some(format!("/users/{i}?full=1").as_str()));
        assert_eq!(words.next(), Some(addr.to_string().as_str()));
    }
    for (name, _, accepted, task) in servers {
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{name}: ten sequential requests share one kept connection"
        );
        task.abort();
    }
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error_and_a_post_is_retried_elsewhere() {
    use seawall::Upstream;
    use seawall::http::{ConnectError, Http1Config, HttpEndpoint};
    // A port nobody listens on any more.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let endpoint =
        HttpEndpoint::<Empty<Bytes>>::http1(&Instance::new("dead", dead), Http1Config::default());
    let request = http::Request::post("/orders").body(Empty::new()).unwrap();
    let error = endpoint.oneshot(request).await.unwrap_err();
    let connect = error
        .downcast_ref::<ConnectError>()
        .expect("a ConnectError");
    assert_eq!(connect.addr(), dead);

    let (live, accepted, task) = counting_server("live").await;
    let registry = Registry::new();
    registry
        .register(
            "orders",
            Instance::new("dead", dead),
            Duration::from_secs(30),
        )
        .unwrap();
    registry
        .register(
            "orders",
            Instance::new("live", live),
            Duration::from_secs(30),
        )
        .unwrap();
    let orders = Upstream::builder("orders")
        .picker(RoundRobin::new())
        .wait_for_endpoints(Duration::from_secs(1))
        .build_http1(registry.watch("orders"), Http1Config::default())
        .unwrap();
    for _ in 0..10 {
        let post = http::Request::post("/orders")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = orders.clone().oneshot(post).await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "never sent to the dead one, so retried"
        );
    }
    assert!(
        orders.retries() >= 1,
        "the dead instance was tried and refused"
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    task.abort();
}
