//! `--demo`: N clients drive load through the gateway while a chaos script kills an instance,
//! makes one answer 503 to half its requests, makes one hang, then restarts them. A table
//! refreshed every second shows where traffic goes, the breaker states, retries, the
//! client-side success rate and p99; the run ends with a summary and a verdict.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use seawall::BoxError;
use tokio::time::Instant;

use crate::gateway::Fleet;
use crate::instance::{Behaviour, Cluster};

/// The share of idempotent requests that must succeed for the demo to pass.
pub const REQUIRED_SUCCESS: f64 = 0.999;

type DemoClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Default)]
struct Tally {
    idempotent: AtomicU64,
    idempotent_ok: AtomicU64,
    posts: AtomicU64,
    posts_ok: AtomicU64,
    /// Latencies (µs) of the current second, and of the whole run.
    window: Mutex<Vec<u32>>,
    all: Mutex<Vec<u32>>,
    /// The first few failures, for the summary.
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn record(
        &self,
        idempotent: bool,
        ok: bool,
        latency: Duration,
        failure: impl FnOnce() -> String,
    ) {
        let (total, good) = if idempotent {
            (&self.idempotent, &self.idempotent_ok)
        } else {
            (&self.posts, &self.posts_ok)
        };
        total.fetch_add(1, Ordering::Relaxed);
        if ok {
            good.fetch_add(1, Ordering::Relaxed);
        } else {
            let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            if failures.len() < 10 {
                failures.push(failure());
            }
        }
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.window
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(micros);
    }
}

fn percentile(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Duration::from_micros(u64::from(sorted[rank]))
}

/// Logs in as alice, retrying while the cluster comes up.
async fn login(client: &DemoClient, addr: SocketAddr) -> Result<String, BoxError> {
    let started = Instant::now();
    loop {
        let request = Request::post(format!("http://{addr}/auth/login"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"username":"alice","password":"wonderland"}"#,
            )))?;
        if let Ok(response) = client.request(request).await {
            if response.status() == StatusCode::OK {
                let body = response.into_body().collect().await?.to_bytes();
                let value: serde_json::Value = serde_json::from_slice(&body)?;
                if let Some(token) = value["token"].as_str() {
                    return Ok(token.to_owned());
                }
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err("could not log in within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One client: requests back to back until `stop`.
async fn client_loop(
    client: DemoClient,
    addr: SocketAddr,
    token: Arc<str>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut n = seed;
    while !stop.load(Ordering::Relaxed) {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let roll = (n >> 33) % 100;
        let (method, uri, body) = match roll {
            0..=44 => (
                Method::GET,
                format!("http://{addr}/users/{}", roll),
                Bytes::new(),
            ),
            45..=89 => (
                Method::GET,
                format!("http://{addr}/documents/{}", roll),
                Bytes::new(),
            ),
            _ => (
                Method::POST,
                format!("http://{addr}/documents"),
                Bytes::from_static(br#"{"title":"minutes"}"#),
            ),
        };
        let idempotent = method == Method::GET;
        let Ok(request) = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
        else {
            continue;
        };
        let started = Instant::now();
        // The client's own bound, well past the gateway's deadline: a hung request is a failure.
        let result = tokio::time::timeout(Duration::from_secs(5), async {
            let response = client.request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, BoxError>(status)
        })
        .await;
        let latency = started.elapsed();
        let (ok, why) = match result {
            Ok(Ok(status)) => (status.is_success(), status.to_string()),
            Ok(Err(e)) => (false, e.to_string()),
            Err(_) => (false, "no answer in 5 s".to_owned()),
        };
        tally.record(idempotent, ok, latency, || format!("{method} {uri}: {why}"));
    }
}

/// A step of the chaos script, at a fraction of the run.
struct Step {
    at: f64,
    what: &'static str,
    id: &'static str,
    action: fn(&crate::instance::Node),
}

fn script() -> Vec<Step> {
    vec![
        Step {
            at: 0.12,
            what: "kill",
            id: "users-1",
            action: |n| {
                n.kill();
            },
        },
        Step {
            at: 0.30,
            what: "503 to half its requests",
            id: "documents-2",
            action: |n| n.set_behaviour(Behaviour::Fail { rate: 0.5 }),
        },
        Step {
            at: 0.48,
            what: "hang (accept, never answer)",
            id: "users-3",
            action: |n| n.set_behaviour(Behaviour::Hang),
        },
        Step {
            at: 0.66,
            what: "heal",
            id: "documents-2",
            action: |n| n.set_behaviour(Behaviour::Normal),
        },
    ]
}

/// The instances restarted at 66 % of the run (kill and hang both need a restart).
const RESTART_AT: f64 = 0.66;
const RESTART: [&str; 2] = ["users-1", "users-3"];

/// Runs the demo; true if at least [`REQUIRED_SUCCESS`] of idempotent requests succeeded.
pub async fn run(
    addr: SocketAddr,
    gateway: &Fleet,
    cluster: Arc<Cluster>,
    duration: Duration,
    clients: usize,
) -> Result<bool, BoxError> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: DemoClient = Client::builder(TokioExecutor::new()).build(connector);
    let token: Arc<str> = login(&client, addr).await?.into();
    println!("logged in as alice; {clients} clients for {duration:?}\n");

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..clients {
        tasks.push(tokio::spawn(client_loop(
            client.clone(),
            addr,
            Arc::clone(&token),
            Arc::clone(&tally),
            Arc::clone(&stop),
            i as u64 + 1,
        )));
    }

    let started = Instant::now();
    let mut steps = script().into_iter().peekable();
    let mut restarted = false;
    let mut events: Vec<String> = Vec::new();
    let mut last_served: HashMap<String, u64> = HashMap::new();
    let mut last_retries = gateway.retries();
    let mut last_count = 0u64;
    let tty = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval_at(
        Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    while started.elapsed() < duration {
        tick.tick().await;
        let t = started.elapsed();
        let frac = t.as_secs_f64() / duration.as_secs_f64();
        while let Some(step) = steps.next_if(|s| s.at <= frac) {
            if let Some(node) = cluster.node(step.id) {
                (step.action)(node);
                events.push(format!(
                    "{:>5.1}s  {}: {}",
                    t.as_secs_f64(),
                    step.id,
                    step.what
                ));
            }
        }
        if !restarted && frac >= RESTART_AT {
            restarted = true;
            for id in RESTART {
                if let Some(node) = cluster.node(id) {
                    match node.restart().await {
                        Ok(new) => events.push(format!(
                            "{:>5.1}s  {id}: restarted on {new}",
                            t.as_secs_f64()
                        )),
                        Err(e) => events.push(format!(
                            "{:>5.1}s  {id}: restart failed: {e}",
                            t.as_secs_f64()
                        )),
                    }
                }
            }
        }
        let mut window =
            std::mem::take(&mut *tally.window.lock().unwrap_or_else(PoisonError::into_inner));
        window.sort_unstable();
        let p99 = percentile(&window, 0.99);
        let count = window.len() as u64;
        let ok =
            tally.idempotent_ok.load(Ordering::Relaxed) + tally.posts_ok.load(Ordering::Relaxed);
        let total = tally.idempotent.load(Ordering::Relaxed) + tally.posts.load(Ordering::Relaxed);
        let retries = gateway.retries();
        let idem = tally.idempotent.load(Ordering::Relaxed);
        let idem_ok = tally.idempotent_ok.load(Ordering::Relaxed);
        tally
            .all
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(&window);

        let mut out = String::new();
        if tty {
            out.push_str("\x1b[2J\x1b[H");
        }
        out.push_str(&format!(
            "t={:>4.0}s  {:>6} req/s  p99 {:>7.1} ms  retries+hedges +{:<5}  GET success {:>8.4} %  all {:>8.4} %\n",
            t.as_secs_f64(),
            count,
            p99.as_secs_f64() * 1e3,
            retries - last_retries,
            100.0 * idem_ok as f64 / idem.max(1) as f64,
            100.0 * ok as f64 / total.max(1) as f64,
        ));
        let _ = last_count;
        last_count = count;
        last_retries = retries;
        let views = gateway.instances();
        let mut served_now: HashMap<&str, u64> = HashMap::new();
        let answered =
            |v: &crate::gateway::InstanceView| v.served.unwrap_or(0) + v.failed.unwrap_or(0);
        for view in &views {
            let served = answered(view);
            let before = last_served.get(&view.id).copied().unwrap_or(served);
            served_now.insert(
                &view.service,
                served_now.get(view.service.as_str()).copied().unwrap_or(0)
                    + served.saturating_sub(before),
            );
        }
        out.push_str("  instance      state        share  in-flight  behaviour\n");
        let answered =
            |v: &crate::gateway::InstanceView| v.served.unwrap_or(0) + v.failed.unwrap_or(0);
        for view in &views {
            let served = answered(view);
            let before = last_served
                .insert(view.id.clone(), served)
                .unwrap_or(served);
            let share = 100.0 * served.saturating_sub(before) as f64
                / served_now
                    .get(view.service.as_str())
                    .copied()
                    .unwrap_or(0)
                    .max(1) as f64;
            let behaviour = match view.behaviour {
                Some(Behaviour::Normal) | None => "normal".to_owned(),
                Some(Behaviour::Slow { ms }) => format!("slow {ms} ms"),
                Some(Behaviour::Fail { rate }) => format!("503 x {:.0} %", rate * 100.0),
                Some(Behaviour::Hang) => "hang".to_owned(),
            };
            out.push_str(&format!(
                "  {:<13} {:<11} {:>5.1} %  {:>9}  {}\n",
                view.id, view.state, share, view.in_flight, behaviour
            ));
        }
        if tty {
            for event in &events {
                out.push_str(&format!("  {event}\n"));
            }
        } else if let Some(event) = events.last() {
            out.push_str(&format!("  last event: {event}\n"));
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    }

    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let mut rest =
        std::mem::take(&mut *tally.window.lock().unwrap_or_else(PoisonError::into_inner));
    let mut all = std::mem::take(&mut *tally.all.lock().unwrap_or_else(PoisonError::into_inner));
    all.append(&mut rest);
    all.sort_unstable();

    let idem = tally.idempotent.load(Ordering::Relaxed);
    let idem_ok = tally.idempotent_ok.load(Ordering::Relaxed);
    let posts = tally.posts.load(Ordering::Relaxed);
    let posts_ok = tally.posts_ok.load(Ordering::Relaxed);
    let executed: u64 = cluster
        .nodes
        .iter()
        .map(|n| n.stats.executed_posts.load(Ordering::Relaxed))
        .sum();
    let rate = idem_ok as f64 / idem.max(1) as f64;
    let passed = idem > 0 && rate >= REQUIRED_SUCCESS && executed <= posts;

    println!(
        "\n== summary ({:.0} s, {clients} clients) ==",
        started.elapsed().as_secs_f64()
    );
    for event in &events {
        println!("  {event}");
    }
    println!(
        "  GET  {idem_ok}/{idem} succeeded ({:.4} %, required {:.1} %)",
        100.0 * rate,
        100.0 * REQUIRED_SUCCESS
    );
    println!(
        "  POST {posts_ok}/{posts} succeeded; executed at the instances: {executed} (never more than sent: {})",
        if executed <= posts { "yes" } else { "NO" }
    );
    println!(
        "  latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; retries {}",
        percentile(&all, 0.50).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        percentile(&all, 1.0).as_secs_f64() * 1e3,
        gateway.retries()
    );
    let failures = tally
        .failures
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if !failures.is_empty() {
        println!("  first failures:");
        for failure in failures.iter() {
            println!("    {failure}");
        }
    }
    println!("  verdict: {}", if passed { "PASS" } else { "FAIL" });
    Ok(passed)
}
