//! Discovery from DNS: A/AAAA or SRV records, looked up again when their TTL runs out.
//!
//! * [`DnsWatch::a`] resolves a name's A and AAAA records; every address, with the given port,
//!   is one instance (`10.0.0.7:8080`).
//! * [`DnsWatch::srv`] resolves SRV records (`_grpc._tcp.users.example.`), keeps those of the
//!   best (lowest) priority as RFC 2782 says, resolves each target's addresses, and weighs each
//!   instance by its record's weight (0 counts as 1).
//!
//! The next lookup happens when the answer's TTL runs out, bounded by
//! [`DnsConfig::ttl_bounds`] (1 s to 60 s by default): a TTL of 0 does not turn into a busy
//! loop, a TTL of a day does not hide a dead instance for a day. Answers are not cached between
//! lookups.
//!
//! A lookup that fails (timeout, `SERVFAIL`, no server reachable) keeps the last known set and
//! is retried after [`DnsConfig::error_retry`]; it is logged and counted
//! (`seawall_discovery_errors_total{source="dns:<name>"}` and [`DnsWatch::errors`]). An
//! authoritative *no such name* or an empty answer is an answer: the set becomes empty, as in
//! Envoy's strict DNS clusters.
//!
//! ```no_run
//! use seawall::balance::{Balance, RoundRobin};
//! use seawall::discover::DiscoverExt;
//! use seawall::discover::dns::{DnsConfig, DnsWatch};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! let users = DnsWatch::a(&DnsConfig::system()?, "users.internal.", 8080)?;
//! let balance = Balance::builder(users.map_service(|instance| {
//!     tower::service_fn(move |_: ()| async move { Ok::<_, seawall::BoxError>(instance.addr()) })
//! }))
//! .picker(RoundRobin::new())
//! .build()?;
//! # let _ = balance;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};
use metrics::{Counter, Label};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tower::discover::Change;

use super::Instance;
use crate::BoxError;

/// Which DNS servers to ask and how often.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use seawall::discover::dns::DnsConfig;
///
/// let config = DnsConfig::with_servers(["10.0.0.2:53".parse().unwrap()])
///     .ttl_bounds(Duration::from_secs(5), Duration::from_secs(30))
///     .error_retry(Duration::from_secs(2));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct DnsConfig {
    servers: Option<Vec<SocketAddr>>,
    min_ttl: Duration,
    max_ttl: Duration,
    error_retry: Duration,
    timeout: Duration,
}

impl DnsConfig {
    /// The system's resolvers (`/etc/resolv.conf` on Unix).
    pub fn system() -> Result<Self, DnsError> {
        // Read it now, so a broken configuration is an error here rather than in the task.
        hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| DnsError::new("reading the system's DNS configuration", e))?;
        Ok(Self::from_servers(None))
    }

    /// These servers, over UDP (falling back to TCP for truncated answers).
    pub fn with_servers(servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self::from_servers(Some(servers.into_iter().collect()))
    }

    fn from_servers(servers: Option<Vec<SocketAddr>>) -> Self {
        Self {
            servers,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
            error_retry: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }

    /// The shortest and longest wait between lookups, whatever the TTL says (default 1 s and
    /// 60 s; `min` is at least 10 ms).
    pub fn ttl_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min_ttl = min.max(Duration::from_millis(10));
        self.max_ttl = max.max(self.min_ttl);
        self
    }

    /// The wait after a failed lookup, within the TTL bounds (default 5 s).
    pub fn error_retry(mut self, wait: Duration) -> Self {
        self.error_retry = wait;
        self
    }

    /// How long one query may take (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The wait before the next lookup, for an answer valid for `valid_for`.
    fn next_lookup(&self, valid_for: Duration) -> Duration {
        valid_for.clamp(self.min_ttl, self.max_ttl)
    }

    fn resolver(&self) -> Result<TokioResolver, DnsError> {
        let provider = TokioConnectionProvider::default();
        let mut builder = match &self.servers {
            Some(servers) => {
                let mut group = NameServerConfigGroup::new();
                for server in servers {
                    group.merge(NameServerConfigGroup::from_ips_clear(
                        &[server.ip()],
                        server.port(),
                        true,
                    ));
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), group),
                    provider,
                )
            }
            None => TokioResolver::builder(provider)
                .map_err(|e| DnsError::new("reading the system's DNS configuration", e))?,
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.cache_size = 0;
        // Both families: the default asks for AAAA only when there is no A record.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = self.timeout;
        options.attempts = 2;
        Ok(builder.build())
    }
}

/// DNS discovery could not start.
#[derive(Debug)]
pub struct DnsError {
    what: &'static str,
    source: Option<BoxError>,
}

impl DnsError {
    fn new(what: &'static str, source: impl Into<BoxError>) -> Self {
        Self {
            what,
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed", self.what)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DnsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// What to look up.
#[derive(Debug, Clone)]
enum Query {
    Ip { name: String, port: u16 },
    Srv { name: String },
}

impl Query {
    fn name(&self) -> &str {
        match self {
            Self::Ip { name, .. } | Self::Srv { name } => name,
        }
    }
}

#[derive(Debug, Default)]
struct DnsStats {
    lookups: AtomicU64,
    errors: AtomicU64,
}

/// The discovery stream of the instances behind one DNS name; see the [module docs](self).
///
/// Keys are `ip:port` strings. It implements `Discover` through `Stream`, never ends and never
/// yields an error. Dropping it stops the background task.
pub struct DnsWatch {
    changes: mpsc::UnboundedReceiver<Change<String, Instance>>,
    stats: Arc<DnsStats>,
    task: JoinHandle<()>,
}

impl DnsWatch {
    /// The addresses in `name`'s A and AAAA records, each with `port`. Call it inside a Tokio
    /// runtime: the lookups run in a task on it.
    pub fn a(config: &DnsConfig, name: &str, port: u16) -> Result<Self, DnsError> {
        Self::start(
            config,
            Query::Ip {
                name: name.to_owned(),
                port,
            },
        )
    }

    /// The targets of `name`'s SRV records of the best priority, resolved to addresses, with
    /// the records' ports and weights. Call it inside a Tokio runtime.
    pub fn srv(config: &DnsConfig, name: &str) -> Result<Self, DnsError> {
        Self::start(
            config,
            Query::Srv {
                name: name.to_owned(),
            },
        )
    }

    fn start(config: &DnsConfig, query: Query) -> Result<Self, DnsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| DnsError {
            what: "starting DNS discovery outside a Tokio runtime",
            source: None,
        })?;
        let resolver = config.resolver()?;
        let (tx, changes) = mpsc::unbounded_channel();
        let stats = Arc::new(DnsStats::default());
        let poller = Poller {
            error_counter: metrics::counter!(
                crate::metrics::DISCOVERY_ERRORS_TOTAL,
                vec![Label::new("source", format!("dns:{}", query.name()))]
            ),
            config: config.clone(),
            resolver,
            query,
            known: HashMap::new(),
            tx,
            stats: Arc::clone(&stats),
        };
        let task = runtime.spawn(poller.run());
        Ok(Self {
            changes,
            stats,
            task,
        })
    }

    /// Lookups made so far, failed ones included.
    pub fn lookups(&self) -> u64 {
        self.stats.lookups.load(Ordering::Relaxed)
    }

    /// Failed lookups so far (each kept the last known set).
    pub fn errors(&self) -> u64 {
        self.stats.errors.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for DnsWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsWatch")
            .field("lookups", &self.lookups())
            .field("errors", &self.errors())
            .finish_non_exhaustive()
    }
}

impl Drop for DnsWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for DnsWatch {
    type Item = Result<Change<String, Instance>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.changes.poll_recv(cx).map(|change| change.map(Ok))
    }
}

struct Poller {
    config: DnsConfig,
    resolver: TokioResolver,
    query: Query,
    known: HashMap<String, Instance>,
    tx: mpsc::UnboundedSender<Change<String, Instance>>,
    stats: Arc<DnsStats>,
    error_counter: Counter,
}

/// One answer: the instances and how long the answer is valid.
type Answer = (Vec<Instance>, Duration);

impl Poller {
    async fn run(mut self) {
        loop {
            self.stats.lookups.fetch_add(1, Ordering::Relaxed);
            let wait = match self.lookup().await {
                Ok((instances, valid_for)) => {
                    if self.publish(instances).is_err() {
                        return;
                    }
                    self.config.next_lookup(valid_for)
                }
                Err(error) if error.is_no_records_found() => {
                    tracing::info!(name = %self.query.name(), "dns discovery: no records; the set is empty");
                    if self.publish(Vec::new()).is_err() {
                        return;
                    }
                    self.config.next_lookup(self.config.error_retry)
                }
                Err(error) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.error_counter.increment(1);
                    tracing::warn!(name = %self.query.name(), %error, "dns discovery: lookup failed; keeping the last known instances");
                    self.config.next_lookup(self.config.error_retry)
                }
            };
            if self.tx.is_closed() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    async fn lookup(&self) -> Result<Answer, ResolveError> {
        match &self.query {
            Query::Ip { name, port } => {
                let (ips, valid_for) = self.ips(name).await?;
                let instances = ips
                    .into_iter()
                    .map(|ip| instance(SocketAddr::new(ip, *port), 1))
                    .collect();
                Ok((instances, valid_for))
            }
            Query::Srv { name } => {
                let srv = self.resolver.srv_lookup(name.as_str()).await?;
                let mut valid_for = remaining(srv.as_lookup().valid_until());
                let best = srv.iter().map(|r| r.priority()).min();
                let mut instances = Vec::new();
                for record in srv.iter().filter(|r| Some(r.priority()) == best) {
                    let target = record.target().to_utf8();
                    let ips = match self.ips(&target).await {
                        Ok((ips, target_valid_for)) => {
                            valid_for = valid_for.min(target_valid_for);
                            ips
                        }
                        Err(error) if error.is_no_records_found() => continue,
                        Err(error) => return Err(error),
                    };
                    let weight = u32::from(record.weight()).max(1);
                    for ip in ips {
                        instances.push(instance(SocketAddr::new(ip, record.port()), weight));
                    }
                }
                Ok((instances, valid_for))
            }
        }
    }

    /// A name's addresses, deduplicated and in a stable order.
    async fn ips(&self, name: &str) -> Result<(BTreeSet<IpAddr>, Duration), ResolveError> {
        let answer = self.resolver.lookup_ip(name).await?;
        Ok((answer.iter().collect(), remaining(answer.valid_until())))
    }

    /// Tells the balancer how `instances` differs from what it has.
    fn publish(&mut self, instances: Vec<Instance>) -> Result<(), ()> {
        let fresh: HashMap<String, Instance> = instances
            .into_iter()
            .map(|i| (i.id().to_owned(), i))
            .collect();
        for change in super::diff::changes(&mut self.known, fresh) {
            self.tx.send(change).map_err(|_| ())?;
        }
        Ok(())
    }
}

fn instance(addr: SocketAddr, weight: u32) -> Instance {
    Instance::new(addr.to_string(), addr).with_weight(weight)
}

/// How long an answer stays valid. hickory stamps answers with the standard library's clock, so
/// this reads that clock too.
#[allow(clippy::disallowed_methods)]
fn remaining(valid_until: std::time::Instant) -> Duration {
    valid_until.saturating_duration_since(std::time::Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_lookup_follows_the_ttl_within_bounds() {
        let config =
            DnsConfig::with_servers([]).ttl_bounds(Duration::from_secs(2), Duration::from_secs(30));
        assert_eq!(config.next_lookup(Duration::ZERO), Duration::from_secs(2));
        assert_eq!(
            config.next_lookup(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        assert_eq!(
            config.next_lookup(Duration::from_secs(86_400)),
            Duration::from_secs(30)
        );
        let tight = DnsConfig::with_servers([]).ttl_bounds(Duration::ZERO, Duration::ZERO);
        assert_eq!(tight.next_lookup(Duration::ZERO), Duration::from_millis(10));
    }
}
