//! Balance HTTP over three in-process instances that register and heartbeat, then kill one and
//! watch it leave rotation when its TTL runs out.
//!
//! ```sh
//! cargo run --example quickstart               # round robin
//! cargo run --example quickstart -- least-conn # or p2c
//! ```
//!
//! Everything listens on 127.0.0.1 ephemeral ports; the run takes about three seconds.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use seawall::BoxError;
use seawall::balance::{Balance, Picker};
use seawall::classify::HttpStatus;
use seawall::discover::{Instance, Registry};
use seawall::http::{HttpEndpoints, default_client};
use tokio::net::TcpListener;
use tower::ServiceExt;

const TTL: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_millis(500);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let picker: Picker = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "round-robin".into())
        .parse()?;
    println!("picker: {picker:?}");

    // Three instances of `users`, each registering itself and heartbeating.
    let registry = Registry::new();
    let mut instances = Vec::new();
    for name in ["users-1", "users-2", "users-3"] {
        let (addr, server) = serve(name).await?;
        let heartbeat =
            registry.spawn_heartbeat("users", Instance::new(name, addr), TTL, HEARTBEAT)?;
        println!("{name} listening on {addr}");
        instances.push((name, server, heartbeat));
    }

    // One balancer over whatever the registry says is alive, through one pooled client.
    let client = default_client::<Empty<Bytes>>();
    let users = Balance::builder(HttpEndpoints::new(client, registry.watch("users")))
        .name("users")
        .picker(picker)
        .classify(HttpStatus)
        .wait_for_endpoints(Duration::from_secs(1))
        .build()?;

    println!("\n12 requests over 3 instances:");
    report(spread(&users, 12).await?);

    // Kill users-2: its listener closes and its heartbeats stop, as in a crash.
    let (name, server, heartbeat) = instances.remove(1);
    server.abort();
    heartbeat.stop();
    let killed = tokio::time::Instant::now();
    while users.endpoints().len() == 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "\n{name} killed; it left rotation {:?} later (TTL {TTL:?})",
        killed.elapsed()
    );

    println!("\n12 requests over the 2 survivors:");
    report(spread(&users, 12).await?);
    Ok(())
}

/// Sends `n` requests and counts which instance answered each.
async fn spread<S>(users: &S, n: usize) -> Result<BTreeMap<String, usize>, BoxError>
where
    S: tower::Service<
            http::Request<Empty<Bytes>>,
            Response = http::Response<seawall::http::ResponseBody>,
            Error = BoxError,
        > + Clone,
{
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let request = http::Request::get(format!("/users/{i}")).body(Empty::new())?;
        let response = users.clone().oneshot(request).await?;
        let body = response.into_body().collect().await?.to_bytes();
        let instance = String::from_utf8_lossy(&body)
            .split('"')
            .nth(3)
            .unwrap_or("?")
            .to_owned();
        *counts.entry(instance).or_insert(0) += 1;
    }
    Ok(counts)
}

fn report(counts: BTreeMap<String, usize>) {
    for (instance, n) in counts {
        println!("  {instance}: {n} {}", "#".repeat(n));
    }
}

/// A tiny instance on an ephemeral loopback port that answers with JSON naming itself.
async fn serve(name: &'static str) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let body =
                            format!(r#"{{"instance":"{name}","path":"{}"}}"#, req.uri().path());
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    },
                );
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, task))
}
