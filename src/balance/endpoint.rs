use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::breaker::State;
use crate::breaker::endpoint::EndpointBreaker;
use crate::metrics::EndpointMetrics;

/// One endpoint in a balancer's set: the discovered service plus the live load figures that
/// pickers read.
///
/// Everything a picker reads is an atomic, so every clone of a [`Balance`](super::Balance) reads
/// the same figures without a lock.
pub struct Endpoint<K, S> {
    hot: Hot,
    key: K,
    service: S,
    label: Arc<str>,
    pub(crate) metrics: EndpointMetrics,
    breaker: Option<EndpointBreaker>,
}

/// What every pick reads, in one cache line: a pick over 10 000 endpoints touches one line per
/// candidate instead of up to three.
#[repr(C, align(64))]
struct Hot {
    in_flight: AtomicUsize,
    /// Peak-EWMA latency estimate, as `f64` bits, in nanoseconds; 0 until the first response.
    cost_bits: AtomicU64,
    /// When `cost_bits` was last updated, in nanoseconds since the balancer's epoch.
    cost_at: AtomicU64,
    /// Calls between their last look at `removed` and the return of the inner `call`.
    sending: AtomicUsize,
    weight: u32,
    removed: AtomicBool,
}

impl<K, S> Endpoint<K, S> {
    /// An endpoint for `service` under `key`, with metric handles labelled by `upstream`.
    ///
    /// Balancers create endpoints themselves from discovery; this is public for custom
    /// pickers' tests and benchmarks, which build [`EndpointTable`](super::EndpointTable)s
    /// directly.
    pub fn new(key: K, service: S, weight: u32, upstream: &str) -> Self
    where
        K: fmt::Debug,
    {
        let label: Arc<str> = key_label(&key).into();
        let metrics = EndpointMetrics::new(upstream, &label);
        Self {
            hot: Hot {
                in_flight: AtomicUsize::new(0),
                cost_bits: AtomicU64::new(0f64.to_bits()),
                cost_at: AtomicU64::new(0),
                sending: AtomicUsize::new(0),
                weight: weight.max(1),
                removed: AtomicBool::new(false),
            },
            key,
            service,
            label,
            metrics,
            breaker: None,
        }
    }

    /// Gives the endpoint its own circuit breaker (outlier ejection).
    pub(crate) fn with_breaker(mut self, breaker: EndpointBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    pub(crate) fn breaker(&self) -> Option<&EndpointBreaker> {
        self.breaker.as_ref()
    }

    /// The state of the endpoint's circuit breaker, when the balancer has per-endpoint
    /// breakers: `Open` while ejected, `HalfOpen` while its trial calls decide.
    pub fn breaker_state(&self) -> Option<State> {
        self.breaker.as_ref().map(EndpointBreaker::state)
    }

    /// The active health check's verdict, when the balancer has one and has probed this
    /// endpoint.
    pub fn health(&self) -> Option<crate::health::Health> {
        self.breaker.as_ref().and_then(EndpointBreaker::health)
    }

    pub(crate) fn record_probe(&self, passed: bool, rise: u32, fall: u32) {
        if let Some(breaker) = &self.breaker {
            breaker.record_probe(passed, rise, fall);
        }
    }

    /// Whether the endpoint is ejected but due a trial call at `now_ns`: pickers that rank by
    /// cost take it over its rival, since its trial slots bound how many calls that sends.
    #[inline]
    pub fn trial_due(&self, now_ns: u64) -> bool {
        self.breaker.as_ref().is_some_and(|b| b.trial_due(now_ns))
    }

    /// Records a result in the endpoint's breaker. A circuit that closes again forgets the
    /// latency estimate from before it opened; the trial's latency becomes the new one.
    pub(crate) fn record_in_breaker(
        &self,
        permit: crate::breaker::state_permit::Permit,
        ending: crate::breaker::state_permit::Ending,
        elapsed_ns: u64,
        now_ns: u64,
    ) {
        if let Some(breaker) = &self.breaker {
            if breaker.record(permit, ending, elapsed_ns, now_ns) == Some(State::Closed) {
                self.set_cost(0.0, now_ns);
            }
        }
    }

    /// Whether a picker may choose this endpoint at `now_ns`: it is not ejected (or its trial
    /// is due). Always true without per-endpoint breakers.
    #[inline]
    pub fn may_admit(&self, now_ns: u64) -> bool {
        self.breaker.as_ref().is_none_or(|b| b.may_admit(now_ns))
    }

    /// The discovery key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The endpoint's service.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// The balancing weight (at least 1).
    pub fn weight(&self) -> u32 {
        self.hot.weight
    }

    /// The key as it appears in metric labels and logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Calls picked for this endpoint and not yet finished or dropped.
    pub fn in_flight(&self) -> usize {
        self.hot.in_flight.load(Ordering::Relaxed)
    }

    /// True once discovery has removed the endpoint; no new call is sent to it after that.
    pub fn is_removed(&self) -> bool {
        self.hot.removed.load(Ordering::Acquire)
    }

    /// Flags the endpoint as removed. Once this returns and [`Self::is_sending`] reads false,
    /// no call can reach the endpoint's service any more.
    pub(crate) fn mark_removed(&self) {
        // SeqCst pairs with `begin_send`: either the sender sees the flag, or this side sees
        // the sender's count and waits for it.
        self.hot.removed.store(true, Ordering::SeqCst);
    }

    /// True while a call that passed the removal check is still inside the service's `call`.
    pub(crate) fn is_sending(&self) -> bool {
        self.hot.sending.load(Ordering::SeqCst) != 0
    }

    /// Announces a send; returns `None` (announcing nothing) when the endpoint was removed.
    pub(crate) fn begin_send(&self) -> Option<SendGuard<'_>> {
        self.hot.sending.fetch_add(1, Ordering::SeqCst);
        if self.hot.removed.load(Ordering::SeqCst) {
            self.hot.sending.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(SendGuard {
            sending: &self.hot.sending,
        })
    }

    /// The raw latency estimate (nanoseconds) and when it was last updated.
    pub(crate) fn cost_state(&self) -> (f64, u64) {
        (
            f64::from_bits(self.hot.cost_bits.load(Ordering::Relaxed)),
            self.hot.cost_at.load(Ordering::Relaxed),
        )
    }

    /// Stores a new latency estimate. Concurrent updates may overwrite each other; each is a
    /// complete estimate, so the loser's sample is simply not counted.
    pub(crate) fn set_cost(&self, cost_ns: f64, at: u64) {
        self.hot
            .cost_bits
            .store(cost_ns.to_bits(), Ordering::Relaxed);
        self.hot.cost_at.store(at, Ordering::Relaxed);
    }

    pub(crate) fn acquire(&self) {
        self.hot.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.increment(1.0);
    }

    pub(crate) fn release(&self) {
        self.hot.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.in_flight.decrement(1.0);
    }
}

/// Ends an announced send when dropped (also if the service's `call` panics).
pub(crate) struct SendGuard<'a> {
    sending: &'a AtomicUsize,
}

impl Drop for SendGuard<'_> {
    fn drop(&mut self) {
        self.sending.fetch_sub(1, Ordering::Release);
    }
}

impl<K: fmt::Debug, S> fmt::Debug for Endpoint<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("key", &self.key)
            .field("weight", &self.hot.weight)
            .field("in_flight", &self.in_flight())
            .field("removed", &self.is_removed())
            .finish_non_exhaustive()
    }
}

/// The key as a label: its `Debug` form, without the quotes that `Debug` puts around strings.
fn key_label<K: fmt::Debug>(key: &K) -> String {
    let label = format!("{key:?}");
    match label.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.to_owned(),
        None => label,
    }
}

#[cfg(test)]
mod tests {
    use super::key_label;

    #[test]
    fn labels() {
        assert_eq!(key_label(&"users-1"), "users-1");
        assert_eq!(key_label(&String::from("a")), "a");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], 80).into();
        assert_eq!(key_label(&addr), "127.0.0.1:80");
        assert_eq!(key_label(&7u32), "7");
    }
}
