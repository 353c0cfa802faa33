//! The gateway: routes `/<service>/<path>` to one live instance of `<service>` through one
//! `seawall::Upstream` per service (deadline → retry → per-try timeout → balance →
//! per-endpoint breaker → each instance's own HTTP/1.1 connections), after checking the
//! caller's token with `auth`.
//!
//! It also serves `/metrics` (Prometheus text), `/admin/instances` (JSON) and the admin
//! commands, and in gateway-only mode fronts a fixed set of backends with every path.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Empty, Full, Limited};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use seawall::balance::Picker;
use seawall::breaker::{BreakerConfig, State, Window};
use seawall::discover::Instance;
use seawall::http::{Http1Config, Http1Server, RequestBody};
use seawall::retry::RetryConfig;
use seawall::{BoxError, ErrorKind, HttpUpstream, Upstream};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tower::discover::Change;
use tower::{Service as _, ServiceExt};

use crate::instance::{Behaviour, Cluster};

/// What the gateway sends upstream: the caller's body, capped, or nothing (token checks).
pub type GatewayBody = Either<Limited<RequestBody>, Empty<Bytes>>;
/// What the gateway answers with: an upstream's body, streamed, or its own.
pub type ResponseBody = Either<seawall::http::ResponseBody, Full<Bytes>>;
type Service = HttpUpstream<String, GatewayBody, Picker>;

/// How the gateway routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Routing {
    /// `/<service>/<path>` → `<path>` on `<service>`; anything else is 404. Every service
    /// but `auth` needs a token that `auth` accepts.
    #[default]
    Services,
    /// Every path, unchanged, to the one upstream (gateway-only mode); no token check.
    Single,
}

/// Everything the gateway can be told: from `cluster.toml`'s `[gateway]` table (every field
/// optional), then from the command line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// The picker's name (`rr`, `lc`, `p2c`); each upstream gets its own picker.
    pub picker: String,
    #[serde(skip)]
    pub routing: Routing,
    /// Attempts per request, the first included (nginx `proxy_next_upstream_tries`).
    pub attempts: u32,
    /// Most one attempt may take (nginx `proxy_read_timeout`, HAProxy `timeout server`).
    #[serde(with = "seawall::config::duration")]
    pub per_try_timeout: Duration,
    /// Most a connection attempt may take.
    #[serde(with = "seawall::config::duration")]
    pub connect_timeout: Duration,
    /// Most a whole request may take, retries included.
    #[serde(with = "seawall::config::duration")]
    pub deadline: Duration,
    /// Hedge an idempotent request that has not answered after this long (`None`, or `"0s"`
    /// in the file: never).
    #[serde(with = "seawall::config::option_duration")]
    pub hedge_after: Option<Duration>,
    /// The per-endpoint breaker (outlier ejection).
    pub breaker: BreakerConfig,
    /// Largest request body accepted; larger gets 413.
    pub body_cap: usize,
    /// How long a connection may wait for a request's headers to be complete, counted from
    /// its opening or its last response (so an idle kept-alive connection closes after it
    /// too); enforced by a check every half of it, so a late head is cut between 1 and 1.5
    /// times it.
    #[serde(with = "seawall::config::duration")]
    pub header_read_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self::new(SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}

/// `cluster.toml`: the cluster's size and the gateway's settings; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Instances per service.
    pub instances: Option<usize>,
    /// Register and discover through etcd at this URL.
    pub etcd: Option<String>,
    #[serde(default)]
    pub gateway: GatewayConfig,
}

impl ClusterFile {
    /// Reads and checks `path`; the error names the file and the field.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut file: Self =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        file.gateway
            .picker
            .parse::<Picker>()
            .map_err(|e| format!("{}: `gateway.picker`: {e}", path.display()))?;
        if file.gateway.attempts == 0 {
            return Err(format!(
                "{}: `gateway.attempts` must be at least 1",
                path.display()
            ));
        }
        if file.gateway.hedge_after.is_some_and(|d| d.is_zero()) {
            file.gateway.hedge_after = None;
        }
        Ok(file)
    }
}

impl GatewayConfig {
    /// The cluster's defaults: p2c, 3 attempts, 300 ms per try, 2 s per request, a hedge
    /// after 200 ms, ejection after 3 failures in the last 5 calls for 5 s, 1 MiB bodies, 5 s
    /// to send headers.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            picker: "p2c".to_owned(),
            routing: Routing::Services,
            attempts: 3,
            per_try_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(2),
            hedge_after: Some(Duration::from_millis(200)),
            breaker: ejection_breaker(),
            body_cap: 1024 * 1024,
            header_read_timeout: Duration::from_secs(5),
        }
    }
}

/// The per-endpoint breaker of the cluster and of gateway-only mode, matching the policy the
/// benchmark gives nginx (`max_fails=3 fail_timeout=5s`): an endpoint is ejected for 5 s once
/// 3 of its last 5 calls failed, then gets one trial call.
pub fn ejection_breaker() -> BreakerConfig {
    BreakerConfig::default()
        .window(Window::Count { calls: 5 })
        .minimum_calls(3)
        .failure_rate(60.0)
        .open_for(Duration::from_secs(5))
}

/// Per service: the upstream and its request counters.
struct Route {
    upstream: Service,
    stats: RouteStats,
}

struct RouteStats {
    by_class: [Counter; 5],
    duration: Histogram,
}

impl RouteStats {
    fn new(service: &str) -> Self {
        let class = |c: &'static str| metrics::counter!("gateway_requests_total", "service" => service.to_owned(), "class" => c);
        Self {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: metrics::histogram!(
                "gateway_request_duration_seconds",
                "service" => service.to_owned()
            ),
        }
    }

    fn record(&self, status: StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.by_class[class].increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

/// The gateway: routes, upstreams, and what the admin endpoints read.
pub struct Gateway {
    config: GatewayConfig,
    routes: HashMap<String, Route>,
    prometheus: Option<PrometheusHandle>,
    cluster: Option<Arc<Cluster>>,
    /// Every worker's gateway, this one included, for the admin view.
    peers: Peers,
}

/// The gateways of all workers; weak, so a stopped worker's gateway is freed.
type Peers = Arc<std::sync::RwLock<Vec<std::sync::Weak<Gateway>>>>;

/// How the gateway connects to instances: HTTP/1.1 keep-alive connections kept by each
/// instance's endpoint (no shared pool to look up per request), `TCP_NODELAY`, the connect
/// timeout of the configuration.
fn connections(config: &GatewayConfig) -> Http1Config {
    Http1Config::default().connect_timeout(config.connect_timeout)
}

impl Gateway {
    /// A gateway over `services`, each fed by its own discovery stream.
    pub fn new<D, E>(
        config: GatewayConfig,
        services: Vec<(String, D)>,
        prometheus: Option<PrometheusHandle>,
        cluster: Option<Arc<Cluster>>,
        peers: Peers,
    ) -> Result<Arc<Self>, BoxError>
    where
        D: futures_core::Stream<Item = Result<Change<String, Instance>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let connections = connections(&config);
        config.picker.parse::<Picker>()?;
        let mut routes = HashMap::new();
        for (name, discover) in services {
            let upstream = Upstream::builder(name.clone())
                .picker(config.picker.parse::<Picker>()?)
                .endpoint_breaker(config.breaker.clone())
                .retry(match config.hedge_after {
                    Some(delay) => RetryConfig::default()
                        .max_attempts(config.attempts)
                        .hedge_after(delay),
                    None => RetryConfig::default().max_attempts(config.attempts),
                })
                .per_try_timeout(config.per_try_timeout)
                .deadline(config.deadline)
                .wait_for_endpoints(Duration::from_secs(1))
                .build_http1(discover, connections.clone())?;
            let stats = RouteStats::new(&name);
            routes.insert(name, Route { upstream, stats });
        }
        let gateway = Arc::new(Self {
            config,
            routes,
            prometheus,
            cluster,
            peers,
        });
        gateway
            .peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::downgrade(&gateway));
        Ok(gateway)
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish (at most
    /// `drain`).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
        drain: Duration,
    ) {
        let connections = Arc::new(guard::Shutdown::default());
        let server = Http1Server::new().header_read_timeout(self.config.header_read_timeout);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let gateway = Arc::clone(&self);
                    let peer = Peer::new(peer);
                    let service = tower::service_fn(move |request| {
                        let gateway = Arc::clone(&gateway);
                        let peer = peer.clone();
                        async move { Ok::<_, Infallible>(gateway.handle(request, &peer).await) }
                    });
                    let connection = connections.watch(server.serve(stream, service));
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        if tokio::time::timeout(drain, connections.shutdown())
            .await
            .is_err()
        {
            eprintln!("gateway: some requests were still in flight after {drain:?}; closing");
        }
    }

    /// The upstream of `service`, if the gateway routes to it.
    pub fn upstream(&self, service: &str) -> Option<&Service> {
        self.routes.get(service).map(|route| &route.upstream)
    }

    /// Total retries and hedges issued over every upstream.
    pub fn retries(&self) -> u64 {
        self.routes
            .values()
            .map(|r| r.upstream.retries() + r.upstream.hedges())
            .sum()
    }

    async fn handle(&self, request: Request<RequestBody>, peer: &Peer) -> Response<ResponseBody> {
        let path = request.uri().path();
        if path == "/metrics" {
            return self.metrics();
        }
        if path == "/admin/instances" || path.starts_with("/admin/") {
            return self.admin(request).await;
        }
        let (service, rest) = match self.config.routing {
            Routing::Single => match self.routes.iter().next() {
                Some((name, route)) => ((name.as_str(), route), None),
                None => return error(StatusCode::NOT_FOUND, "no upstream configured"),
            },
            Routing::Services => {
                let trimmed = &path[1.min(path.len())..];
                let (service, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
                let Some((name, route)) = self.routes.get_key_value(service) else {
                    return error(
                        StatusCode::NOT_FOUND,
                        &format!("no service {service:?}; routes are /<service>/<path>"),
                    );
                };
                ((name.as_str(), route), Some(format!("/{rest}")))
            }
        };
        let (service, route) = service;
        let started = tokio::time::Instant::now();
        let response = self.forward(route, service, rest, request, peer).await;
        route.stats.record(response.status(), started.elapsed());
        response
    }

    async fn forward(
        &self,
        route: &Route,
        service: &str,
        rest: Option<String>,
        request: Request<RequestBody>,
        peer: &Peer,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = request.into_parts();
        if let Some(length) = content_length(&parts.headers) {
            if length > self.config.body_cap as u64 {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("request body over the {} byte cap", self.config.body_cap),
                );
            }
        }
        // Nobody but the gateway says who the caller is.
        parts.headers.remove(&X_USER);
        if matches!(self.config.routing, Routing::Services) && service != "auth" {
            match self.verify(&parts.headers).await {
                Ok(user) => {
                    parts.headers.insert(X_USER.clone(), user);
                }
                Err(response) => return response,
            }
        }
        if let Some(rest) = rest {
            let path_and_query = match parts.uri.query() {
                Some(query) => format!("{rest}?{query}"),
                None => rest,
            };
            match Uri::builder().path_and_query(path_and_query).build() {
                Ok(uri) => parts.uri = uri,
                Err(_) => return error(StatusCode::BAD_REQUEST, "malformed path"),
            }
        }
        strip_hop_by_hop(&mut parts.headers);
        forwarded_for(&mut parts.headers, peer);
        let body = Either::Left(Limited::new(body, self.config.body_cap));
        let request = Request::from_parts(parts, body);
        // `ready` then `call` rather than `oneshot`: the oneshot future would hold the
        // service, the request and the response future side by side, and be moved whole.
        let mut upstream = route.upstream.clone();
        let sent = match upstream.ready().await {
            Ok(ready) => ready.call(request).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Either::Left(body))
            }
            Err(e) => error_response(&e),
        }
    }

    /// Asks `auth` whether the caller's token is valid; the user name on success.
    async fn verify(&self, headers: &HeaderMap) -> Result<HeaderValue, Response<ResponseBody>> {
        let Some(token) = headers.get(header::AUTHORIZATION) else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "missing Authorization: Bearer <token>; get one with POST /auth/login",
            ));
        };
        let Some(auth) = self.routes.get("auth") else {
            return Err(error(StatusCode::SERVICE_UNAVAILABLE, "no auth service"));
        };
        let mut request = Request::new(Either::Right(Empty::new()));
        *request.uri_mut() = Uri::from_static("/verify");
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, token.clone());
        let response = match auth.upstream.clone().oneshot(request).await {
            Ok(response) => response,
            Err(e) => return Err(error_response(&e)),
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), 4096).collect().await;
        match (status, body) {
            (StatusCode::OK, Ok(body)) => {
                #[derive(serde::Deserialize)]
                struct Verified {
                    user: String,
                }
                serde_json::from_slice::<Verified>(&body.to_bytes())
                    .ok()
                    .and_then(|v| HeaderValue::from_str(&v.user).ok())
                    .ok_or_else(|| error(StatusCode::BAD_GATEWAY, "auth answered nonsense"))
            }
            (StatusCode::UNAUTHORIZED, _) => Err(error(StatusCode::UNAUTHORIZED, "invalid token")),
            _ => Err(error(
                StatusCode::BAD_GATEWAY,
                "auth could not check the token",
            )),
        }
    }

    fn metrics(&self) -> Response<ResponseBody> {
        match &self.prometheus {
            Some(handle) => {
                let mut response =
                    Response::new(Either::Right(Full::new(Bytes::from(handle.render()))));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
            None => error(StatusCode::NOT_FOUND, "metrics are not enabled"),
        }
    }

    /// The admin view over every worker: in-flight counts add up, and an endpoint is shown
    /// in the worst state any worker's balancer has it in.
    pub fn instances(&self) -> Vec<InstanceView> {
        let peers: Vec<Arc<Gateway>> = self
            .peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        merge(peers.iter().map(|gateway| gateway.local_instances()))
    }

    /// Total retries issued over every upstream of every worker.
    pub fn all_retries(&self) -> u64 {
        self.peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .map(|gateway| gateway.retries())
            .sum()
    }

    /// The admin view of every instance as this worker's balancers see it.
    fn local_instances(&self) -> Vec<InstanceView> {
        let mut views = Vec::new();
        let mut names: Vec<&String> = self.routes.keys().collect();
        names.sort();
        for name in names {
            let balance = self.routes[name].upstream.balance();
            for endpoint in balance.endpoints().iter() {
                let id = endpoint.key().clone();
                let node = self
                    .cluster
                    .as_ref()
                    .and_then(|c| c.node(&id))
                    .map(|node| node.view());
                views.push(InstanceView {
                    service: name.clone(),
                    address: endpoint.service().addr().to_string(),
                    state: match endpoint.breaker_state() {
                        None | Some(State::Closed) => "healthy",
                        Some(State::Open) => "ejected",
                        Some(State::HalfOpen) => "half-open",
                    },
                    in_flight: endpoint.in_flight(),
                    served: node.as_ref().map(|n| n.served),
                    failed: node.as_ref().map(|n| n.failed),
                    behaviour: node.map(|n| n.behaviour),
                    id,
                });
            }
        }
        // Instances that are down are no longer in any balancer; show them too.
        if let Some(cluster) = &self.cluster {
            for node in &cluster.nodes {
                if !views.iter().any(|v| v.id == node.id) {
                    let view = node.view();
                    views.push(InstanceView {
                        service: view.service.to_owned(),
                        id: view.id,
                        address: view.addr.unwrap_or_else(|| "-".into()),
                        state: if view.up { "registering" } else { "down" },
                        in_flight: 0,
                        served: Some(view.served),
                        failed: Some(view.failed),
                        behaviour: Some(view.behaviour),
                    });
                }
            }
        }
        views
    }

    async fn admin(&self, request: Request<RequestBody>) -> Response<ResponseBody> {
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or("").to_owned();
        if path == "/admin/instances" && request.method() == Method::GET {
            return json(StatusCode::OK, &self.instances());
        }
        // POST /admin/instances/<id>/<kill|restart|slow|fail|hang|heal>
        let mut segments = path.trim_start_matches("/admin/instances/").split('/');
        let (Some(id), Some(command), None) = (segments.next(), segments.next(), segments.next())
        else {
            return error(StatusCode::NOT_FOUND, ADMIN_HELP);
        };
        if request.method() != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, ADMIN_HELP);
        }
        let Some(node) = self.cluster.as_ref().and_then(|c| c.node(id)) else {
            return error(StatusCode::NOT_FOUND, &format!("no instance {id:?}"));
        };
        let number = |key: &str| {
            query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.parse::<f64>().ok())
        };
        let done = match command {
            "kill" => {
                node.kill();
                "killed: listener and connections closed, heartbeats stopped".to_owned()
            }
            "restart" => match node.restart().await {
                Ok(addr) => format!("restarted on {addr} and registered again"),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            },
            "slow" => {
                let ms = number("ms").unwrap_or(200.0).clamp(0.0, 60_000.0) as u64;
                node.set_behaviour(Behaviour::Slow { ms });
                format!("answers after {ms} ms")
            }
            "fail" => {
                let rate = number("rate").unwrap_or(0.5).clamp(0.0, 1.0);
                node.set_behaviour(Behaviour::Fail { rate });
                format!("answers 503 to {:.0} % of requests", rate * 100.0)
            }
            "hang" => {
                node.set_behaviour(Behaviour::Hang);
                "accepts requests and never answers".to_owned()
            }
            "heal" => {
                node.set_behaviour(Behaviour::Normal);
                "answers normally".to_owned()
            }
            _ => return error(StatusCode::NOT_FOUND, ADMIN_HELP),
        };
        json(
            StatusCode::OK,
            &serde_json::json!({ "instance": id, "now": done }),
        )
    }
}

const ADMIN_HELP: &str = "admin: GET /admin/instances; POST /admin/instances/<id>/kill, \
    /restart, /slow?ms=N, /fail?rate=R, /hang, /heal";

/// Merges the workers' views of the same instances.
fn merge(views: impl Iterator<Item = Vec<InstanceView>>) -> Vec<InstanceView> {
    fn rank(state: &str) -> u8 {
        match state {
            "healthy" => 0,
            "registering" => 1,
            "half-open" => 2,
            "ejected" => 3,
            _ => 4,
        }
    }
    let mut merged: Vec<InstanceView> = Vec::new();
    for view in views.flatten() {
        match merged
            .iter_mut()
            .find(|m| m.id == view.id && m.service == view.service)
        {
            Some(m) => {
                m.in_flight += view.in_flight;
                if rank(view.state) > rank(m.state) {
                    m.state = view.state;
                }
            }
            None => merged.push(view),
        }
    }
    merged
}

/// One row of the admin view.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub service: String,
    pub id: String,
    pub address: String,
    /// healthy, ejected, half-open, registering (up, not yet discovered) or down.
    pub state: &'static str,
    pub in_flight: usize,
    pub served: Option<u64>,
    pub failed: Option<u64>,
    pub behaviour: Option<Behaviour>,
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_USER: HeaderName = HeaderName::from_static("x-user");

/// The headers that describe one hop (RFC 9110 §7.6.1), besides any `Connection` names.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        &header::CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ]
    .contains(&name)
}

/// Removes the headers that describe one hop (RFC 9110 §7.6.1), including any the
/// `Connection` header names.
///
/// Most requests and responses carry none: one pass over the names (no hashing) finds that,
/// where removing each name in turn cost a tenth of the gateway's own work per request.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

/// The caller's address, formatted once per connection.
#[derive(Clone)]
struct Peer {
    ip: HeaderValue,
}

impl Peer {
    fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { ip }
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Appends the caller's address to `X-Forwarded-For`; a value that is not visible ASCII is
/// replaced rather than extended.
fn forwarded_for(headers: &mut HeaderMap, peer: &Peer) {
    // One lookup: the entry is extended, replaced or added in place.
    match headers.entry(&X_FORWARDED_FOR) {
        http::header::Entry::Occupied(mut entry) => {
            let extended = match entry.get().to_str() {
                Ok(existing) if !existing.is_empty() => HeaderValue::from_str(&format!(
                    "{existing}, {}",
                    peer.ip.to_str().unwrap_or("unknown")
                ))
                .ok(),
                _ => None,
            };
            entry.insert(extended.unwrap_or_else(|| peer.ip.clone()));
        }
        http::header::Entry::Vacant(entry) => {
            entry.insert(peer.ip.clone());
        }
    }
}

/// Maps a failed upstream call to what the caller should see: seawall's `ErrorKind` names the
/// status (503 + `Retry-After` when the call was refused before sending, 504 past a deadline,
/// 413 over the body cap, 502 otherwise).
pub fn error_response(e: &BoxError) -> Response<ResponseBody> {
    let kind = ErrorKind::of(e.as_ref());
    let message = match kind {
        ErrorKind::BodyTooLarge => "request body over the cap".to_owned(),
        _ => seawall::error_chain(e.as_ref()),
    };
    let mut response = self::error(kind.http_status(), &message);
    if let Some(secs) = kind.retry_after_secs() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, secs.into());
    }
    response
}

pub fn error(status: StatusCode, message: &str) -> Response<ResponseBody> {
    json(status, &serde_json::json!({ "error": message }))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The gateway's workers: one thread per core, each with its own single-threaded runtime, its
/// own upstreams and its own connection pool, all accepting on the same listening socket.
///
/// A request is handled from accept to response on one thread: the hyper client's
/// connection tasks live on the same runtime as the request that uses them, so nothing hops
/// between threads (a tokio multi-thread runtime cost the gateway ~75 µs of CPU per proxied
/// request here, a runtime per core ~45 µs). Each worker's balancers keep their own
/// breaker state, as nginx workers do without a shared zone; the admin view merges them.
pub struct Fleet {
    /// Where the gateway listens.
    pub addr: SocketAddr,
    peers: Peers,
    stop: tokio::sync::watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Keeps this worker's timer wheel due to wake within 100 ms.
///
/// Tokio writes to an eventfd to wake its driver whenever a timer earlier than the driver's
/// next planned wake is registered, even from the runtime's own thread while it is running.
/// Every proxied request registers timers (per-try timeout, hedge), and under load about a
/// third of them came out earliest: a third of a wasted syscall per request. With a timer
/// always due within 100 ms, no request timer (the shortest is the 200 ms hedge) is ever
/// the earliest, and the wake-ups happen ten times a second instead.
async fn pace_timer_wheel() {
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
    }
}

impl Fleet {
    /// Binds `config.listen` and starts `workers` threads (at least one); `services` is
    /// called once per worker, on that worker's runtime, for its discovery streams.
    pub fn start<F, D, E>(
        config: GatewayConfig,
        workers: usize,
        services: F,
        prometheus: Option<PrometheusHandle>,
        cluster: Option<Arc<Cluster>>,
        drain: Duration,
    ) -> Result<Self, BoxError>
    where
        F: Fn() -> Vec<(String, D)> + Send + Sync + 'static,
        D: futures_core::Stream<Item = Result<Change<String, Instance>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let listener = std::net::TcpListener::bind(config.listen).map_err(|e| {
            format!(
                "cannot listen on {}: {e} (change it with --listen)",
                config.listen
            )
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let services = Arc::new(services);
        let peers: Peers = Arc::default();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let mut threads = Vec::new();
        for worker in 0..workers.max(1) {
            let listener = listener.try_clone()?;
            let config = config.clone();
            let services = Arc::clone(&services);
            let prometheus = prometheus.clone();
            let cluster = cluster.clone();
            let peers = Arc::clone(&peers);
            let mut stopped = stopped.clone();
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("gateway-{worker}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = ready.send(Err(format!("worker {worker}: runtime: {e}")));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let started = TcpListener::from_std(listener)
                            .map_err(|e| e.to_string())
                            .and_then(|listener| {
                                Gateway::new(config, services(), prometheus, cluster, peers)
                                    .map(|gateway| (listener, gateway))
                                    .map_err(|e| e.to_string())
                            });
                        let (listener, gateway) = match started {
                            Ok(started) => started,
                            Err(e) => {
                                let _ = ready.send(Err(format!("worker {worker}: {e}")));
                                return;
                            }
                        };
                        let _ = ready.send(Ok(()));
                        let _pacer = tokio::spawn(pace_timer_wheel());
                        let shutdown = async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        };
                        gateway.serve(listener, shutdown, drain).await;
                    });
                })?;
            threads.push(thread);
        }
        drop(ready_tx);
        for _ in 0..threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err("a gateway worker stopped while starting".into()),
            }
        }
        Ok(Self {
            addr,
            peers,
            stop,
            threads,
        })
    }

    fn any(&self) -> Option<Arc<Gateway>> {
        self.peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find_map(std::sync::Weak::upgrade)
    }

    /// The admin view over every worker.
    pub fn instances(&self) -> Vec<InstanceView> {
        self.any().map(|g| g.instances()).unwrap_or_default()
    }

    /// The keys of the endpoints `service`'s balancer holds now (on one worker).
    pub fn endpoints(&self, service: &str) -> Vec<String> {
        self.any()
            .and_then(|g| {
                g.upstream(service).map(|u| {
                    u.balance()
                        .endpoints()
                        .iter()
                        .map(|e| e.key().clone())
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// Retries issued by every worker.
    pub fn retries(&self) -> u64 {
        self.any().map(|g| g.all_retries()).unwrap_or(0)
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain time) and joins the
    /// workers.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// The gateway's watch over its client connections for graceful shutdown, without any
/// per-request cost: each connection registers its waker once (hyper-util's graceful
/// watcher took a lock on every poll of every connection). The header-read timeout is the
/// server connection's own ([`Http1Server::header_read_timeout`]).
mod guard {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};
    use std::task::{Context, Poll, Waker};

    use http::{Request, Response};
    use pin_project::{pin_project, pinned_drop};
    use seawall::BoxError;
    use seawall::http::{Connection, RequestBody, ServeError};
    use tokio::sync::Notify;
    use tower::Service;

    /// One worker's connections, told to finish when the gateway stops.
    #[derive(Default)]
    pub struct Shutdown {
        stopping: AtomicBool,
        /// The wakers of the live connections; a free slot is `None`.
        wakers: Mutex<Vec<Option<Waker>>>,
        live: AtomicUsize,
        drained: Notify,
    }

    impl Shutdown {
        /// Watches `conn`: it finishes gracefully when [`shutdown`](Self::shutdown) is
        /// called.
        pub fn watch<S, B>(self: &Arc<Self>, conn: Connection<S, B>) -> Watched<S, B>
        where
            S: Service<Request<RequestBody>, Response = Response<B>>,
        {
            self.live.fetch_add(1, Ordering::Relaxed);
            Watched {
                conn,
                shutdown: Arc::clone(self),
                slot: None,
                waker: None,
                draining: false,
            }
        }

        /// Tells every watched connection to finish its request in progress and close, and
        /// waits until they all have.
        pub async fn shutdown(&self) {
            self.stopping.store(true, Ordering::SeqCst);
            for waker in self.lock().iter().flatten() {
                waker.wake_by_ref();
            }
            loop {
                let notified = self.drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.live.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Waker>>> {
            self.wakers.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    /// A connection under watch (see [`Shutdown::watch`]).
    #[pin_project(PinnedDrop)]
    pub struct Watched<S, B>
    where
        S: Service<Request<RequestBody>, Response = Response<B>>,
    {
        #[pin]
        conn: Connection<S, B>,
        shutdown: Arc<Shutdown>,
        /// Where the waker is registered with `shutdown`.
        slot: Option<usize>,
        waker: Option<Waker>,
        draining: bool,
    }

    impl<S, B> Future for Watched<S, B>
    where
        S: Service<Request<RequestBody>, Response = Response<B>>,
        S::Error: Into<BoxError>,
        B: http_body::Body,
        B::Error: Into<BoxError>,
    {
        type Output = Result<(), ServeError>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let mut this = self.project();
            if !*this.draining {
                // Registered once: a task's waker stays the same from poll to poll.
                if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    let waker = cx.waker().clone();
                    let mut wakers = this.shutdown.lock();
                    match *this.slot {
                        Some(slot) => wakers[slot] = Some(waker.clone()),
                        None => {
                            let free = wakers.iter().position(Option::is_none);
                            let slot = free.unwrap_or(wakers.len());
                            if slot == wakers.len() {
                                wakers.push(None);
                            }
                            wakers[slot] = Some(waker.clone());
                            *this.slot = Some(slot);
                        }
                    }
                    *this.waker = Some(waker);
                }
                if this.shutdown.stopping.load(Ordering::SeqCst) {
                    *this.draining = true;
                    this.conn.as_mut().graceful_shutdown();
                }
            }
            this.conn.poll(cx)
        }
    }

    #[pinned_drop]
    impl<S, B> PinnedDrop for Watched<S, B>
    where
        S: Service<Request<RequestBody>, Response = Response<B>>,
    {
        fn drop(self: Pin<&mut Self>) {
            let this = self.project();
            if let Some(slot) = this.slot.take() {
                this.shutdown.lock()[slot] = None;
            }
            if this.shutdown.live.fetch_sub(1, Ordering::SeqCst) == 1 {
                this.shutdown.drained.notify_waiters();
            }
        }
    }
}
