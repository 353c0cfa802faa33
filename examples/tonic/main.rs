//! A gRPC greeter on three server instances, and a tonic client that balances over one
//! `Channel` per instance with seawall, surviving the death of one of them mid-run.
//!
//! ```sh
//! cargo run --example tonic --features tonic
//! ```
//!
//! Each server registers in a [`Registry`] and heartbeats. The client is the generated
//! `GreeterClient` over
//!
//! ```text
//! StatusLayer ─ Deadline ─ Retry ─ per-try Timeout ─ Balance (round robin) ─ breaker ─ GrpcEndpoint
//! ```
//!
//! fed by the registry's discovery stream. Endpoint breakers classify gRPC status; calls carry
//! the [`Idempotent`] marker (saying hello twice is harmless), so an `UNAVAILABLE` or a broken
//! connection is retried on another instance; the deadline reaches each server as
//! `grpc-timeout`. Halfway through, one server is killed: its runtime is dropped, every
//! connection cut. The run prints what each instance served and exits 0 only if every call
//! succeeded.
//!
//! The Rust code for `greeter.proto` is committed as `greeter.rs`; regenerate it with
//! `cargo run --manifest-path tools/codegen/Cargo.toml` (needs protoc).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use seawall::BoxError;
use seawall::balance::{Balance, RoundRobin};
use seawall::breaker::{BreakerConfig, Window};
use seawall::classify::GrpcStatus;
use seawall::discover::{DiscoverExt, Heartbeat, Instance, Registry};
use seawall::retry::{Idempotent, Retry, RetryConfig, RetryLayer};
use seawall::timeout::{DeadlineLayer, DeadlineService, PerTryTimeout, PerTryTimeoutLayer};
use seawall::tonic::{GrpcEndpoint, StatusLayer, StatusService};
use tokio::sync::oneshot;
use tower::ServiceBuilder;

/// The code generated from `greeter.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod greeter {
    include!("greeter.rs");
}

use greeter::greeter_client::GreeterClient;
use greeter::greeter_server::{Greeter, GreeterServer};
use greeter::{HelloReply, HelloRequest};

const TTL: Duration = Duration::from_secs(3);
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The greeter service of one instance.
struct Hello {
    id: String,
    served: Arc<AtomicU64>,
    unavailable: Arc<AtomicBool>,
    broken_streams: Arc<AtomicBool>,
}

/// The messages of one `SayHellos` stream, then its end (or its error).
struct Replies(std::collections::VecDeque<Result<HelloReply, tonic::Status>>);

impl futures_core::Stream for Replies {
    type Item = Result<HelloReply, tonic::Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.pop_front())
    }
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let grpc_timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if self.unavailable.load(Ordering::Relaxed) {
            return Err(tonic::Status::unavailable(format!(
                "{} is shedding load",
                self.id
            )));
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(HelloReply {
            message: format!("hello, {}", request.into_inner().name),
            served_by: self.id.clone(),
            grpc_timeout,
        }))
    }

    type SayHellosStream = Replies;

    /// Three greetings; with `broken_streams`, one greeting and then `UNAVAILABLE` in the
    /// trailers, as a server that fails halfway through a stream.
    async fn say_hellos(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<Replies>, tonic::Status> {
        let name = request.into_inner().name;
        let reply = |n: usize| {
            Ok(HelloReply {
                message: format!("hello #{n}, {name}"),
                served_by: self.id.clone(),
                grpc_timeout: String::new(),
            })
        };
        let replies = if self.broken_streams.load(Ordering::Relaxed) {
            vec![
                reply(1),
                Err(tonic::Status::unavailable(format!(
                    "{} broke off the stream",
                    self.id
                ))),
            ]
        } else {
            self.served.fetch_add(1, Ordering::Relaxed);
            vec![reply(1), reply(2), reply(3)]
        };
        Ok(tonic::Response::new(Replies(replies.into())))
    }
}

/// One greeter instance on its own thread and runtime, registered and heartbeating.
#[derive(Debug)]
pub struct Server {
    /// The instance id.
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Calls it answered.
    pub served: Arc<AtomicU64>,
    /// While true, it answers every call with `UNAVAILABLE`.
    pub unavailable: Arc<AtomicBool>,
    /// While true, its `SayHellos` streams fail after the first message.
    pub broken_streams: Arc<AtomicBool>,
    heartbeat: Option<Heartbeat>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts instance `id` on an ephemeral 127.0.0.1 port and registers it in `registry`.
    /// Call it inside a Tokio runtime (the heartbeat is a task on it).
    pub fn start(id: &str, registry: &Registry) -> Result<Self, BoxError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let unavailable = Arc::new(AtomicBool::new(false));
        let broken_streams = Arc::new(AtomicBool::new(false));
        let hello = Hello {
            id: id.to_owned(),
            served: Arc::clone(&served),
            unavailable: Arc::clone(&unavailable),
            broken_streams: Arc::clone(&broken_streams),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let serve = tonic::transport::Server::builder()
                    .add_service(GreeterServer::new(hello))
                    .serve_with_incoming(incoming);
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task: a kill, not a drain.
            drop(runtime);
        });
        let heartbeat =
            registry.spawn_heartbeat("greeter", Instance::new(id, addr), TTL, HEARTBEAT)?;
        Ok(Self {
            id: id.to_owned(),
            addr,
            served,
            unavailable,
            broken_streams,
            heartbeat: Some(heartbeat),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Kills the instance: stops its heartbeats (the registry drops it when its TTL runs out)
    /// and cuts every connection at once.
    pub fn kill(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.stop();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The channel under the generated client: seawall's stack over one `GrpcEndpoint` per instance.
pub type GreeterChannel = StatusService<DeadlineService<Retry<PerTryTimeout<GreeterBalance>>>>;

/// The balancer under a client; a clone shares the client's endpoints and their breakers.
pub type GreeterBalance = Balance<String, GrpcEndpoint, RoundRobin, GrpcStatus>;

/// A greeter client balancing over whatever `registry` says is alive, and its balancer.
pub fn client(
    registry: &Registry,
    deadline: Duration,
) -> Result<(GreeterClient<GreeterChannel>, GreeterBalance), BoxError> {
    let endpoints = registry
        .watch("greeter")
        .map_service(|instance| GrpcEndpoint::lazy(&instance));
    let balance = Balance::builder(endpoints)
        .name("greeter")
        .picker(RoundRobin::new())
        .classify(GrpcStatus)
        .endpoint_breaker(
            BreakerConfig::default()
                .window(Window::Count { calls: 5 })
                .minimum_calls(3)
                .failure_rate(60.0)
                .open_for(Duration::from_secs(5)),
        )
        .wait_for_endpoints(Duration::from_secs(1))
        .build()?;
    let channel = ServiceBuilder::new()
        .layer(StatusLayer::new())
        .layer(DeadlineLayer::new(deadline))
        .layer(RetryLayer::new("greeter", RetryConfig::default()))
        .layer(PerTryTimeoutLayer::new(Duration::from_millis(300)))
        .service(balance.clone());
    Ok((GreeterClient::new(channel), balance))
}

/// One idempotent hello.
pub async fn say_hello(
    client: &mut GreeterClient<GreeterChannel>,
    name: &str,
) -> Result<HelloReply, tonic::Status> {
    let mut request = tonic::Request::new(HelloRequest {
        name: name.to_owned(),
    });
    request.extensions_mut().insert(Idempotent);
    Ok(client.say_hello(request).await?.into_inner())
}

/// One `SayHellos` stream read to its end: the messages, or the status it failed with.
pub async fn say_hellos(
    client: &mut GreeterClient<GreeterChannel>,
    name: &str,
) -> Result<Vec<HelloReply>, tonic::Status> {
    let request = tonic::Request::new(HelloRequest {
        name: name.to_owned(),
    });
    let mut stream = client.say_hellos(request).await?.into_inner();
    let mut replies = Vec::new();
    while let Some(reply) = stream.message().await? {
        replies.push(reply);
    }
    Ok(replies)
}

/// `clients` concurrent callers making `per_client` calls each; `kill` runs after `kill_after`
/// calls have completed. Returns the replies and the failures.
pub async fn run(
    client: GreeterClient<GreeterChannel>,
    clients: usize,
    per_client: usize,
    kill_after: u64,
    kill: impl FnOnce() + Send + 'static,
) -> (Vec<HelloReply>, Vec<tonic::Status>) {
    let done = Arc::new(AtomicU64::new(0));
    let (killed_tx, killed_rx) = oneshot::channel::<()>();
    let killer = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < kill_after {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::task::spawn_blocking(kill).await.ok();
            let _ = killed_tx.send(());
        })
    };
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = client.clone();
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let mut replies = Vec::new();
            let mut failures = Vec::new();
            for i in 0..per_client {
                match say_hello(&mut client, &format!("caller {c}-{i}")).await {
                    Ok(reply) => replies.push(reply),
                    Err(status) => failures.push(status),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (replies, failures)
        }));
    }
    let mut replies = Vec::new();
    let mut failures = Vec::new();
    for task in tasks {
        if let Ok((r, f)) = task.await {
            replies.extend(r);
            failures.extend(f);
        }
    }
    let _ = killed_rx.await;
    let _ = killer.await;
    (replies, failures)
}

#[allow(dead_code)] // the integration test includes this file for its parts
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let registry = Registry::new();
    let mut servers = Vec::new();
    for id in ["greeter-1", "greeter-2", "greeter-3"] {
        let server = Server::start(id, &registry)?;
        println!("{id} serving gRPC on {}", server.addr);
        servers.push(server);
    }
    let (client, _) = client(&registry, Duration::from_secs(2))?;

    let mut victim = servers.remove(1);
    println!("\n8 callers x 250 hellos; greeter-2 is killed after 600 calls\n");
    let (replies, failures) = run(client, 8, 250, 600, move || victim.kill()).await;

    let mut by_instance = BTreeMap::<&str, u64>::new();
    for reply in &replies {
        *by_instance.entry(&reply.served_by).or_default() += 1;
    }
    for (id, served) in &by_instance {
        println!("{id:>10}: {served} replies");
    }
    if let Some(reply) = replies.last() {
        println!(
            "\nlast call arrived with grpc-timeout {}",
            reply.grpc_timeout
        );
    }
    println!("{} succeeded, {} failed", replies.len(), failures.len());
    for failure in failures.iter().take(5) {
        println!("  {:?}: {}", failure.code(), failure.message());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} calls failed", failures.len()).into())
    }
}
