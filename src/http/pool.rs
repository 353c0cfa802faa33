//! An HTTP/1.1 client for one instance: its own keep-alive connections, found without a lookup,
//! driven by the request that uses them.
//!
//! hyper-util's pooled `Client` serves every host from one map: each request hashes the
//! scheme and authority (byte by byte, with SipHash) to find its pool, takes a lock, and for
//! HTTP/1 spawns a task per request that waits for the connection to be free again before
//! putting it back; and hyper's connections each run in a task of their own, so every
//! request is handed to that task over a channel and its response handed back. Measured in
//! the example gateway, the two cost about a third of the instructions of a proxied
//! request. A balancer endpoint already *is* the pool key, so [`Http1Pool`] keeps idle
//! connections in the endpoint itself, and the request's own future writes the request and
//! reads the response on the connection it took (see `h1`): nothing is handed to another task.
//! The response body holds the connection until its last byte and then puts it back.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::HeaderValue;

use super::h1::{self, Conn, ExchangeError, Failure, Outgoing};
use crate::BoxError;

/// Settings of the connections an [`HttpEndpoint::http1`](super::HttpEndpoint::http1) opens.
///
/// Plain TCP and HTTP/1.1 only: no TLS, no HTTP/2, no protocol upgrades (use
/// [`HttpEndpoint::new`](super::HttpEndpoint::new) over a hyper-util client for those).
/// Idle connections have no timer each: one sweep per endpoint, every half
/// [`idle_timeout`](Self::idle_timeout), closes those idle for longer than it and those the
/// server has closed (so none lingers in `CLOSE_WAIT`); a closed one is also found and
/// dropped when it would be used. At most [`max_idle`](Self::max_idle) are kept.
///
/// What the connections do on the wire:
/// - A request body goes out with the `content-length` the request declares, else its exact
///   size, else chunked (request trailers are dropped, as most HTTP/1.1 proxies do); a
///   response body is read by `transfer-encoding: chunked`, `content-length`, or until the
///   server closes (RFC 9112). Interim (1xx) answers are skipped; heads over 64 KiB or 100
///   fields are refused.
/// - A connection is used again only if both messages ended exactly where their framing said
///   and neither side said `connection: close`. A server that answers before it has read the
///   whole request body gets its answer through; the rest of the body is not sent and the
///   connection closes. A response body dropped before its end closes its connection, unless
///   the rest of it has already arrived.
/// - A kept connection the server closed in the meantime (the keep-alive race) is retried
///   once on a new connection when that is safe: the write failed before any body was
///   spent, or the method is idempotent and had no body. Otherwise the caller gets an
///   [`ExchangeError`](super::ExchangeError), which a retry layer classifies as usual.
///
/// ```
/// use std::time::Duration;
/// use seawall::http::Http1Config;
///
/// let config = Http1Config::default()
///     .connect_timeout(Duration::from_millis(500))
///     .max_idle(64);
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct Http1Config {
    connect_timeout: Option<Duration>,
    max_idle: usize,
    idle_timeout: Option<Duration>,
}

impl Default for Http1Config {
    /// A 1 s connect timeout, up to 256 connections kept per instance, closed after 90 s
    /// idle.
    fn default() -> Self {
        Self {
            connect_timeout: Some(Duration::from_secs(1)),
            max_idle: 256,
            idle_timeout: Some(Duration::from_secs(90)),
        }
    }
}

impl Http1Config {
    /// How long opening a connection may take; `None` waits for the operating system.
    /// Default is 1 s.
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.connect_timeout = timeout.into();
        self
    }

    /// How many connections to one instance are kept open for reuse; a connection opened
    /// while that many are kept serves its request and closes. Default is 256.
    pub fn max_idle(mut self, connections: usize) -> Self {
        self.max_idle = connections;
        self
    }

    /// How long a kept connection may sit unused before it is closed; `None` keeps it until
    /// the server closes it and it is found closed when it would be used. Enforced by one
    /// sweep per endpoint every half of it (so a connection goes after between 1 and 1.5
    /// times `timeout` idle), which also closes the connections the server has closed.
    /// The sweep runs on the tokio runtime the endpoint is created on (none outside one).
    /// Default is 90 s; keep it below the instances' own keep-alive timeout.
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.idle_timeout = timeout.into();
        self
    }
}

/// Opening a connection to an instance failed: the request was never sent, so it may be
/// tried again anywhere, whatever its method.
#[derive(Debug)]
pub struct ConnectError {
    addr: SocketAddr,
    source: BoxError,
}

impl ConnectError {
    /// The instance address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot connect to {}: {}; the request was not sent (is the instance up?)",
            self.addr, self.source
        )
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The connections to one instance.
pub(crate) struct Http1Pool {
    addr: SocketAddr,
    /// `Host` for requests that come without one.
    host: Option<HeaderValue>,
    config: Http1Config,
    /// Connections between exchanges, most recently used last (the warmest).
    idle: Mutex<Vec<Conn>>,
}

impl fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1Pool")
            .field("addr", &self.addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Http1Pool {
    /// A pool for `addr`; with an idle timeout, its sweep starts on the current runtime and
    /// ends when the pool is dropped.
    pub(crate) fn new(addr: SocketAddr, config: Http1Config) -> Arc<Self> {
        let timeout = config.idle_timeout;
        let pool = Arc::new(Self {
            addr,
            host: HeaderValue::from_str(&addr.to_string()).ok(),
            config,
            idle: Mutex::new(Vec::new()),
        });
        if let (Some(timeout), Ok(runtime)) = (timeout, tokio::runtime::Handle::try_current()) {
            runtime.spawn(sweep(Arc::downgrade(&pool), timeout));
        }
        pool
    }

    /// Closes the idle connections the server has closed, and those that have sat through
    /// `sweeps` sweeps.
    fn sweep(&self, sweeps: u32) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain_mut(|conn| {
            conn.idle_sweeps += 1;
            conn.idle_sweeps < sweeps && conn.is_usable()
        });
    }

    /// Sends `request` on an idle connection, or on a new one, and reads the response head;
    /// the body comes with the response and gives the connection back when it has ended.
    pub(crate) async fn send<B>(
        self: Arc<Self>,
        request: http::Request<B>,
    ) -> Result<http::Response<h1::Incoming>, BoxError>
    where
        B: http_body::Body + Unpin,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        // HTTP/1.1 wants the origin form on the wire.
        let path = super::origin_path(&parts.uri);
        let (mut conn, mut reused) = match self.take_idle() {
            Some(conn) => (conn, true),
            None => (self.connect().await?, false),
        };
        let encode = |conn: &mut Conn, body: &B| {
            h1::encode_head(conn, &parts, path.as_str(), self.host.as_ref(), body)
                .map_err(|failure| ExchangeError::new(self.addr, failure))
        };
        let head = encode(&mut conn, &body)?;
        let mut outgoing = Outgoing::new(body, head.sending);
        loop {
            match h1::exchange(&mut conn, &mut outgoing, &parts.method).await {
                Ok(response) => {
                    // A request that asked to close its connection has it closed.
                    let reusable = outgoing.done && !head.close;
                    return Ok(h1::respond(conn, response, reusable, self));
                }
                // A kept connection the server had closed (the keep-alive race): the
                // request goes out again on a new connection if nothing of its body was
                // spent, and either the server cannot have read it (the write failed) or
                // reading it twice does no harm.
                Err(failure)
                    if reused
                        && !outgoing.body_polled()
                        && match failure {
                            Failure::Write(_) => true,
                            Failure::ClosedBeforeResponse => super::idempotent(&parts.method),
                            _ => false,
                        } =>
                {
                    conn = self.connect().await?;
                    reused = false;
                    encode(&mut conn, &outgoing.body)?;
                    outgoing.restart();
                }
                Err(failure) => return Err(ExchangeError::new(self.addr, failure).into()),
            }
        }
    }

    /// An idle connection the server has not closed; closed ones are dropped on the way.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(conn) = idle.pop() {
            if conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection whose exchange ended cleanly, unless enough are kept.
    pub(crate) fn keep(&self, mut conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // The coldest connection is looked at once per return, so one the server closed
        // long ago does not hold its socket until every warmer one is gone.
        if idle.first().is_some_and(|oldest| !oldest.is_usable()) {
            idle.remove(0);
        }
        if idle.len() < self.config.max_idle {
            conn.idle_sweeps = 0;
            idle.push(conn);
        }
    }

    async fn connect(&self) -> Result<Conn, ConnectError> {
        let error = |source: BoxError| ConnectError {
            addr: self.addr,
            source,
        };
        let connecting = tokio::net::TcpStream::connect(self.addr);
        let stream = match self.config.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, connecting)
                .await
                .map_err(|_| error(format!("connect timed out after {limit:?}").into()))?,
            None => connecting.await,
        }
        .map_err(|e| error(e.into()))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn::new(stream))
    }
}

/// Sweeps `pool` every half `timeout` while it lives: a connection found idle by three sweeps
/// in a row has been idle for between 1 and 1.5 times `timeout`.
async fn sweep(pool: std::sync::Weak<Http1Pool>, timeout: Duration) {
    let period = (timeout / 2).max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep(3);
    }
}
