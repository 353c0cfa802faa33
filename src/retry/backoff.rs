//! Exponential backoff with full jitter.
//!
//! The n-th retry (n ≥ 1) waits a uniformly random time in `[0, min(base × 2^(n−1), max))`,
//! as Envoy's `JitteredExponentialBackOffStrategy` does: full jitter spreads a burst of
//! failing callers over the whole interval instead of moving the herd by a fixed amount, and
//! the cap keeps a long outage from pushing waits past what a caller's deadline allows.

use std::time::Duration;

use crate::balance::PickRng;

/// Exponential backoff with full jitter. Defaults (Envoy's): base 25 ms, max 250 ms.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use seawall::balance::PickRng;
/// use seawall::retry::Backoff;
///
/// let backoff = Backoff::default();
/// let mut rng = PickRng::with_seed(1);
/// assert!(backoff.delay(1, &mut rng) < Duration::from_millis(25));
/// assert!(backoff.delay(10, &mut rng) < Duration::from_millis(250));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

impl Backoff {
    /// Backoff from `base` doubling per retry, capped at `max` (at least `base`).
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
        }
    }

    /// The first retry's ceiling.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The largest ceiling.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The upper bound of the wait before retry `n` (1 for the first retry):
    /// `min(base × 2^(n−1), max)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(63);
        let nanos = self
            .base
            .as_nanos()
            .saturating_mul(1u128 << doublings)
            .min(self.max.as_nanos());
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The wait before retry `n` (1 for the first retry): uniform in `[0, ceiling(n))`.
    pub fn delay(&self, retry: u32, rng: &mut PickRng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(retry).as_nanos()).unwrap_or(u64::MAX);
        if ceiling == 0 {
            return Duration::ZERO;
        }
        let nanos = ((u128::from(rng.next_u64()) * u128::from(ceiling)) >> 64) as u64;
        Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_and_cap() {
        let b = Backoff::default();
        let ms = |n| b.ceiling(n).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5), ms(40)],
            [25, 50, 100, 200, 250, 250]
        );
        assert_eq!(
            Backoff::new(Duration::from_secs(1), Duration::ZERO).ceiling(3),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn delays_stay_in_bounds_and_spread_over_them() {
        let b = Backoff::default();
        let mut rng = PickRng::with_seed(3);
        for n in 1..=8 {
            let ceiling = b.ceiling(n);
            let samples: Vec<Duration> = (0..2000).map(|_| b.delay(n, &mut rng)).collect();
            assert!(samples.iter().all(|d| *d < ceiling), "retry {n}");
            let max = samples.iter().max().unwrap();
            let min = samples.iter().min().unwrap();
            assert!(
                *max > ceiling * 9 / 10 && *min < ceiling / 10,
                "retry {n}: {min:?}..{max:?}"
            );
        }
    }

    #[test]
    fn seeded_delays_repeat() {
        let b = Backoff::default();
        let run = |seed| {
            let mut rng = PickRng::with_seed(seed);
            (1..6).map(|n| b.delay(n, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
    }
}
