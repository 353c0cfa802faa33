//! Discovery from etcd, and registration in it: the Nacos/Consul heartbeat, on etcd leases.
//!
//! An instance of service `users` with id `users-1` is the key `/services/users/users-1`; its
//! value is the address, optionally followed by a weight: `127.0.0.1:9001` or
//! `127.0.0.1:9001;weight=3`. [`EtcdRegistration`] writes that key under a lease with a TTL and
//! keeps the lease alive; when the instance dies its keep-alives stop and etcd deletes the key
//! when the TTL runs out. [`EtcdWatch`] is the discovery stream for a `Balance`:
//!
//! * it **lists** the prefix first, then **watches** it from the revision after the list, so no
//!   change falls between the two;
//! * when etcd goes away it **reconnects with backoff** (100 ms doubling to 5 s, ±50 % jitter,
//!   by default) and resumes the watch from the last revision it applied, so changes made while
//!   it was away are not lost;
//! * when that revision has been **compacted** away, or the store is behind it (etcd restored
//!   from a backup or replaced by an empty one), it lists again and emits only the difference
//!   to what the balancer already has;
//! * it never ends and never yields an error: failures are logged, counted
//!   (`seawall_discovery_errors_total{source="etcd:<service>"}` and [`EtcdWatch::errors`]) and
//!   the last known set stays in place, so an etcd outage does not empty the balancer;
//! * a value that is not an address is skipped (and logged), as if the key were absent.
//!
//! None of etcd-client's types appear in this API: the configuration is [`EtcdConfig`], every
//! failure an [`EtcdError`].
//!
//! ```no_run
//! use std::time::Duration;
//! use seawall::balance::{Balance, LeastConn};
//! use seawall::discover::etcd::{EtcdConfig, EtcdRegistration, EtcdWatch};
//! use seawall::discover::{DiscoverExt, Instance};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! let etcd = EtcdConfig::new(["http://127.0.0.1:2379"]);
//!
//! // On each instance: register under a 10 s lease, kept alive in the background.
//! let me = Instance::new("users-1", "127.0.0.1:9001".parse()?);
//! let registration = EtcdRegistration::register(&etcd, "users", &me, Duration::from_secs(10)).await?;
//!
//! // On each caller: balance over whatever etcd says is alive.
//! let users = Balance::builder(EtcdWatch::new(&etcd, "users")?.map_service(|instance| {
//!     tower::service_fn(move |_: ()| async move { Ok::<_, seawall::BoxError>(instance.addr()) })
//! }))
//! .picker(LeastConn::new())
//! .build()?;
//! # let _ = users;
//!
//! registration.deregister().await?; // on shutdown: the key goes at once
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, WatchOptions,
};
use futures_core::Stream;
use metrics::{Counter, Label};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tower::discover::Change;

use super::Instance;
use crate::BoxError;
use rand::RngExt;
use rand::rngs::SmallRng;

/// Where etcd is and how patiently to talk to it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use seawall::discover::etcd::EtcdConfig;
///
/// let config = EtcdConfig::new(["http://10.0.0.1:2379", "http://10.0.0.2:2379"])
///     .connect_timeout(Duration::from_secs(1))
///     .backoff(Duration::from_millis(50), Duration::from_secs(2));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    endpoints: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    prefix: String,
}

impl EtcdConfig {
    /// etcd's client URLs (`http://host:2379`). Defaults: connect timeout 2 s, request timeout
    /// 5 s, reconnect backoff 100 ms doubling to 5 s, key prefix `/services/`.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            prefix: "/services/".to_owned(),
        }
    }

    /// How long one connection attempt may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one request (list, put, grant) may take.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The wait before reconnecting: `min`, doubling after each failure up to `max`, each wait
    /// jittered by ±50 %.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min.max(Duration::from_millis(1));
        self.backoff_max = max.max(self.backoff_min);
        self
    }

    /// The key prefix services live under (default `/services/`); a service's instances are
    /// `<prefix><service>/<id>`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        self.prefix = prefix;
        self
    }

    /// The key of instance `id` of `service`.
    pub fn key(&self, service: &str, id: &str) -> String {
        format!("{}{service}/{id}", self.prefix)
    }

    fn service_prefix(&self, service: &str) -> String {
        format!("{}{service}/", self.prefix)
    }

    async fn connect(&self) -> Result<Client, EtcdError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout);
        Client::connect(&self.endpoints, Some(options))
            .await
            .map_err(|e| EtcdError::new(Op::Connect, &self.endpoints, e))
    }
}

/// A failed exchange with etcd.
#[derive(Debug)]
pub struct EtcdError {
    op: Op,
    endpoints: String,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Connect,
    List,
    Watch,
    Grant,
    Put,
    KeepAlive,
    Revoke,
    NoRuntime,
}

impl EtcdError {
    fn new(op: Op, endpoints: &[String], source: impl Into<BoxError>) -> Self {
        Self {
            op,
            endpoints: endpoints.join(","),
            source: Some(source.into()),
        }
    }

    fn no_runtime() -> Self {
        Self {
            op: Op::NoRuntime,
            endpoints: String::new(),
            source: None,
        }
    }

    /// True when etcd could not be reached at all (as opposed to answering with an error).
    pub fn is_connect(&self) -> bool {
        self.op == Op::Connect
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.op {
            Op::Connect => "connecting to etcd",
            Op::List => "listing keys in etcd",
            Op::Watch => "watching keys in etcd",
            Op::Grant => "granting an etcd lease",
            Op::Put => "writing a key to etcd",
            Op::KeepAlive => "keeping an etcd lease alive",
            Op::Revoke => "revoking an etcd lease",
            Op::NoRuntime => {
                return f.write_str(
                    "no Tokio runtime: etcd discovery and registration run a background task; \
                     create them inside a runtime",
                );
            }
        };
        write!(f, "{what} at {} failed", self.endpoints)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        f.write_str("; check that etcd is up and reachable at that address")
    }
}

impl std::error::Error for EtcdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The value stored for an instance: its address, and `;weight=N` when the weight is not 1.
pub fn encode_value(instance: &Instance) -> String {
    match instance.weight() {
        1 => instance.addr().to_string(),
        weight => format!("{};weight={weight}", instance.addr()),
    }
}

/// Reads a value written by [`encode_value`] (or by hand): an address, optionally followed by
/// `;weight=N`. `None` when it is neither.
pub fn decode_value(id: &str, value: &str) -> Option<Instance> {
    let mut parts = value.trim().split(';');
    let addr: SocketAddr = parts.next()?.trim().parse().ok()?;
    let mut instance = Instance::new(id, addr);
    for part in parts {
        let (name, number) = part.split_once('=')?;
        if name.trim() != "weight" {
            return None;
        }
        instance = instance.with_weight(number.trim().parse().ok()?);
    }
    Some(instance)
}

/// The counts an [`EtcdWatch`] keeps, shared with its background task.
#[derive(Debug, Default)]
struct WatchStats {
    errors: AtomicU64,
    relists: AtomicU64,
    invalid: AtomicU64,
}

/// The discovery stream of one service's instances in etcd; see the [module docs](self).
///
/// It implements `Discover` (keys are instance ids) through `Stream`. Dropping it stops the
/// background task.
pub struct EtcdWatch {
    changes: mpsc::UnboundedReceiver<Change<String, Instance>>,
    stats: Arc<WatchStats>,
    task: JoinHandle<()>,
}

impl EtcdWatch {
    /// Watches `service`'s instances, from a background task on the current Tokio runtime.
    ///
    /// Returns at once: connecting, listing and watching happen in the task, with retries, so
    /// a caller can start before etcd does.
    pub fn new(config: &EtcdConfig, service: &str) -> Result<Self, EtcdError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| EtcdError::no_runtime())?;
        let (tx, changes) = mpsc::unbounded_channel();
        let stats = Arc::new(WatchStats::default());
        let mirror = Mirror {
            config: config.clone(),
            prefix: config.service_prefix(service),
            known: HashMap::new(),
            revision: None,
            tx,
            stats: Arc::clone(&stats),
            error_counter: metrics::counter!(
                crate::metrics::DISCOVERY_ERRORS_TOTAL,
                vec![Label::new("source", format!("etcd:{service}"))]
            ),
        };
        let task = runtime.spawn(mirror.run());
        Ok(Self {
            changes,
            stats,
            task,
        })
    }

    /// Failed connections, lists and watches so far.
    pub fn errors(&self) -> u64 {
        self.stats.errors.load(Ordering::Relaxed)
    }

    /// Lists after the first one: each follows a compaction of the revision to resume from, or
    /// a store found behind it.
    pub fn relists(&self) -> u64 {
        self.stats.relists.load(Ordering::Relaxed)
    }

    /// Values skipped because they were not an address.
    pub fn invalid_values(&self) -> u64 {
        self.stats.invalid.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for EtcdWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdWatch")
            .field("errors", &self.errors())
            .field("relists", &self.relists())
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for EtcdWatch {
    type Item = Result<Change<String, Instance>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.changes.poll_recv(cx).map(|change| change.map(Ok))
    }
}

/// The background task's view of the service: what the balancer was told, and from which
/// revision to resume.
struct Mirror {
    config: EtcdConfig,
    prefix: String,
    known: HashMap<String, Instance>,
    revision: Option<i64>,
    tx: mpsc::UnboundedSender<Change<String, Instance>>,
    stats: Arc<WatchStats>,
    error_counter: Counter,
}

/// Why a session with etcd ended.
enum End {
    /// The `EtcdWatch` was dropped.
    Closed,
    /// The connection, list or watch failed.
    Failed(EtcdError),
}

impl From<EtcdError> for End {
    fn from(error: EtcdError) -> Self {
        Self::Failed(error)
    }
}

impl Mirror {
    async fn run(mut self) {
        let mut backoff = Backoff::new(&self.config);
        loop {
            match self.session(&mut backoff).await {
                End::Closed => return,
                End::Failed(error) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.error_counter.increment(1);
                    tracing::warn!(prefix = %self.prefix, %error, "etcd discovery: keeping the last known instances and reconnecting");
                }
            }
            tokio::time::sleep(backoff.next()).await;
        }
    }

    /// One connection: list if needed, then watch until something fails.
    async fn session(&mut self, backoff: &mut Backoff) -> End {
        let endpoints = self.config.endpoints.clone();
        let mut client = match self.config.connect().await {
            Ok(client) => client,
            Err(error) => return error.into(),
        };
        loop {
            let start = match self.revision {
                Some(revision) => revision + 1,
                None => match self.list(&mut client).await {
                    Ok(revision) => revision + 1,
                    Err(end) => return end,
                },
            };
            let options = WatchOptions::new().with_prefix().with_start_revision(start);
            let mut stream = match client.watch(self.prefix.as_str(), Some(options)).await {
                Ok(stream) => stream,
                Err(error) => return EtcdError::new(Op::Watch, &endpoints, error).into(),
            };
            loop {
                let response = match stream.message().await {
                    Ok(Some(response)) => response,
                    Ok(None) => {
                        return EtcdError::new(Op::Watch, &endpoints, "the watch stream ended")
                            .into();
                    }
                    Err(error) => return EtcdError::new(Op::Watch, &endpoints, error).into(),
                };
                // Talking to etcd again: the next outage starts its backoff afresh.
                backoff.reset();
                if response.compact_revision() > 0 {
                    tracing::info!(prefix = %self.prefix, compacted = response.compact_revision(), "etcd discovery: resume revision compacted; listing again");
                    self.stats.relists.fetch_add(1, Ordering::Relaxed);
                    self.revision = None;
                    break;
                }
                // A store behind the revision we applied was restored or replaced (its data
                // lost): what we know may be gone from it, so list again.
                let store = response.header().map_or(i64::MAX, |h| h.revision());
                if self.revision.is_some_and(|applied| store < applied) {
                    tracing::warn!(prefix = %self.prefix, store, applied = ?self.revision, "etcd discovery: the store is behind what was applied (restored or replaced?); listing again");
                    self.stats.relists.fetch_add(1, Ordering::Relaxed);
                    self.revision = None;
                    break;
                }
                if response.canceled() {
                    let reason = response.cancel_reason().to_owned();
                    return EtcdError::new(
                        Op::Watch,
                        &endpoints,
                        format!("watch canceled: {reason}"),
                    )
                    .into();
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let removed = event.event_type() == EventType::Delete;
                    if let Err(end) = self.apply(kv, removed) {
                        return end;
                    }
                    self.revision = Some(self.revision.unwrap_or(0).max(kv.mod_revision()));
                }
            }
        }
    }

    /// Lists the prefix and tells the balancer the difference; returns the list's revision.
    async fn list(&mut self, client: &mut Client) -> Result<i64, End> {
        let response = client
            .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| EtcdError::new(Op::List, &self.config.endpoints, e))?;
        let mut listed = HashMap::new();
        for kv in response.kvs() {
            if let Some(instance) = self.decode(kv) {
                listed.insert(instance.id().to_owned(), instance);
            }
        }
        for change in super::diff::changes(&mut self.known, listed) {
            self.send(change)?;
        }
        let revision = response.header().map_or(0, |h| h.revision());
        self.revision = Some(revision);
        Ok(revision)
    }

    /// One watched event: a put inserts (or replaces) the instance, a delete removes it.
    fn apply(&mut self, kv: &KeyValue, removed: bool) -> Result<(), End> {
        let instance = if removed { None } else { self.decode(kv) };
        let Some(id) = self.id_of(kv) else {
            return Ok(());
        };
        match instance {
            Some(instance) => {
                if self.known.get(&id) != Some(&instance) {
                    self.known.insert(id.clone(), instance.clone());
                    self.send(Change::Insert(id, instance))?;
                }
            }
            None => {
                if self.known.remove(&id).is_some() {
                    self.send(Change::Remove(id))?;
                }
            }
        }
        Ok(())
    }

    /// The instance id in `kv`'s key: what follows the service prefix, if not empty.
    fn id_of(&self, kv: &KeyValue) -> Option<String> {
        let key = std::str::from_utf8(kv.key()).ok()?;
        let id = key.strip_prefix(&self.prefix)?;
        (!id.is_empty()).then(|| id.to_owned())
    }

    fn decode(&self, kv: &KeyValue) -> Option<Instance> {
        let id = self.id_of(kv)?;
        let value = std::str::from_utf8(kv.value()).unwrap_or("");
        let instance = decode_value(&id, value);
        if instance.is_none() {
            self.stats.invalid.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(prefix = %self.prefix, %id, value, "etcd discovery: value is not `addr` or `addr;weight=N`; skipping the instance");
        }
        instance
    }

    fn send(&self, change: Change<String, Instance>) -> Result<(), End> {
        self.tx.send(change).map_err(|_| End::Closed)
    }
}

/// Exponential backoff with ±50 % jitter.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    rng: SmallRng,
}

impl Backoff {
    fn new(config: &EtcdConfig) -> Self {
        Self {
            min: config.backoff_min,
            max: config.backoff_max,
            next: config.backoff_min,
            rng: crate::rng::small_rng(crate::rng::random_seed()),
        }
    }

    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = 0.5 + self.rng.random::<f64>();
        base.mul_f64(jitter)
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// An instance registered in etcd under a lease kept alive in the background; see the
/// [module docs](self).
///
/// If etcd goes away, keep-alives resume when it is back; if the lease expired meanwhile, a
/// new lease is granted and the key written again. [`stop`](Self::stop) (or dropping it) ends
/// the keep-alives: the key disappears when the TTL runs out, as when the process dies.
/// [`deregister`](Self::deregister) deletes it at once.
pub struct EtcdRegistration {
    key: String,
    lease: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    config: EtcdConfig,
}

impl EtcdRegistration {
    /// Writes `instance` under `service` with a lease of `ttl` (at least 1 s; etcd may raise
    /// it to its minimum) and keeps the lease alive, sending a keep-alive every third of the
    /// TTL.
    ///
    /// Fails if etcd cannot be reached now: an instance should know it is not registered.
    pub async fn register(
        config: &EtcdConfig,
        service: &str,
        instance: &Instance,
        ttl: Duration,
    ) -> Result<Self, EtcdError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| EtcdError::no_runtime())?;
        let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let key = config.key(service, instance.id());
        let value = encode_value(instance);
        let mut client = config.connect().await?;
        let lease = put_with_lease(&mut client, config, &key, &value, ttl_secs).await?;
        let lease_id = Arc::new(AtomicU64::new(lease as u64));
        let (stop, stopped) = oneshot::channel();
        let keeper = Keeper {
            config: config.clone(),
            key: key.clone(),
            value,
            ttl_secs,
            lease: Arc::clone(&lease_id),
        };
        let task = runtime.spawn(keeper.run(client, stopped));
        Ok(Self {
            key,
            lease: lease_id,
            stop: Some(stop),
            task: Some(task),
            config: config.clone(),
        })
    }

    /// The key this instance is registered under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Stops the keep-alives; the key expires with the lease's TTL.
    pub fn stop(mut self) {
        self.halt();
    }

    /// Stops the keep-alives and revokes the lease: the key is deleted now.
    pub async fn deregister(mut self) -> Result<(), EtcdError> {
        self.halt();
        let lease = self.lease.load(Ordering::Relaxed) as i64;
        let mut client = self.config.connect().await?;
        client
            .lease_revoke(lease)
            .await
            .map_err(|e| EtcdError::new(Op::Revoke, &self.config.endpoints, e))?;
        Ok(())
    }

    fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl fmt::Debug for EtcdRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistration")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdRegistration {
    fn drop(&mut self) {
        self.halt();
    }
}

async fn put_with_lease(
    client: &mut Client,
    config: &EtcdConfig,
    key: &str,
    value: &str,
    ttl_secs: i64,
) -> Result<i64, EtcdError> {
    let lease = client
        .lease_grant(ttl_secs, None)
        .await
        .map_err(|e| EtcdError::new(Op::Grant, &config.endpoints, e))?
        .id();
    client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
        .map_err(|e| EtcdError::new(Op::Put, &config.endpoints, e))?;
    Ok(lease)
}

/// The keep-alive loop of one registration.
struct Keeper {
    config: EtcdConfig,
    key: String,
    value: String,
    ttl_secs: i64,
    lease: Arc<AtomicU64>,
}

impl Keeper {
    async fn run(self, client: Client, mut stopped: oneshot::Receiver<()>) {
        let mut backoff = Backoff::new(&self.config);
        let mut client = Some(client);
        loop {
            let session = async {
                let mut client = match client.take() {
                    Some(client) => client,
                    None => self.config.connect().await?,
                };
                self.keep_alive(&mut client, &mut backoff).await
            };
            tokio::select! {
                _ = &mut stopped => return,
                result = session => {
                    if let Err(error) = result {
                        tracing::warn!(key = %self.key, %error, "etcd registration: keep-alive failed; retrying");
                    }
                }
            }
            tokio::select! {
                _ = &mut stopped => return,
                () = tokio::time::sleep(backoff.next()) => {}
            }
        }
    }

    /// Writes the key again under a new lease, after the old one expired.
    async fn register_again(&self, client: &mut Client) -> Result<(), EtcdError> {
        tracing::info!(key = %self.key, "etcd registration: lease expired; registering again");
        let lease =
            put_with_lease(client, &self.config, &self.key, &self.value, self.ttl_secs).await?;
        self.lease.store(lease as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Keeps the current lease alive until something fails; re-registers under a new lease if
    /// the old one expired.
    async fn keep_alive(
        &self,
        client: &mut Client,
        backoff: &mut Backoff,
    ) -> Result<(), EtcdError> {
        let every = Duration::from_millis((self.ttl_secs as u64 * 1000 / 3).max(100));
        loop {
            let lease = self.lease.load(Ordering::Relaxed) as i64;
            let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
                Ok(pair) => pair,
                // etcd-client's answer when etcd no longer knows the lease (it expired while
                // we could not reach etcd): register afresh.
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => {
                    self.register_again(client).await?;
                    continue;
                }
                Err(e) => return Err(EtcdError::new(Op::KeepAlive, &self.config.endpoints, e)),
            };
            loop {
                keeper
                    .keep_alive()
                    .await
                    .map_err(|e| EtcdError::new(Op::KeepAlive, &self.config.endpoints, e))?;
                let response = responses
                    .message()
                    .await
                    .map_err(|e| EtcdError::new(Op::KeepAlive, &self.config.endpoints, e))?
                    .ok_or_else(|| {
                        EtcdError::new(
                            Op::KeepAlive,
                            &self.config.endpoints,
                            "keep-alive stream ended",
                        )
                    })?;
                backoff.reset();
                if response.ttl() <= 0 {
                    // The lease expired while etcd was out of reach: register afresh.
                    self.register_again(client).await?;
                    break;
                }
                tokio::time::sleep(every).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_junk_is_refused() {
        let plain = Instance::new(
            "a",
            "127.0.0.1:9001".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(encode_value(&plain), "127.0.0.1:9001");
        assert_eq!(decode_value("a", "127.0.0.1:9001"), Some(plain.clone()));
        let heavy = plain.clone().with_weight(3);
        assert_eq!(encode_value(&heavy), "127.0.0.1:9001;weight=3");
        assert_eq!(
            decode_value("a", " 127.0.0.1:9001 ; weight=3 "),
            Some(heavy)
        );
        assert_eq!(
            decode_value("a", "[::1]:80").map(|i| i.addr().port()),
            Some(80)
        );
        for junk in [
            "",
            "localhost:80",
            "127.0.0.1",
            "127.0.0.1:80;weight=x",
            "127.0.0.1:80;colour=3",
        ] {
            assert_eq!(decode_value("a", junk), None, "{junk:?}");
        }
    }

    #[test]
    fn keys_live_under_the_prefix() {
        let config = EtcdConfig::new(["http://127.0.0.1:2379"]).prefix("/prod");
        assert_eq!(config.key("users", "users-1"), "/prod/users/users-1");
        assert_eq!(config.service_prefix("users"), "/prod/users/");
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let config =
            EtcdConfig::new(["x"]).backoff(Duration::from_millis(100), Duration::from_millis(400));
        let mut backoff = Backoff::new(&config);
        let waits: Vec<Duration> = (0..4).map(|_| backoff.next()).collect();
        let bases = [100, 200, 400, 400];
        for (wait, base) in waits.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                *wait >= base / 2 && *wait <= base * 3 / 2,
                "{wait:?} around {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(150));
    }
}
