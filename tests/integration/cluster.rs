//! The example cluster's gateway, in process, over loopback: instances die, hang and fail
//! while requests flow; bad input is refused and the gateway keeps serving.
//!
//! These run on real sockets and real time (a gateway is real networking), so every wait is
//! bounded and every timing assertion is an upper bound with a wide margin.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use seawall::discover::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::gateway::{Fleet, GatewayConfig};
use crate::instance::{Behaviour, Cluster, Directory, Node, TTL};

type TestClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) struct Harness {
    pub(crate) fleet: Fleet,
    cluster: Arc<Cluster>,
    client: TestClient,
    token: String,
}

impl Harness {
    async fn start(tune: impl FnOnce(&mut GatewayConfig)) -> Self {
        Self::start_on(Registry::new().into(), tune).await
    }

    /// The cluster and its gateway, registering and discovering through `directory`.
    pub(crate) async fn start_on(
        directory: Directory,
        tune: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let cluster = Arc::new(Cluster::start(directory.clone(), 3).await.unwrap());
        let mut config = GatewayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        tune(&mut config);
        let fleet = Fleet::start(
            config,
            1,
            move || {
                Cluster::SERVICES
                    .iter()
                    .map(|s| (s.to_string(), directory.watch(s)))
                    .collect()
            },
            None,
            Some(Arc::clone(&cluster)),
            Duration::from_secs(1),
        )
        .unwrap();
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        for service in Cluster::SERVICES {
            crate::support::eventually("all instances discovered", || {
                fleet.endpoints(service).len() == 3
            })
            .await;
        }
        let mut harness = Self {
            fleet,
            cluster,
            client,
            token: String::new(),
        };
        harness.token = harness.login().await;
        harness
    }

    pub(crate) fn node(&self, id: &str) -> &Arc<Node> {
        self.cluster.node(id).unwrap()
    }

    async fn login(&self) -> String {
        let (status, body) = self
            .send(
                Method::POST,
                "/auth/login",
                None,
                r#"{"username":"alice","password":"wonderland"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        value["token"].as_str().unwrap().to_owned()
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &'static str,
    ) -> (StatusCode, String) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.fleet.addr));
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .expect("the gateway answers within 10 s")
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    pub(crate) async fn get(&self, path: &str) -> (StatusCode, String) {
        self.send(Method::GET, path, Some(&self.token), "").await
    }

    async fn post(&self, path: &str, body: &'static str) -> (StatusCode, String) {
        self.send(Method::POST, path, Some(&self.token), body).await
    }

    /// `clients` concurrent loops of `per_client` GETs; the statuses that were not 200.
    pub(crate) async fn load(
        self: &Arc<Self>,
        clients: usize,
        per_client: usize,
    ) -> (usize, Vec<String>) {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let harness = Arc::clone(self);
            tasks.push(tokio::spawn(async move {
                let mut bad = Vec::new();
                for i in 0..per_client {
                    let (status, body) = harness.get(&format!("/users/{c}-{i}")).await;
                    if status != StatusCode::OK {
                        bad.push(format!("{status} {body}"));
                    }
                }
                bad
            }));
        }
        let mut bad = Vec::new();
        for task in tasks {
            bad.extend(task.await.unwrap());
        }
        (clients * per_client, bad)
    }

    fn state(&self, id: &str) -> &'static str {
        self.fleet
            .instances()
            .into_iter()
            .find(|v| v.id == id)
            .map_or("absent", |v| v.state)
    }

    async fn stop(self) {
        self.fleet.shutdown().await;
        self.cluster.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_instances_under_load_loses_no_get() {
    let harness = Arc::new(Harness::start(|_| {}).await);
    let load = {
        let harness = Arc::clone(&harness);
        tokio::spawn(async move { harness.load(8, 150).await })
    };
    // Kill users-2 once traffic is flowing: its listener and open connections close.
    crate::support::eventually("users-2 got traffic", || {
        harness.node("users-2").stats.served.load(Ordering::Relaxed) > 20
    })
    .await;
    assert!(harness.node("users-2").kill());
    let (sent, bad) = load.await.unwrap();
    assert!(
        bad.is_empty(),
        "{} of {sent} GETs failed: {bad:?}",
        bad.len()
    );
    let served: u64 = ["users-1", "users-3"]
        .iter()
        .map(|id| harness.node(id).stats.served.load(Ordering::Relaxed))
        .sum();
    assert!(served > 0);
    Arc::try_unwrap(harness).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_instance_is_ejected_and_requests_succeed_inside_the_deadline() {
    let harness = Harness::start(|c| c.picker = "rr".into()).await;
    harness.node("users-2").set_behaviour(Behaviour::Hang);
    let deadline = GatewayConfig::new(harness.fleet.addr).deadline;
    let mut slowest = Duration::ZERO;
    for i in 0..60 {
        let started = Instant::now();
        let (status, body) = harness.get(&format!("/users/{i}")).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        assert!(!body.contains("users-2"));
    }
    assert!(
        slowest < deadline,
        "slowest {slowest:?} vs deadline {deadline:?}"
    );
    assert_eq!(harness.state("users-2"), "ejected");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_failing_half_its_requests_is_ejected_and_callers_barely_notice() {
    let harness = Arc::new(Harness::start(|c| c.picker = "rr".into()).await);
    harness
        .node("users-2")
        .set_behaviour(Behaviour::Fail { rate: 0.5 });
    let mut ejected_seen = false;
    let mut sent = 0;
    let mut bad = Vec::new();
    for _ in 0..10 {
        let (n, b) = harness.load(8, 40).await;
        sent += n;
        bad.extend(b);
        ejected_seen |= harness.state("users-2") == "ejected";
    }
    let success = 1.0 - bad.len() as f64 / sent as f64;
    assert!(success >= 0.999, "{success} over {sent}: {bad:?}");
    assert!(ejected_seen, "users-2's breaker never opened");
    // It was ejected, not merely retried around: it saw far fewer requests than its peers.
    let answered = |id: &str| {
        let stats = &harness.node(id).stats;
        stats.served.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed)
    };
    assert!(answered("users-2") * 2 < answered("users-1"));
    Arc::try_unwrap(harness).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_never_executed_twice_and_one_never_sent_is_retried() {
    let harness = Harness::start(|c| c.picker = "rr".into()).await;
    let executed = |h: &Harness| -> u64 {
        h.cluster
            .nodes
            .iter()
            .map(|n| n.stats.executed_posts.load(Ordering::Relaxed))
            .sum()
    };
    // documents-2 does the work, then answers after the per-try timeout: the gateway must
    // not send the POST again (it was executed), so the caller sees 504.
    harness
        .node("documents-2")
        .set_behaviour(Behaviour::Slow { ms: 600 });
    let mut created = 0;
    let mut timed_out = 0;
    for _ in 0..30 {
        let (status, body) = harness.post("/documents/", r#"{"title":"once"}"#).await;
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::GATEWAY_TIMEOUT => timed_out += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(timed_out > 0, "the slow instance was never picked");
    // Let the slow instance finish the work it was given.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(executed(&harness), 30, "every POST executed exactly once");
    assert_eq!(created + timed_out, 30);

    // A POST that could not connect was never sent, so it is retried elsewhere.
    harness.node("documents-2").set_behaviour(Behaviour::Normal);
    harness.node("documents-3").kill();
    // Give the client pool a moment to see the killed instance close its idle connections.
    // A POST written on such a connection in the instant it closes is ambiguous (it may have
    // arrived), so the gateway rightly does not retry it: that case answers 502.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = executed(&harness);
    for _ in 0..20 {
        let (status, body) = harness.post("/documents/", r#"{"title":"x"}"#).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    assert_eq!(executed(&harness) - before, 20);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_stops_its_heartbeats_leaves_rotation_within_its_ttl() {
    let harness = Harness::start(|_| {}).await;
    harness.node("users-3").stop_heartbeats();
    let stopped = Instant::now();
    while harness
        .fleet
        .endpoints("users")
        .contains(&"users-3".to_owned())
    {
        assert!(
            stopped.elapsed() < TTL + Duration::from_secs(2),
            "still in rotation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stopped.elapsed() <= TTL + Duration::from_millis(500));
    for i in 0..20 {
        let (status, body) = harness.get(&format!("/users/{i}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!body.contains("users-3"), "{body}");
    }
    harness.stop().await;
}

/// Sends raw bytes and reads what comes back until the server closes or 3 s pass.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_answer_and_the_gateway_keeps_serving() {
    let harness = Harness::start(|c| {
        c.body_cap = 1024;
        c.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = harness.fleet.addr;

    let (status, body) = harness.get("/nothing/here").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(harness.get("/users/1").await.0, StatusCode::OK);

    let (status, _) = harness.send(Method::GET, "/users/1", None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(harness.get("/users/1").await.0, StatusCode::OK);

    let (status, _) = harness
        .send(Method::GET, "/users/1", Some("forged"), "")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(harness.get("/users/1").await.0, StatusCode::OK);

    // A request line and a header line that are not HTTP.
    let answer = raw(
        addr,
        b"GET /users/1 HTTP/1.1\r\nthis is not a header\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert_eq!(harness.get("/users/1").await.0, StatusCode::OK);

    // A body over the cap, announced by Content-Length: refused before anything is sent.
    let big: &'static str = Box::leak("x".repeat(4096).into_boxed_str());
    let (status, _) = harness.post("/documents/", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // The same, chunked (no length up front): cut off while streaming.
    let chunked = format!(
        "POST /documents/ HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n1000\r\n{}\r\n0\r\n\r\n",
        harness.token,
        "y".repeat(4096)
    );
    let answer = raw(addr, chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert_eq!(harness.get("/users/1").await.0, StatusCode::OK);

    // Headers that never finish: the connection is cut after the header-read timeout.
    let started = Instant::now();
    let answer = raw(addr, b"GET /users/1 HTTP/1.1\r\nhost: x\r\nx-slow: ").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "still open after {:?}: {answer:?}",
        started.elapsed()
    );
    assert!(!answer.contains("200 OK"), "{answer:?}");
    assert_eq!(harness.get("/users/1").await.0, StatusCode::OK);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_read_timeout_closes_waiting_connections_and_spares_slow_answers() {
    let harness = Harness::start(|c| {
        c.header_read_timeout = Duration::from_millis(300);
        c.per_try_timeout = Duration::from_secs(2);
        c.deadline = Duration::from_secs(3);
        c.hedge_after = None;
    })
    .await;
    // An answer that takes longer than 1.5 header-read timeouts: the connection is busy
    // with a request, not waiting for a head, so it is not cut.
    for node in ["users-1", "users-2", "users-3"] {
        harness
            .node(node)
            .set_behaviour(Behaviour::Slow { ms: 700 });
    }
    let started = Instant::now();
    let (status, body) = harness.get("/users/slow").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(700));

    // A kept-alive connection that sends nothing after its answer is closed after the
    // timeout (not before), like one that never finishes its head.
    for node in ["users-1", "users-2", "users-3"] {
        harness.node(node).set_behaviour(Behaviour::Normal);
    }
    let mut stream = TcpStream::connect(harness.fleet.addr).await.unwrap();
    let request = format!(
        "GET /users/1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n",
        harness.token
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    let idle = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // the rest of the body
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle connection was kept for 3 s");
    assert!(
        idle.elapsed() >= Duration::from_millis(300),
        "closed after {:?}, before the timeout",
        idle.elapsed()
    );
    assert_eq!(harness.get("/users/1").await.0, StatusCode::OK);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish_and_takes_no_new_ones() {
    let harness = Harness::start(|_| {}).await;
    for node in ["users-1", "users-2", "users-3"] {
        harness
            .node(node)
            .set_behaviour(Behaviour::Slow { ms: 250 });
    }
    let Harness {
        fleet,
        cluster,
        client,
        token,
    } = harness;
    let addr = fleet.addr;
    let request = Request::get(format!("http://{addr}/users/in-flight"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let in_flight = tokio::spawn(client.request(request));
    // The request is at the instance when the gateway is told to stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = Instant::now();
    fleet.shutdown().await;
    let response = in_flight
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        stopping.elapsed() >= Duration::from_millis(100),
        "shutdown returned before the request in flight finished"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    cluster.stop();
}

#[test]
fn the_committed_cluster_toml_is_the_built_in_defaults() {
    use crate::gateway::ClusterFile;
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster/cluster.toml");
    let file = ClusterFile::load(&path).unwrap();
    assert_eq!(file.instances, Some(3));
    assert_eq!(file.etcd, None);
    assert_eq!(
        file.gateway,
        GatewayConfig::new(SocketAddr::from(([127, 0, 0, 1], 8080)))
    );
}

#[test]
fn a_bad_cluster_toml_names_the_file_and_the_field() {
    use crate::gateway::ClusterFile;
    let dir = std::env::temp_dir().join(format!("seawall-cluster-toml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "[gateway]\ndeadline = \"2 fortnights\"",
            "`2 fortnights` is not a duration",
        ),
        (
            "[gateway.breaker]\nfailure_rate = 0",
            "`failure_rate` must be in (0, 100]",
        ),
        (
            "[gateway]\npicker = \"fastest\"",
            "`gateway.picker`: unknown picker `fastest`",
        ),
        ("[gateway]\nlisten_on = \"x\"", "unknown field `listen_on`"),
        ("[gateway]\nhedge_after = \"0s\"", ""),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.join(format!("{i}.toml"));
        std::fs::write(&path, text).unwrap();
        match ClusterFile::load(&path) {
            Ok(file) => {
                assert!(expected.is_empty(), "{text:?} was accepted");
                assert_eq!(file.gateway.hedge_after, None, "\"0s\" turns hedging off");
            }
            Err(error) => {
                assert!(
                    error.contains(expected),
                    "{error:?} should contain {expected:?}"
                );
                assert!(error.contains(&path.display().to_string()), "{error:?}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hop_by_hop_headers_and_the_ones_connection_names_are_stripped() {
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("connection", "keep-alive, x-secret"),
        ("x-secret", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("proxy-connection", "keep-alive"),
        ("upgrade", "websocket"),
        ("host", "example"),
        ("accept", "*/*"),
    ] {
        headers.append(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    crate::gateway::strip_hop_by_hop(&mut headers);
    let mut left: Vec<&str> = headers.keys().map(http::HeaderName::as_str).collect();
    left.sort_unstable();
    assert_eq!(left, ["accept", "host"]);

    let mut plain = http::HeaderMap::new();
    plain.insert(
        http::header::HOST,
        http::HeaderValue::from_static("example"),
    );
    plain.insert(http::header::ACCEPT, http::HeaderValue::from_static("*/*"));
    let before = plain.clone();
    crate::gateway::strip_hop_by_hop(&mut plain);
    assert_eq!(plain, before);
}
