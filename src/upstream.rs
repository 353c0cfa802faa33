//! One logical HTTP service, with the whole resilience path, from one configuration.
//!
//! [`Upstream::builder`] composes the layers in the order that makes each of them correct:
//!
//! ```text
//! Deadline ─ Retry ─ per-try Timeout ─ Balance ─ per-endpoint breaker ─ client
//! ```
//!
//! The client is a shared hyper-util `Client` ([`Upstream::build_http`]) or each instance's
//! own HTTP/1.1 connections, driven by the calling task ([`Upstream::build_http1`]).
//!
//! The deadline bounds everything, retries included (it is lent to the layers of this stack
//! for the call rather than stored in the request, so a first attempt reaches the client
//! without a `Deadline` unless the request came with one); each retry gets its own per-try timeout
//! and goes back through the balancer (preferring an endpoint it has not tried), which skips
//! ejected endpoints. The result is one `Clone` service.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::Layer;
use tower::discover::Change;

use crate::balance::{Balance, P2c, Pick};
use crate::breaker::BreakerConfig;
use crate::classify::HttpStatus;
use crate::discover::Instance;
use crate::http::{Http1Config, HttpEndpoint, HttpEndpoints, ReplayBody};
use crate::retry::{Retry, RetryConfig, RetryLayer};
use crate::timeout::{DeadlineLayer, DeadlineService, PerTryTimeout, PerTryTimeoutLayer};
use crate::{BoxError, BuildError};

/// The service an HTTP [`Upstream`] builds: `Clone`, accepting `http::Request<B>` and
/// answering `http::Response<`[`ResponseBody`](crate::http::ResponseBody)`>`.
pub type HttpUpstream<K, B, P = P2c> =
    DeadlineService<Retry<PerTryTimeout<Balance<K, HttpEndpoint<ReplayBody<B>>, P, HttpStatus>>>>;

/// Builds the whole resilience path for one logical service, in the order that makes each
/// layer correct:
///
/// ```text
/// Deadline ─ Retry ─ per-try Timeout ─ Balance ─ per-endpoint breaker ─ client
/// ```
///
/// (the client: a shared hyper-util one, or each instance's own HTTP/1.1 connections). The
/// deadline bounds everything, retries included; each retry gets its own per-try timeout
/// and goes back through the balancer (preferring an endpoint it has not tried), which skips
/// ejected endpoints. The result is one `Clone` service.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use seawall::Upstream;
/// use seawall::balance::LeastConn;
/// use seawall::breaker::BreakerConfig;
/// use seawall::discover::Registry;
/// use seawall::http::{ReplayBody, default_client};
/// use seawall::retry::RetryConfig;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), seawall::BoxError> {
/// let registry = Registry::new();
/// let users = Upstream::builder("users")
///     .picker(LeastConn::new())
///     .endpoint_breaker(BreakerConfig::default())
///     .retry(RetryConfig::default())
///     .per_try_timeout(Duration::from_millis(500))
///     .deadline(Duration::from_secs(2))
///     .build_http(registry.watch("users"), default_client::<ReplayBody<Empty<Bytes>>>())?;
/// # let _ = users;
/// # Ok(())
/// # }
/// ```
pub struct Upstream<P = P2c> {
    name: Arc<str>,
    picker: P,
    endpoint_breaker: Option<BreakerConfig>,
    retry: RetryConfig,
    per_try_timeout: Option<Duration>,
    deadline: Duration,
    wait_for_endpoints: Option<Duration>,
}

impl Upstream {
    /// An upstream named `name` built from `config` (read from a file, say); fields left out
    /// keep [`builder`](Self::builder)'s defaults.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), seawall::BoxError> {
    /// use bytes::Bytes;
    /// use http_body_util::Empty;
    /// use seawall::Upstream;
    /// use seawall::config::UpstreamConfig;
    /// use seawall::discover::Registry;
    /// use seawall::http::{ReplayBody, default_client};
    ///
    /// let config: UpstreamConfig = serde_json::from_str(
    ///     r#"{ "picker": "least-conn", "deadline": "2s", "retry": { "max_attempts": 2 } }"#,
    /// )?;
    /// let registry = Registry::new();
    /// let users = Upstream::from_config("users", &config)
    ///     .build_http(registry.watch("users"), default_client::<ReplayBody<Empty<Bytes>>>())?;
    /// # let _ = users;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn from_config(
        name: impl Into<Arc<str>>,
        config: &crate::config::UpstreamConfig,
    ) -> Upstream<crate::balance::Picker> {
        let mut upstream =
            Upstream::builder(name).picker(crate::balance::Picker::from(config.picker));
        if let Some(breaker) = &config.endpoint_breaker {
            upstream = upstream.endpoint_breaker(breaker.clone());
        }
        if let Some(retry) = &config.retry {
            upstream = upstream.retry(retry.clone());
        }
        if let Some(timeout) = config.per_try_timeout {
            upstream = upstream.per_try_timeout(timeout);
        }
        if let Some(deadline) = config.deadline {
            upstream = upstream.deadline(deadline);
        }
        if let Some(wait) = config.wait_for_endpoints {
            upstream = upstream.wait_for_endpoints(wait);
        }
        upstream
    }

    /// Starts an upstream named `name` (metrics, logs, errors). Defaults: picker [`P2c`], no
    /// per-endpoint breakers, [`RetryConfig::default`], a 15 s deadline (Envoy's route
    /// timeout) and no per-try timeout beyond it.
    pub fn builder(name: impl Into<Arc<str>>) -> Upstream<P2c> {
        Upstream {
            name: name.into(),
            picker: P2c::new(),
            endpoint_breaker: None,
            retry: RetryConfig::default(),
            per_try_timeout: None,
            deadline: Duration::from_secs(15),
            wait_for_endpoints: None,
        }
    }
}

impl<P: Pick> Upstream<P> {
    /// The picker. Default is [`P2c`].
    pub fn picker<P2: Pick>(self, picker: P2) -> Upstream<P2> {
        Upstream {
            name: self.name,
            picker,
            endpoint_breaker: self.endpoint_breaker,
            retry: self.retry,
            per_try_timeout: self.per_try_timeout,
            deadline: self.deadline,
            wait_for_endpoints: self.wait_for_endpoints,
        }
    }

    /// Per-endpoint circuit breakers (outlier ejection). Default is none.
    pub fn endpoint_breaker(mut self, config: BreakerConfig) -> Self {
        self.endpoint_breaker = Some(config);
        self
    }

    /// Retries. Default is [`RetryConfig::default`]; `max_attempts(1)` turns them off.
    pub fn retry(mut self, config: RetryConfig) -> Self {
        self.retry = config;
        self
    }

    /// The most one attempt may take. Default is the whole deadline.
    pub fn per_try_timeout(mut self, timeout: Duration) -> Self {
        self.per_try_timeout = Some(timeout);
        self
    }

    /// The most a call may take, retries included. Default is 15 s.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Lets calls made before discovery has answered wait up to `wait` for the first
    /// endpoints. Default is no wait.
    pub fn wait_for_endpoints(mut self, wait: Duration) -> Self {
        self.wait_for_endpoints = Some(wait);
        self
    }

    /// Builds the HTTP upstream over `client`, fed by `discover` (addresses or
    /// [`Instance`]s, such as a [`Registry`](crate::discover::Registry) watch).
    ///
    /// # Errors
    ///
    /// [`BuildError`] outside a Tokio runtime or for an out-of-range breaker setting.
    pub fn build_http<D, K, V, E, B>(
        self,
        discover: D,
        client: Client<HttpConnector, ReplayBody<B>>,
    ) -> Result<HttpUpstream<K, B, P>, BuildError>
    where
        D: Stream<Item = Result<Change<K, V>, E>> + Send + 'static,
        K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
        V: Into<Instance>,
        E: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.build_over(HttpEndpoints::new(client, discover))
    }

    /// Builds the HTTP upstream with HTTP/1.1 connections of each instance's own
    /// ([`HttpEndpoint::http1`]): no shared pool to look up, no connection task, no hand-off
    /// per request (the calling task writes the request and reads the response), so cheaper
    /// per call than [`build_http`](Self::build_http); HTTP/1.1 over plain TCP only.
    ///
    /// # Errors
    ///
    /// [`BuildError`] outside a Tokio runtime or for an out-of-range breaker setting.
    pub fn build_http1<D, K, V, E, B>(
        self,
        discover: D,
        config: Http1Config,
    ) -> Result<HttpUpstream<K, B, P>, BuildError>
    where
        D: Stream<Item = Result<Change<K, V>, E>> + Send + 'static,
        K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
        V: Into<Instance>,
        E: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.build_over(HttpEndpoints::http1(config, discover))
    }

    fn build_over<D, K, V, E, B>(
        self,
        endpoints: HttpEndpoints<D, ReplayBody<B>>,
    ) -> Result<HttpUpstream<K, B, P>, BuildError>
    where
        D: Stream<Item = Result<Change<K, V>, E>> + Send + 'static,
        K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
        V: Into<Instance>,
        E: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let mut balance = Balance::builder(endpoints)
            .name(Arc::clone(&self.name))
            .picker(self.picker)
            .classify(HttpStatus)
            .weighted();
        if let Some(config) = self.endpoint_breaker {
            balance = balance.endpoint_breaker(config);
        }
        if let Some(wait) = self.wait_for_endpoints {
            balance = balance.wait_for_endpoints(wait);
        }
        let balance = balance.build()?;
        let per_try = PerTryTimeoutLayer::new(self.per_try_timeout.unwrap_or(self.deadline));
        let retry = RetryLayer::new(Arc::clone(&self.name), self.retry);
        // Retry never waits past the deadline and the per-try timeout never gives an attempt
        // more than the time left, so the deadline needs no timer of its own.
        let deadline = DeadlineLayer::new(self.deadline).bounded_inside();
        Ok(deadline.layer(retry.layer(per_try.layer(balance))))
    }
}

impl<K, B, P: Pick> HttpUpstream<K, B, P> {
    /// The balancer inside: its endpoints, their in-flight counts and breaker states, for
    /// admin views and health endpoints.
    pub fn balance(&self) -> &Balance<K, HttpEndpoint<ReplayBody<B>>, P, HttpStatus> {
        self.get_ref().get_ref().get_ref()
    }

    /// How many retries this upstream (all clones together) has issued so far.
    pub fn retries(&self) -> u64 {
        self.get_ref().retries()
    }

    /// How many hedges this upstream (all clones together) has sent so far.
    pub fn hedges(&self) -> u64 {
        self.get_ref().hedges()
    }
}

impl<P: fmt::Debug> fmt::Debug for Upstream<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("picker", &self.picker)
            .field("endpoint_breaker", &self.endpoint_breaker)
            .field("retry", &self.retry)
            .field("per_try_timeout", &self.per_try_timeout)
            .field("deadline", &self.deadline)
            .finish()
    }
}
