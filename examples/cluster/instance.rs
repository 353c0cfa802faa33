//! The services behind the gateway: `auth`, `users` and `documents`, several instances each,
//! every one on its own ephemeral 127.0.0.1 port, registered in the registry with heartbeats.
//!
//! Each instance can be told to misbehave (the chaos controls behind the admin commands):
//! killed (listener and connections closed, heartbeats stopped), restarted (a new port, a
//! new registration), slowed down, made to fail a share of its requests with 503, or made to
//! hang (accept requests and never answer).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use seawall::BoxError;
use seawall::discover::{Heartbeat, Instance, Registry};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Where instances register and the gateway discovers them: the in-process registry, or etcd
/// (`--etcd`, with the `etcd` feature).
#[derive(Clone, Debug)]
pub enum Directory {
    Local(Registry),
    #[cfg(feature = "etcd")]
    Etcd(seawall::discover::etcd::EtcdConfig),
}

impl From<Registry> for Directory {
    fn from(registry: Registry) -> Self {
        Self::Local(registry)
    }
}

/// A discovery stream from either directory.
pub type Discovery = std::pin::Pin<
    Box<
        dyn futures_core::Stream<
                Item = Result<
                    seawall::discover::Change<String, Instance>,
                    std::convert::Infallible,
                >,
            > + Send,
    >,
>;

impl Directory {
    /// The instances of `service`, as the gateway's discovery stream. Call it inside a runtime.
    pub fn watch(&self, service: &str) -> Discovery {
        match self {
            Self::Local(registry) => Box::pin(registry.watch(service)),
            #[cfg(feature = "etcd")]
            Self::Etcd(config) => match seawall::discover::etcd::EtcdWatch::new(config, service) {
                Ok(watch) => Box::pin(watch),
                Err(error) => {
                    eprintln!("cannot watch {service} in etcd: {error}");
                    Box::pin(seawall::discover::from_list(
                        Vec::<(String, Instance)>::new(),
                    ))
                }
            },
        }
    }

    /// Registers `instance` of `service`, kept alive until stopped.
    async fn register(&self, service: &str, instance: Instance) -> Result<Registration, BoxError> {
        match self {
            Self::Local(registry) => Ok(Registration::Local(
                registry.spawn_heartbeat(service, instance, TTL, HEARTBEAT)?,
            )),
            #[cfg(feature = "etcd")]
            Self::Etcd(config) => Ok(Registration::Etcd(
                seawall::discover::etcd::EtcdRegistration::register(
                    config, service, &instance, TTL,
                )
                .await?,
            )),
        }
    }
}

/// One instance's registration in its directory.
enum Registration {
    Local(Heartbeat),
    #[cfg(feature = "etcd")]
    Etcd(seawall::discover::etcd::EtcdRegistration),
}

impl Registration {
    /// Stops the heartbeats: the registration expires with its TTL.
    fn stop(self) {
        match self {
            Self::Local(heartbeat) => heartbeat.stop(),
            #[cfg(feature = "etcd")]
            Self::Etcd(registration) => registration.stop(),
        }
    }

    /// Removes the registration now (for etcd: on `runtime`, in the background).
    fn deregister(self, runtime: &tokio::runtime::Handle) {
        match self {
            Self::Local(heartbeat) => {
                heartbeat.deregister();
            }
            #[cfg(feature = "etcd")]
            Self::Etcd(registration) => {
                runtime.spawn(async move {
                    if let Err(error) = registration.deregister().await {
                        eprintln!("deregistering from etcd: {error}");
                    }
                });
            }
        }
        let _ = runtime;
    }
}

/// How long a registration lives without a heartbeat.
pub const TTL: Duration = Duration::from_secs(3);
/// How often an instance sends its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// The largest request body an instance reads (logins and new records are small).
const MAX_BODY: usize = 64 * 1024;

/// What an instance does with the requests it gets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Behaviour {
    /// Answers normally.
    Normal,
    /// Does the work, then answers `ms` milliseconds late.
    Slow { ms: u64 },
    /// Answers 503 to `rate` (0 to 1) of its requests.
    Fail { rate: f64 },
    /// Accepts requests and never answers.
    Hang,
}

/// The accounts the auth service knows: (username, password).
pub const ACCOUNTS: &[(&str, &str)] = &[("alice", "wonderland"), ("bob", "builder")];

/// Tokens issued by any `auth` instance, readable by all of them: the shared session store
/// (Redis, a database) that real auth instances would use.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Mutex<HashMap<String, String>>>);

impl Tokens {
    fn issue(&self, user: &str) -> String {
        let token = format!("{:032x}", rand::random::<u128>());
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.clone(), user.to_owned());
        token
    }

    fn user(&self, token: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }
}

/// One instance of one service.
pub struct Node {
    pub service: &'static str,
    pub id: String,
    state: Mutex<NodeState>,
    pub stats: Arc<NodeStats>,
    tokens: Tokens,
    directory: Directory,
    /// The runtime the instances run on, whichever runtime asks for a restart.
    runtime: tokio::runtime::Handle,
}

struct NodeState {
    addr: Option<SocketAddr>,
    server: Option<JoinHandle<()>>,
    heartbeat: Option<Registration>,
}

/// What an instance has done, counted at the instance.
#[derive(Default)]
pub struct NodeStats {
    /// Requests answered with a 2xx.
    pub served: AtomicU64,
    /// Requests answered with a 5xx on purpose.
    pub failed: AtomicU64,
    /// Non-idempotent operations executed (POSTs that created something).
    pub executed_posts: AtomicU64,
    behaviour: Mutex<Option<Behaviour>>,
}

impl NodeStats {
    pub fn behaviour(&self) -> Behaviour {
        self.behaviour
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or(Behaviour::Normal)
    }

    fn set_behaviour(&self, behaviour: Behaviour) {
        *self
            .behaviour
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(behaviour);
    }
}

/// The admin view of an instance, from the instance's side.
#[derive(Debug, Serialize)]
pub struct NodeView {
    pub service: &'static str,
    pub id: String,
    pub addr: Option<String>,
    pub up: bool,
    pub behaviour: Behaviour,
    pub served: u64,
    pub failed: u64,
}

impl Node {
    /// Creates an instance and starts it: listens on an ephemeral loopback port and registers.
    pub async fn start(
        directory: impl Into<Directory>,
        tokens: &Tokens,
        service: &'static str,
        id: String,
    ) -> Result<Arc<Self>, BoxError> {
        let node = Arc::new(Self {
            service,
            id,
            state: Mutex::new(NodeState {
                addr: None,
                server: None,
                heartbeat: None,
            }),
            stats: Arc::new(NodeStats::default()),
            tokens: tokens.clone(),
            directory: directory.into(),
            runtime: tokio::runtime::Handle::current(),
        });
        node.restart().await?;
        Ok(node)
    }

    /// Where it listens now, if it is up.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.lock().addr
    }

    pub fn view(&self) -> NodeView {
        let addr = self.addr();
        NodeView {
            service: self.service,
            id: self.id.clone(),
            addr: addr.map(|a| a.to_string()),
            up: addr.is_some(),
            behaviour: self.stats.behaviour(),
            served: self.stats.served.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Kills the instance as a crash would: the listener and every open connection close,
    /// heartbeats stop, and the registration is left to expire with its TTL.
    pub fn kill(&self) -> bool {
        let mut state = self.lock();
        let was_up = state.server.is_some();
        if let Some(server) = state.server.take() {
            server.abort();
        }
        if let Some(heartbeat) = state.heartbeat.take() {
            heartbeat.stop();
        }
        state.addr = None;
        was_up
    }

    /// Stops the instance cleanly: deregisters first, then closes.
    pub fn stop(&self) {
        let mut state = self.lock();
        if let Some(heartbeat) = state.heartbeat.take() {
            heartbeat.deregister(&self.runtime);
        }
        if let Some(server) = state.server.take() {
            server.abort();
        }
        state.addr = None;
    }

    /// (Re)starts the instance on a new ephemeral port, registers it again and resets its
    /// behaviour to normal. Callable from any runtime: the instance runs on the cluster's.
    pub async fn restart(self: &Arc<Self>) -> Result<SocketAddr, BoxError> {
        let node = Arc::clone(self);
        self.runtime
            .spawn(async move { node.restart_here().await })
            .await?
    }

    async fn restart_here(&self) -> Result<SocketAddr, BoxError> {
        self.kill();
        self.stats.set_behaviour(Behaviour::Normal);
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(serve(
            listener,
            Handler {
                service: self.service,
                id: self.id.clone().into(),
                stats: Arc::clone(&self.stats),
                tokens: self.tokens.clone(),
            },
        ));
        let heartbeat = self
            .directory
            .register(self.service, Instance::new(self.id.clone(), addr))
            .await?;
        let mut state = self.lock();
        state.addr = Some(addr);
        state.server = Some(server);
        state.heartbeat = Some(heartbeat);
        Ok(addr)
    }

    /// Changes what the instance does with the requests it gets.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.stats.set_behaviour(behaviour);
    }

    /// Stops heartbeats but keeps serving: the registry must drop it within its TTL.
    pub fn stop_heartbeats(&self) {
        if let Some(heartbeat) = self.lock().heartbeat.take() {
            heartbeat.stop();
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("service", &self.service)
            .field("id", &self.id)
            .field("addr", &self.addr())
            .finish()
    }
}

/// Accepts connections until aborted; aborting drops the `JoinSet`, which closes every
/// connection too.
async fn serve(listener: TcpListener, handler: Handler) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler.handle(request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[derive(Clone)]
struct Handler {
    service: &'static str,
    id: Arc<str>,
    stats: Arc<NodeStats>,
    tokens: Tokens,
}

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct NewRecord {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl Handler {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let behaviour = self.stats.behaviour();
        match behaviour {
            Behaviour::Normal | Behaviour::Slow { .. } => {}
            Behaviour::Hang => std::future::pending::<()>().await,
            Behaviour::Fail { rate } => {
                if rand::random::<f64>() < rate {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    return self.json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({ "error": "injected failure" }),
                    );
                }
            }
        }
        let response = match self.service {
            "auth" => self.auth(request).await,
            _ => self.records(request).await,
        };
        // A slow instance does the work, then answers late: a caller that gives up on it
        // must not assume the work was not done.
        if let Behaviour::Slow { ms } = behaviour {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if response.status().is_success() {
            self.stats.served.fetch_add(1, Ordering::Relaxed);
        }
        response
    }

    async fn auth(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::POST, "/login") => {
                let Some(login) = read_json::<Login>(request).await else {
                    return self.error(
                        StatusCode::BAD_REQUEST,
                        "expected JSON {\"username\": ..., \"password\": ...}",
                    );
                };
                let known = ACCOUNTS
                    .iter()
                    .any(|(user, pass)| *user == login.username && *pass == login.password);
                if !known {
                    return self.error(StatusCode::UNAUTHORIZED, "unknown user or wrong password");
                }
                let token = self.tokens.issue(&login.username);
                self.json(
                    StatusCode::OK,
                    &serde_json::json!({ "token": token, "user": login.username }),
                )
            }
            (&Method::GET, "/verify") => match bearer(&request).and_then(|t| self.tokens.user(t)) {
                Some(user) => self.json(StatusCode::OK, &serde_json::json!({ "user": user })),
                None => self.error(StatusCode::UNAUTHORIZED, "invalid or missing token"),
            },
            _ => self.error(
                StatusCode::NOT_FOUND,
                "auth serves POST /login and GET /verify",
            ),
        }
    }

    async fn records(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let user = request
            .headers()
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("anonymous")
            .to_owned();
        let path = request.uri().path().trim_matches('/').to_owned();
        match *request.method() {
            Method::GET | Method::HEAD => {
                let id = if path.is_empty() { None } else { Some(path) };
                self.json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "service": self.service,
                        "id": id,
                        "served_by": &*self.id,
                        "for": user,
                    }),
                )
            }
            Method::POST => {
                let Some(record) = read_json::<NewRecord>(request).await else {
                    return self.error(StatusCode::BAD_REQUEST, "expected a JSON object");
                };
                let n = self.stats.executed_posts.fetch_add(1, Ordering::Relaxed) + 1;
                self.json(
                    StatusCode::CREATED,
                    &serde_json::json!({
                        "service": self.service,
                        "created": format!("{}-{n}", self.id),
                        "title": record.title.or(record.name),
                        "by": user,
                    }),
                )
            }
            _ => self.error(StatusCode::METHOD_NOT_ALLOWED, "GET or POST"),
        }
    }

    fn error(&self, status: StatusCode, message: &str) -> Response<Full<Bytes>> {
        self.json(status, &serde_json::json!({ "error": message }))
    }

    fn json(&self, status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        response
    }
}

fn bearer<B>(request: &Request<B>) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

async fn read_json<T: serde::de::DeserializeOwned>(request: Request<Incoming>) -> Option<T> {
    let body = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .ok()?
        .to_bytes();
    serde_json::from_slice(&body).ok()
}

/// Every instance of every service, started together.
#[derive(Debug)]
pub struct Cluster {
    pub directory: Directory,
    pub nodes: Vec<Arc<Node>>,
}

impl Cluster {
    /// The services the cluster runs.
    pub const SERVICES: [&'static str; 3] = ["auth", "users", "documents"];

    /// Starts `per_service` instances of each service (`users-1`, `users-2`, ...).
    pub async fn start(
        directory: impl Into<Directory>,
        per_service: usize,
    ) -> Result<Self, BoxError> {
        let directory = directory.into();
        let tokens = Tokens::default();
        let mut nodes = Vec::new();
        for service in Self::SERVICES {
            for n in 1..=per_service {
                let id = format!("{service}-{n}");
                nodes.push(Node::start(directory.clone(), &tokens, service, id).await?);
            }
        }
        Ok(Self { directory, nodes })
    }

    /// The instance called `id`.
    pub fn node(&self, id: &str) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|node| node.id == id)
    }

    /// Stops every instance, deregistering it first.
    pub fn stop(&self) {
        for node in &self.nodes {
            node.stop();
        }
    }
}
