//! Counting windows that many threads record into without a lock.
//!
//! A time window is a [`PairWindow`] (see [`crate::window`]): one compare-and-swap per record.
//!
//! A count window is a ring of the last N outcomes; a record swaps its slot and moves the
//! running totals by the difference, so totals never drift however records interleave.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

use crate::window::PairWindow;

use super::config::Window;

/// Totals over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

/// One recorded outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) failure: bool,
    pub(crate) slow: bool,
}

#[derive(Debug)]
pub(crate) enum CallWindow {
    Time(TimeWindow),
    Count(CountWindow),
}

impl CallWindow {
    pub(crate) fn new(window: Window) -> Self {
        match window {
            Window::Time { length, buckets } => {
                let buckets = buckets.max(1);
                let width = (length.as_nanos() / u128::from(buckets)).max(1);
                Self::Time(TimeWindow::new(
                    u64::try_from(width).unwrap_or(u64::MAX),
                    buckets,
                ))
            }
            Window::Count { calls } => Self::Count(CountWindow::new(calls.max(1))),
        }
    }

    #[inline]
    pub(crate) fn record(&self, sample: Sample, now_ns: u64) {
        match self {
            Self::Time(w) => w.record(sample, now_ns),
            Self::Count(w) => w.record(sample),
        }
    }

    pub(crate) fn counts(&self, now_ns: u64) -> Counts {
        match self {
            Self::Time(w) => w.counts(now_ns),
            Self::Count(w) => w.counts(),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Self::Time(w) => w.reset(),
            Self::Count(w) => w.reset(),
        }
    }
}

/// Calls and failures, and slow calls, each in a [`PairWindow`].
#[derive(Debug)]
pub(crate) struct TimeWindow {
    calls: PairWindow,
    slow: PairWindow,
}

impl TimeWindow {
    fn new(width_ns: u64, buckets: u32) -> Self {
        Self {
            calls: PairWindow::new(width_ns, buckets),
            slow: PairWindow::new(width_ns, buckets),
        }
    }

    #[inline]
    fn record(&self, sample: Sample, now_ns: u64) {
        self.calls.add(now_ns, 1, u64::from(sample.failure));
        if sample.slow {
            self.slow.add(now_ns, 1, 0);
        }
    }

    fn counts(&self, now_ns: u64) -> Counts {
        let (calls, failures) = self.calls.sum(now_ns);
        let (slow, _) = self.slow.sum(now_ns);
        Counts {
            calls,
            failures,
            slow,
        }
    }

    fn reset(&self) {
        self.calls.reset();
        self.slow.reset();
    }
}

const SLOT_CALL: u8 = 1;
const SLOT_FAILURE: u8 = 2;
const SLOT_SLOW: u8 = 4;

#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    next: AtomicU64,
    calls: AtomicI64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl CountWindow {
    fn new(size: u32) -> Self {
        Self {
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            next: AtomicU64::new(0),
            calls: AtomicI64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    #[inline]
    fn record(&self, sample: Sample) {
        let at = (self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64) as usize;
        let new = SLOT_CALL
            | if sample.failure { SLOT_FAILURE } else { 0 }
            | if sample.slow { SLOT_SLOW } else { 0 };
        // The index from `fetch_add` is ours for this lap of the ring, so when the outcome it
        // evicts is the one it writes (the common case: success over success), there is
        // nothing to change and no need for a read-modify-write.
        let slot = &self.slots[at];
        if slot.load(Ordering::Acquire) == new {
            return;
        }
        let old = slot.swap(new, Ordering::AcqRel);
        let delta = |bit: u8| i64::from(new & bit != 0) - i64::from(old & bit != 0);
        for (total, bit) in [
            (&self.calls, SLOT_CALL),
            (&self.failures, SLOT_FAILURE),
            (&self.slow, SLOT_SLOW),
        ] {
            let d = delta(bit);
            if d != 0 {
                total.fetch_add(d, Ordering::AcqRel);
            }
        }
    }

    fn counts(&self) -> Counts {
        let read = |v: &AtomicI64| v.load(Ordering::Acquire).max(0) as u64;
        Counts {
            calls: read(&self.calls),
            failures: read(&self.failures),
            slow: read(&self.slow),
        }
    }

    fn reset(&self) {
        for slot in self.slots.iter() {
            slot.store(0, Ordering::Release);
        }
        for total in [&self.calls, &self.failures, &self.slow] {
            total.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: u64 = 1_000_000;
    const OK: Sample = Sample {
        failure: false,
        slow: false,
    };
    const FAIL: Sample = Sample {
        failure: true,
        slow: false,
    };

    fn time_window() -> CallWindow {
        CallWindow::new(Window::Time {
            length: Duration::from_secs(10),
            buckets: 10,
        })
    }

    #[test]
    fn buckets_roll_out_one_at_a_time() {
        let w = time_window();
        w.record(FAIL, 0); // bucket 0
        w.record(OK, 500 * MS); // bucket 0
        w.record(FAIL, 5_000 * MS); // bucket 5
        assert_eq!(
            w.counts(9_999 * MS),
            Counts {
                calls: 3,
                failures: 2,
                slow: 0
            }
        );
        // At 10 s bucket 0 has rolled out; bucket 5 stays until 15 s.
        assert_eq!(
            w.counts(10_000 * MS),
            Counts {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
        assert_eq!(
            w.counts(14_999 * MS),
            Counts {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
        assert_eq!(w.counts(15_000 * MS), Counts::default());
    }

    #[test]
    fn a_reused_bucket_starts_afresh() {
        let w = time_window();
        w.record(FAIL, 1_000 * MS);
        w.record(OK, 11_000 * MS); // same slot, ten buckets later
        assert_eq!(
            w.counts(11_000 * MS),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn a_long_idle_window_is_empty_even_when_epochs_alias() {
        let w = CallWindow::new(Window::Time {
            length: Duration::from_millis(10),
            buckets: 10,
        });
        w.record(FAIL, 0);
        // 2^24 buckets later the epoch bits repeat; the last-record guard still says empty.
        assert_eq!(w.counts((1 << 24) * MS), Counts::default());
    }

    #[test]
    fn count_window_keeps_the_last_n() {
        let w = CallWindow::new(Window::Count { calls: 4 });
        for sample in [FAIL, FAIL, OK, OK] {
            w.record(sample, 0);
        }
        assert_eq!(
            w.counts(0),
            Counts {
                calls: 4,
                failures: 2,
                slow: 0
            }
        );
        w.record(OK, 0); // evicts the first failure
        w.record(
            Sample {
                failure: true,
                slow: true,
            },
            0,
        ); // evicts the second
        assert_eq!(
            w.counts(0),
            Counts {
                calls: 4,
                failures: 1,
                slow: 1
            }
        );
        w.reset();
        assert_eq!(w.counts(0), Counts::default());
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let w = std::sync::Arc::new(time_window());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        let sample = if (i + t) % 4 == 0 { FAIL } else { OK };
                        w.record(sample, (i % 1000) * MS);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            w.counts(999 * MS),
            Counts {
                calls: 40_000,
                failures: 10_000,
                slow: 0
            }
        );
    }
}
