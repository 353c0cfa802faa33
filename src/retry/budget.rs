//! A retry budget: retries may be at most a ratio of recent requests, plus a small floor.
//!
//! Every request deposits one; every retry withdraws one; both live in a window of `ttl` in
//! ten slices. A retry is allowed while
//! `(retries + 1) × 1000 ≤ per-mille × requests + floor × ttl_ms` over the window, in
//! integers, so the ratio is honoured exactly for every value. (tower's `TpsBudget` divides
//! 1 by the ratio into an integer and over-issues for ratios between 0.5 and 1: at 0.75 it
//! allows a retry per request — tower#857.) The floor, `min_retries_per_sec × ttl` retries,
//! lets a quiet client still retry; it refills as old retries age out of the window.
//!
//! Deposits and checks are lock-free (one compare-and-swap each); under heavy concurrency
//! a few callers may pass the check at once and overshoot by as many retries, as Envoy's
//! budgets can.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::window::PairWindow;

/// A retry budget's settings. Defaults (Finagle's and linkerd's): 20 % of requests, 10
/// retries a second, over 10 s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    ttl: Duration,
    min_retries_per_sec: u32,
    ratio: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            min_retries_per_sec: 10,
            ratio: 0.2,
        }
    }
}

impl BudgetConfig {
    /// How long a request or retry counts. Default is 10 s; clamped to 1–60 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        self
    }

    /// Retries allowed per second even without requests. Default is 10.
    pub fn min_retries_per_sec(mut self, n: u32) -> Self {
        self.min_retries_per_sec = n;
        self
    }

    /// Retries allowed per request, as a ratio (0.2 is 20 %), to three decimals. Default
    /// is 0.2; clamped to 0–1000.
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        self
    }
}

/// A retry budget shared by every clone: retries may be at most a ratio of recent requests,
/// plus a small floor.
///
/// Every request deposits one ([`deposit`](Self::deposit)); every retry withdraws one
/// ([`try_withdraw`](Self::try_withdraw)); both live in a window of `ttl` in ten slices. A
/// retry is allowed while `(retries + 1) × 1000 ≤ per-mille × requests + floor × ttl_ms` over
/// the window, in integers, so the ratio is honoured exactly for every value — tower's
/// `TpsBudget` over-issues for ratios between 0.5 and 1 (at 0.75 it allows a retry per
/// request; tower#857). The floor, `min_retries_per_sec × ttl` retries, lets a quiet client
/// still retry and refills as old retries age out: in a storm where every call fails, retries
/// settle at `ratio × request rate + min_retries_per_sec`.
///
/// Deposits and checks take no lock (one compare-and-swap each); under heavy concurrency a
/// few callers may pass the check together and overshoot by as many retries, as Envoy's
/// budgets can.
///
/// # Examples
///
/// ```
/// use seawall::retry::{BudgetConfig, RetryBudget};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let budget = RetryBudget::new(BudgetConfig::default().ratio(0.5).min_retries_per_sec(0));
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// let retries = (0..100).filter(|_| budget.try_withdraw()).count();
/// assert_eq!(retries, 5);
/// # }
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    /// (requests, retries)
    window: PairWindow,
    per_mille: u64,
    reserve_milli: u64,
    epoch: Instant,
}

impl RetryBudget {
    /// A budget with `config`.
    pub fn new(config: BudgetConfig) -> Self {
        let slice = config.ttl / 10;
        let ttl_ms = u64::try_from(config.ttl.as_millis()).unwrap_or(u64::MAX);
        Self {
            inner: Arc::new(Inner {
                window: PairWindow::new(u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX), 10),
                per_mille: (config.ratio * 1000.0).round() as u64,
                reserve_milli: u64::from(config.min_retries_per_sec).saturating_mul(ttl_ms),
                epoch: Instant::now(),
            }),
        }
    }

    fn now(&self) -> u64 {
        self.nanos(Instant::now())
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.inner.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Counts one request (call it once per original request, not per retry).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Counts one request made at `at` (a time the caller has already read).
    pub(crate) fn deposit_at(&self, at: Instant) {
        self.inner.window.add(self.nanos(at), 1, 0);
    }

    /// Takes one retry from the budget if it allows one; `false` means do not retry.
    pub fn try_withdraw(&self) -> bool {
        let now = self.now();
        let (requests, retries) = self.inner.window.sum(now);
        if !allows(
            requests,
            retries,
            self.inner.per_mille,
            self.inner.reserve_milli,
        ) {
            return false;
        }
        self.inner.window.add(now, 0, 1);
        true
    }

    /// Retries the budget would allow now.
    pub fn remaining(&self) -> u64 {
        let (requests, retries) = self.inner.window.sum(self.now());
        let allowance = self.inner.per_mille.saturating_mul(requests) + self.inner.reserve_milli;
        (allowance / 1000).saturating_sub(retries)
    }
}

/// The budget rule, in integers: one more retry fits if
/// `(retries + 1) × 1000 ≤ per_mille × requests + reserve_milli`.
fn allows(requests: u64, retries: u64, per_mille: u64, reserve_milli: u64) -> bool {
    (retries + 1).saturating_mul(1000)
        <= per_mille
            .saturating_mul(requests)
            .saturating_add(reserve_milli)
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("per_mille", &self.inner.per_mille)
            .field("remaining", &self.remaining())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_ratio_is_exact_for_every_ratio() {
        // tower's TpsBudget allows 1000 retries per 1000 requests at 0.75 and 0.99.
        for (ratio, expected) in [
            (0.0, 0),
            (0.1, 100),
            (0.2, 200),
            (0.3, 300),
            (0.5, 500),
            (0.75, 750),
            (0.99, 990),
            (1.0, 1000),
            (2.0, 2000),
            (0.333, 333),
        ] {
            let budget =
                RetryBudget::new(BudgetConfig::default().ratio(ratio).min_retries_per_sec(0));
            for _ in 0..1000 {
                budget.deposit();
            }
            let allowed = (0..5000).filter(|_| budget.try_withdraw()).count();
            assert_eq!(allowed, expected, "ratio {ratio}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_retries_without_requests_and_refills() {
        let budget = RetryBudget::new(BudgetConfig::default().ratio(0.2).min_retries_per_sec(10));
        assert_eq!(
            (0..1000).filter(|_| budget.try_withdraw()).count(),
            100,
            "10/s over 10 s"
        );
        assert!(!budget.try_withdraw());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(budget.remaining(), 100, "the retries aged out");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_storm_is_bounded() {
        // 100 requests a second for 60 s, every one failing and asking to retry once.
        let budget = RetryBudget::new(BudgetConfig::default());
        let (mut requests, mut retries) = (0u64, 0u64);
        let mut per_second = Vec::new();
        for _ in 0..60 {
            let mut this_second = 0;
            for _ in 0..100 {
                budget.deposit();
                requests += 1;
                if budget.try_withdraw() {
                    retries += 1;
                    this_second += 1;
                }
            }
            per_second.push(this_second);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Never more than ratio × requests + floor × (seconds + ttl) …
        assert!(
            retries as f64 <= 0.2 * requests as f64 + 10.0 * (60.0 + 10.0),
            "{retries}"
        );
        // … and in steady state (after the initial reserve is spent) about ratio × rate + floor.
        let steady: u64 = per_second[20..].iter().sum::<u64>() / 40;
        assert!((25..=35).contains(&steady), "steady retries/s: {steady}");
        // In any ttl window: at most 20 % of its requests plus the 100-retry floor.
        for end in 10..=60 {
            let window: u64 = per_second[end - 10..end].iter().sum();
            assert!(window <= 200 + 100, "window ending at {end}s: {window}");
        }
    }

    #[test]
    fn rule_in_integers() {
        assert!(allows(0, 0, 200, 1000));
        assert!(!allows(0, 1, 200, 1000));
        assert!(allows(5, 0, 200, 0));
        assert!(!allows(4, 0, 200, 0));
        assert!(
            allows(u64::MAX, u64::MAX - 1, 1000, 0),
            "saturates instead of overflowing"
        );
    }
}
