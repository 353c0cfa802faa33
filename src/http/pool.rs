//! An HTTP/1.1 client for one instance: its own keep-alive connections, found without a lookup.
//!
//! hyper-util's pooled `Client` serves every host from one map: each request hashes the
//! scheme and authority (byte by byte, with SipHash) to find its pool, takes a lock, and for
//! HTTP/1 spawns a task per request that waits for the connection to be free again before
//! putting it back. Measured in the example gateway, that machinery cost about a fifth of the
//! instructions of a proxied request. A balancer endpoint already *is* the pool key, so
//! [`Http1Pool`] keeps the connections in the endpoint itself: a request takes the first
//! connection that is ready, or opens one, and the connection stays in the pool the whole
//! time (a connection still streaming its last response is merely not ready yet).

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::HeaderValue;
use http::uri::Uri;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::BoxError;

/// Settings of the connections an [`HttpEndpoint::http1`](super::HttpEndpoint::http1) opens.
///
/// Plain TCP and HTTP/1.1 only: no TLS, no HTTP/2, no protocol upgrades (use
/// [`HttpEndpoint::new`](super::HttpEndpoint::new) over a hyper-util client for those). An
/// idle connection has no timer of its own: it stays until the server closes it (found and
/// dropped at the next request), the endpoint leaves discovery, or it is beyond
/// [`max_idle`](Self::max_idle).
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
}

impl Default for Http1Config {
    /// A 1 s connect timeout and up to 256 connections kept per instance.
    fn default() -> Self {
        Self {
            connect_timeout: Some(Duration::from_secs(1)),
            max_idle: 256,
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
pub(crate) struct Http1Pool<B> {
    addr: SocketAddr,
    /// `Host` for requests that come without one.
    host: Option<HeaderValue>,
    config: Http1Config,
    /// Connections not serving a request, most recently used last. A connection comes back
    /// when its response head has arrived, so one is at worst finishing a short body; the
    /// last is the warmest.
    conns: Mutex<Vec<SendRequest<B>>>,
}

impl<B> fmt::Debug for Http1Pool<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1Pool")
            .field("addr", &self.addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<B> Http1Pool<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(addr: SocketAddr, config: Http1Config) -> Self {
        Self {
            addr,
            host: HeaderValue::from_str(&addr.to_string()).ok(),
            config,
            conns: Mutex::new(Vec::new()),
        }
    }

    /// Sends `request` on a ready connection, or on a new one.
    pub(crate) async fn send(
        self: Arc<Self>,
        mut request: http::Request<B>,
    ) -> Result<http::Response<Incoming>, BoxError> {
        // HTTP/1.1 wants the origin form on the wire, and a Host header.
        *request.uri_mut() = Uri::from(super::origin_path(request.uri()));
        if !request.headers().contains_key(http::header::HOST) {
            if let Some(host) = &self.host {
                request
                    .headers_mut()
                    .insert(http::header::HOST, host.clone());
            }
        }
        if let Some(mut conn) = self.take_ready() {
            match conn.try_send_request(request).await {
                Ok(response) => {
                    self.keep(conn);
                    return Ok(response);
                }
                // The connection closed before the request left (an idle connection the
                // server had just closed): send it on a new one.
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(error.into_error().into()),
                },
            }
        }
        let mut conn = self.connect().await?;
        let response = conn.send_request(request).await;
        self.keep(conn);
        Ok(response?)
    }

    /// A kept connection that can take a request now; closed ones are dropped on the way.
    fn take_ready(&self) -> Option<SendRequest<B>> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let mut i = conns.len();
        while i > 0 {
            i -= 1;
            match conns[i].poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => return Some(conns.swap_remove(i)),
                // Still reading its last response: busy, not broken.
                Poll::Pending => {}
                Poll::Ready(Err(_)) => {
                    conns.swap_remove(i);
                }
            }
        }
        None
    }

    /// Keeps a connection for later requests, unless enough are kept or it is closed.
    fn keep(&self, conn: SendRequest<B>) {
        if conn.is_closed() {
            return;
        }
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if conns.len() < self.config.max_idle {
            conns.push(conn);
        }
    }

    async fn connect(&self) -> Result<SendRequest<B>, ConnectError> {
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
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| error(e.into()))?;
        // The connection is driven by its own task, as hyper's client connections are; it
        // ends when the server closes it or the pool drops its sender.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}
