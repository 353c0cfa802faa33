//! A discovery source that polls: call a function every interval, diff its answer.
//!
//! Diffing keeps the balancer's work proportional to what changed: an unchanged answer yields
//! nothing, a changed value under an existing key yields an `Insert` that replaces the endpoint.
//! A failed poll is logged and counted and the last good set stays, because an outage of the
//! source of truth (a DNS server, an HTTP catalogue) must not take every endpoint with it.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;
use metrics::{Counter, Label};
use tokio::time::{Interval, MissedTickBehavior};
use tower::discover::Change;

/// Polls a function for the current set of endpoints and yields the differences.
///
/// The first poll runs as soon as the stream is first polled, then once per `interval` after
/// that (a poll slower than the interval delays the next one; polls never overlap). Duplicate keys
/// in one answer: the last one wins. The stream never ends and never yields an error.
///
/// # Examples
///
/// ```
/// use std::net::SocketAddr;
/// use std::time::Duration;
/// use seawall::discover::Polling;
///
/// let discover = Polling::new("catalogue", Duration::from_secs(5), || async {
///     // e.g. an HTTP call to a service catalogue
///     let addrs: Vec<SocketAddr> = vec![([127, 0, 0, 1], 9001).into()];
///     Ok::<_, std::io::Error>(addrs.into_iter().map(|addr| (addr, addr)))
/// });
/// let errors = discover.errors();
/// assert_eq!(errors.count(), 0);
/// ```
pub struct Polling<K, V, F, Fut> {
    name: Arc<str>,
    fetch: F,
    period: Duration,
    interval: Option<Interval>,
    in_flight: Option<Pin<Box<Fut>>>,
    last: HashMap<K, V>,
    pending: VecDeque<Change<K, V>>,
    errors: PollErrors,
    error_counter: Counter,
}

/// A shared count of a [`Polling`] source's failed polls.
#[derive(Debug, Clone, Default)]
pub struct PollErrors(Arc<AtomicU64>);

impl PollErrors {
    /// How many polls have failed so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl<K, V, F, Fut, I, E> Polling<K, V, F, Fut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<I, E>>,
    I: IntoIterator<Item = (K, V)>,
{
    /// Polls `fetch` every `interval` (at least 1 ms). `name` labels logs and the
    /// `seawall_discovery_errors_total{source}` counter.
    pub fn new(name: impl Into<Arc<str>>, interval: Duration, fetch: F) -> Self {
        let name = name.into();
        let error_counter = metrics::counter!(
            crate::metrics::DISCOVERY_ERRORS_TOTAL,
            vec![Label::new("source", name.to_string())]
        );
        Self {
            name,
            fetch,
            period: interval.max(Duration::from_millis(1)),
            interval: None,
            in_flight: None,
            last: HashMap::new(),
            pending: VecDeque::new(),
            errors: PollErrors::default(),
            error_counter,
        }
    }

    /// A handle to the count of failed polls, usable after the stream moved into a balancer.
    pub fn errors(&self) -> PollErrors {
        self.errors.clone()
    }
}

impl<K, V, F, Fut> Polling<K, V, F, Fut>
where
    K: Hash + Eq + Clone,
    V: PartialEq + Clone,
{
    fn diff(&mut self, answer: impl IntoIterator<Item = (K, V)>) {
        let next: HashMap<K, V> = answer.into_iter().collect();
        self.pending
            .extend(super::diff::changes(&mut self.last, next));
    }
}

impl<K, V, F, Fut> Unpin for Polling<K, V, F, Fut> {}

impl<K, V, F, Fut, I, E> Stream for Polling<K, V, F, Fut>
where
    K: Hash + Eq + Clone,
    V: PartialEq + Clone,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<I, E>>,
    I: IntoIterator<Item = (K, V)>,
    E: fmt::Display,
{
    type Item = Result<Change<K, V>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            if let Some(fetch) = this.in_flight.as_mut() {
                let answer = ready!(fetch.as_mut().poll(cx));
                this.in_flight = None;
                match answer {
                    Ok(set) => this.diff(set),
                    Err(error) => {
                        this.errors.0.fetch_add(1, Ordering::Relaxed);
                        this.error_counter.increment(1);
                        tracing::warn!(source = %this.name, %error, "discovery poll failed; keeping the last set");
                    }
                }
                continue;
            }
            let period = this.period;
            let interval = this.interval.get_or_insert_with(|| {
                let mut interval = tokio::time::interval(period);
                interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                interval
            });
            ready!(interval.poll_tick(cx));
            this.in_flight = Some(Box::pin((this.fetch)()));
        }
    }
}

impl<K, V, F, Fut> fmt::Debug for Polling<K, V, F, Fut> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Polling")
            .field("name", &self.name)
            .field("interval", &self.period)
            .field("known", &self.last.len())
            .field("errors", &self.errors.count())
            .finish_non_exhaustive()
    }
}
