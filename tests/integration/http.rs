//! HTTP endpoints over real loopback servers and one pooled hyper-util client.

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

/// A server on 127.0.0.1:0 that answers every request with its name and the path it saw.
async fn server(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
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
