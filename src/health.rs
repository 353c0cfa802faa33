//! Active health checks for [`Balance`](crate::balance::Balance) endpoints.
//!
//! A checker task probes every endpoint each [`interval`](HealthCheck::interval) and keeps a
//! health counter per endpoint, exactly as HAProxy does: the counter lives in
//! `[0, rise + fall − 1]` and the endpoint is up while it is at least `rise`; a passing probe
//! adds one and, on reaching `rise`, jumps to the top; a failing probe subtracts one and, on
//! dropping below `rise`, falls to 0. A new endpoint starts at `rise`: up, but one failed probe
//! takes it down until it has passed once. Defaults are HAProxy's: every 2 s, rise 2, fall 3.
//!
//! A down endpoint is taken out of rotation through the same state per-endpoint breakers use
//! (its circuit is held open), so every picker skips it, it counts towards the balancer's
//! panic threshold, and it returns when the checks pass again.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Up or down, as decided by the health counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// In rotation.
    Up,
    /// Out of rotation until `rise` probes pass.
    Down,
}

/// HAProxy's health counter; see the [module docs](self).
///
/// # Examples
///
/// ```
/// use seawall::health::{Health, HealthCounter};
///
/// let mut counter = HealthCounter::new(2, 3);
/// assert_eq!(counter.health(), Health::Up);
/// assert_eq!(counter.record(true), None); // jumps to the top: 4
/// assert_eq!(counter.record(false), None); // 3
/// assert_eq!(counter.record(false), None); // 2
/// assert_eq!(counter.record(false), Some(Health::Down)); // below rise: 0
/// assert_eq!(counter.record(true), None); // 1
/// assert_eq!(counter.record(true), Some(Health::Up)); // rise reached: back to the top
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCounter {
    value: u32,
    rise: u32,
    fall: u32,
}

impl HealthCounter {
    /// A counter for a new endpoint: at `rise` (up). `rise` and `fall` are at least 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        let (rise, fall) = (rise.max(1), fall.max(1));
        Self {
            value: rise,
            rise,
            fall,
        }
    }

    /// Up or down now.
    pub fn health(&self) -> Health {
        if self.value >= self.rise {
            Health::Up
        } else {
            Health::Down
        }
    }

    /// Records one probe; returns the new health when it changed.
    pub fn record(&mut self, passed: bool) -> Option<Health> {
        let before = self.health();
        let top = self.rise + self.fall - 1;
        if passed {
            self.value = (self.value + 1).min(top);
            if self.value >= self.rise {
                self.value = top;
            }
        } else {
            self.value = self.value.saturating_sub(1);
            if self.value < self.rise {
                self.value = 0;
            }
        }
        let after = self.health();
        (after != before).then_some(after)
    }
}

/// A boxed probe result: `true` when the endpoint is healthy.
pub type ProbeFuture = Pin<Box<dyn Future<Output = bool> + Send + 'static>>;

type Probe<K, S> = dyn Fn(&K, &S) -> ProbeFuture + Send + Sync;

/// How to probe a balancer's endpoints; see [`Builder::health_check`](crate::balance::Builder::health_check).
pub struct HealthCheck<K, S> {
    pub(crate) probe: Arc<Probe<K, S>>,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) rise: u32,
    pub(crate) fall: u32,
}

impl<K, S> HealthCheck<K, S> {
    /// Probes with `probe(key, service)`, which resolves to `true` for a healthy endpoint. A
    /// probe that takes longer than the [`timeout`](Self::timeout) fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use seawall::health::HealthCheck;
    ///
    /// // Any async check: here a TCP connect to the instance's address.
    /// let check = HealthCheck::new(|addr: &std::net::SocketAddr, _service: &()| {
    ///     let addr = *addr;
    ///     Box::pin(async move { tokio::net::TcpStream::connect(addr).await.is_ok() })
    /// });
    /// # let _ = check;
    /// ```
    pub fn new<F>(probe: F) -> Self
    where
        F: Fn(&K, &S) -> ProbeFuture + Send + Sync + 'static,
    {
        Self {
            probe: Arc::new(probe),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }

    /// Time between two probes of an endpoint. Default is 2 s (HAProxy's `inter`).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long a probe may take before it counts as failed. Default is 1 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Passing probes that bring a down endpoint back. Default is 2 (HAProxy's `rise`).
    pub fn rise(mut self, rise: u32) -> Self {
        self.rise = rise.max(1);
        self
    }

    /// Failing probes that take an up endpoint out. Default is 3 (HAProxy's `fall`).
    pub fn fall(mut self, fall: u32) -> Self {
        self.fall = fall.max(1);
        self
    }
}

impl<K, S> Clone for HealthCheck<K, S> {
    fn clone(&self) -> Self {
        Self {
            probe: Arc::clone(&self.probe),
            interval: self.interval,
            timeout: self.timeout,
            rise: self.rise,
            fall: self.fall,
        }
    }
}

impl<K, S> fmt::Debug for HealthCheck<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheck")
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("rise", &self.rise)
            .field("fall", &self.fall)
            .finish_non_exhaustive()
    }
}

/// The checker task: every interval, probe every endpoint of the current set concurrently.
/// It stops when the balancer is gone (and is aborted with it).
pub(crate) async fn run<K, S, P, C>(
    shared: std::sync::Weak<crate::balance::service_shared::Shared<K, S, P, C>>,
    check: HealthCheck<K, S>,
) where
    K: Send + Sync + 'static,
    S: Send + Sync + 'static,
    P: crate::balance::Pick,
{
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(set) = shared.upgrade().map(|s| s.snapshot.load().set.clone()) else {
            return;
        };
        let mut probes = tokio::task::JoinSet::new();
        for endpoint in set.iter() {
            let endpoint = Arc::clone(endpoint);
            let probe = (check.probe)(endpoint.key(), endpoint.service());
            let timeout = check.timeout;
            probes.spawn(async move {
                let passed = matches!(tokio::time::timeout(timeout, probe).await, Ok(true));
                (endpoint, passed)
            });
        }
        while let Some(done) = probes.join_next().await {
            // A probe that panicked counts as nothing; the next round probes again.
            if let Ok((endpoint, passed)) = done {
                if !endpoint.is_removed() {
                    endpoint.record_probe(passed, check.rise, check.fall);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_counter() {
        // rise 2, fall 3: range [0, 4], up iff ≥ 2, starts at 2.
        let mut c = HealthCounter::new(2, 3);
        assert_eq!(c.value, 2);
        // A fresh server goes down on its first failure.
        assert_eq!(c.record(false), Some(Health::Down));
        assert_eq!(c.value, 0);
        assert_eq!(c.record(false), None);
        assert_eq!(c.value, 0);
        assert_eq!(c.record(true), None);
        assert_eq!(c.value, 1);
        assert_eq!(c.record(true), Some(Health::Up));
        assert_eq!(c.value, 4, "reaching rise jumps to rise + fall − 1");
        // Now it takes `fall` failures to go down.
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), Some(Health::Down));
        // A pass in between resets towards the top.
        let mut c = HealthCounter::new(2, 3);
        c.record(true);
        c.record(false);
        c.record(true);
        assert_eq!(c.value, 4);
        assert_eq!(c.health(), Health::Up);
    }

    #[test]
    fn rise_and_fall_of_one() {
        let mut c = HealthCounter::new(1, 1);
        assert_eq!(c.record(false), Some(Health::Down));
        assert_eq!(c.record(true), Some(Health::Up));
        assert_eq!(c.record(false), Some(Health::Down));
    }
}
