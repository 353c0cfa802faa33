//! An axum 0.8 app that calls an upstream through a seawall stack, and puts seawall layers on
//! its own routes.
//!
//! ```sh
//! cargo run --example axum --features axum                 # listens on 127.0.0.1:3000
//! cargo run --example axum --features axum -- 127.0.0.1:0  # or any address
//! ```
//!
//! * `GET /quote` — the handler calls `quotes` (three instances registered in a
//!   [`Registry`], on ephemeral ports) through a cloned [`HttpUpstream`]: deadline, retry,
//!   per-try timeout, balance, per-endpoint breakers. Its error type is
//!   [`seawall::axum::UpstreamError`], so `?` turns a seawall error into 503 / 504 / 502.
//! * `GET /report?ms=N` — a handler that works for `N` ms, behind `HandleErrorLayer` and a
//!   seawall deadline and bulkhead: slower than the deadline is a 504, more than four at once
//!   is a 503.
//! * `GET /legacy` — a handler in front of a flaky dependency, behind a seawall circuit breaker
//!   that classifies its 5xx answers: after repeated failures it answers 503 with
//!   `Retry-After` at once, without calling the handler. `POST /legacy/outage?on=true` (or
//!   `false`) breaks or heals that dependency.
//!
//! `tests/integration/axum.rs` drives this same app over loopback and asserts every status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use seawall::axum::UpstreamError;
use seawall::balance::RoundRobin;
use seawall::breaker::{Breaker, BreakerConfig, Window};
use seawall::bulkhead::BulkheadLayer;
use seawall::classify::HttpStatus;
use seawall::discover::{Heartbeat, Instance, Registry};
use seawall::http::{ReplayBody, default_client};
use seawall::retry::RetryConfig;
use seawall::timeout::DeadlineLayer;
use seawall::{BoxError, HttpUpstream, Upstream};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::{ServiceBuilder, ServiceExt};

/// The `quotes` upstream: registry keys are instance ids, picked round robin.
type Quotes = HttpUpstream<String, Empty<Bytes>, RoundRobin>;

/// How the app is set up; the defaults are what `cargo run` uses, tests shorten the times.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The deadline on `/report`.
    pub report_deadline: Duration,
    /// Calls to `/report` allowed in flight at once.
    pub report_bulkhead: usize,
    /// How long `/legacy`'s breaker stays open.
    pub legacy_open_for: Duration,
    /// The whole budget of one call to `quotes`, retries included.
    pub quote_deadline: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            report_deadline: Duration::from_secs(1),
            report_bulkhead: 4,
            legacy_open_for: Duration::from_secs(10),
            quote_deadline: Duration::from_secs(2),
        }
    }
}

/// The running example: the app, its upstream's instances and the knobs tests turn.
#[derive(Debug)]
pub struct Example {
    /// Where the app listens.
    pub addr: SocketAddr,
    /// The registry the `quotes` instances register with.
    pub registry: Registry,
    /// The `quotes` instances: id, heartbeat and server task.
    pub quotes: Vec<(String, Heartbeat, JoinHandle<()>)>,
    /// While true, `/legacy`'s dependency fails.
    pub legacy_failing: Arc<AtomicBool>,
    /// The breaker in front of `/legacy`.
    pub legacy_breaker: Breaker,
    server: JoinHandle<()>,
}

impl Example {
    /// Starts three `quotes` instances and the app on `listen`.
    pub async fn start(listen: SocketAddr, settings: Settings) -> Result<Self, BoxError> {
        let registry = Registry::new();
        let mut quotes = Vec::new();
        for id in ["quotes-1", "quotes-2", "quotes-3"] {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let instance = Router::new().route(
                "/quote",
                get(move || async move {
                    axum::Json(serde_json::json!({
                        "served_by": id,
                        "quote": "Everything fails, all the time.",
                    }))
                }),
            );
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, instance).await;
            });
            let heartbeat = registry.spawn_heartbeat(
                "quotes",
                Instance::new(id, addr),
                Duration::from_secs(3),
                Duration::from_secs(1),
            )?;
            quotes.push((id.to_owned(), heartbeat, server));
        }

        let quotes_upstream = Upstream::builder("quotes")
            .picker(RoundRobin::new())
            .endpoint_breaker(BreakerConfig::default())
            .retry(RetryConfig::default())
            .per_try_timeout(Duration::from_millis(500))
            .deadline(settings.quote_deadline)
            .wait_for_endpoints(Duration::from_millis(200))
            .build_http(
                registry.watch("quotes"),
                default_client::<ReplayBody<Empty<Bytes>>>(),
            )?;

        let legacy_failing = Arc::new(AtomicBool::new(false));
        let legacy_breaker = Breaker::new(
            "legacy",
            BreakerConfig::default()
                .window(Window::Count { calls: 10 })
                .minimum_calls(5)
                .failure_rate(50.0)
                .open_for(settings.legacy_open_for),
        )?;

        let app = app(
            quotes_upstream,
            &settings,
            Arc::clone(&legacy_failing),
            &legacy_breaker,
        );
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            registry,
            quotes,
            legacy_failing,
            legacy_breaker,
            server,
        })
    }

    /// Stops the app and the instances.
    pub fn stop(self) {
        self.server.abort();
        for (_, heartbeat, server) in self.quotes {
            heartbeat.deregister();
            server.abort();
        }
    }
}

/// The app's router.
fn app(
    quotes: Quotes,
    settings: &Settings,
    legacy_failing: Arc<AtomicBool>,
    legacy_breaker: &Breaker,
) -> Router {
    // seawall layers on routes: axum needs an infallible service, so HandleErrorLayer goes
    // outermost and turns every seawall error into its response.
    let report = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(seawall::axum::handle_error))
        .layer(BulkheadLayer::new(settings.report_bulkhead))
        .layer(DeadlineLayer::new(settings.report_deadline));
    let legacy = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(seawall::axum::handle_error))
        .layer(legacy_breaker.layer().classify(HttpStatus));

    Router::new()
        .route("/quote", get(quote).with_state(quotes))
        .route("/report", get(report_handler).layer(report))
        .route(
            "/legacy",
            get(legacy_handler)
                .with_state(Arc::clone(&legacy_failing))
                .layer(legacy),
        )
        .route(
            "/legacy/outage",
            post(set_outage).with_state(legacy_failing),
        )
}

#[derive(serde::Deserialize)]
struct Outage {
    on: bool,
}

/// `POST /legacy/outage?on=true|false` makes the dependency behind `/legacy` fail, or heals it.
async fn set_outage(
    State(failing): State<Arc<AtomicBool>>,
    Query(outage): Query<Outage>,
) -> String {
    failing.store(outage.on, Ordering::Relaxed);
    format!("legacy outage: {}\n", outage.on)
}

/// Calls `quotes` through the cloned seawall stack; `?` maps every failure to its status.
async fn quote(State(quotes): State<Quotes>) -> Result<axum::response::Response, UpstreamError> {
    let request = http::Request::get("http://quotes/quote").body(Empty::new())?;
    let response = quotes.oneshot(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(axum::response::Response::from_parts(
        parts,
        axum::body::Body::from(body),
    ))
}

#[derive(serde::Deserialize)]
struct Work {
    #[serde(default)]
    ms: u64,
}

/// Works for `ms` milliseconds.
async fn report_handler(Query(work): Query<Work>) -> String {
    tokio::time::sleep(Duration::from_millis(work.ms)).await;
    format!("report ready after {} ms\n", work.ms)
}

/// Answers 500 while its dependency is failing.
async fn legacy_handler(State(failing): State<Arc<AtomicBool>>) -> (StatusCode, &'static str) {
    if failing.load(Ordering::Relaxed) {
        (StatusCode::INTERNAL_SERVER_ERROR, "legacy system down\n")
    } else {
        (StatusCode::OK, "legacy answer\n")
    }
}

#[allow(dead_code)] // the integration test includes this file for `Example` alone
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let listen: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into())
        .parse()?;
    let example = Example::start(listen, Settings::default()).await?;
    let addr = example.addr;
    println!("axum app on http://{addr}, calling `quotes` on three instances:\n");
    println!("  curl -i http://{addr}/quote           # 200, round robin over the instances");
    println!("  curl -i 'http://{addr}/report?ms=50'  # 200");
    println!("  curl -i 'http://{addr}/report?ms=5000' # 504: over the 1 s deadline");
    println!("  curl -i http://{addr}/legacy          # 200, behind a circuit breaker");
    println!("  curl -X POST 'http://{addr}/legacy/outage?on=true'  # now /legacy fails: 500s,");
    println!(
        "                                        # then 503 + Retry-After once the breaker opens"
    );
    println!("\nCtrl-C stops it.");
    tokio::signal::ctrl_c().await?;
    example.stop();
    Ok(())
}
