//! Counting windows that many threads record into without a lock.
//!
//! A time window keeps each bucket's epoch and counts in one `AtomicU64`, so recording is a
//! single compare-and-swap and a bucket that rolls over is reset and counted in the same step:
//! no count is lost or carried into the wrong bucket. The price is a cap of about a million
//! calls per bucket (counts saturate) and 24-bit epochs, guarded by the time of the last
//! record so that a long-idle window reads as empty.
//!
//! A count window is a ring of the last N outcomes; a record swaps its slot and moves the
//! running totals by the difference, so totals never drift however records interleave.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

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

const EPOCH_BITS: u32 = 24;
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;

/// `epoch:24 | a:20 | b:20` in one word.
fn pack(epoch: u64, a: u64, b: u64) -> u64 {
    ((epoch & EPOCH_MASK) << (2 * COUNT_BITS)) | (a.min(COUNT_MAX) << COUNT_BITS) | b.min(COUNT_MAX)
}

fn unpack(word: u64) -> (u64, u64, u64) {
    (
        word >> (2 * COUNT_BITS),
        (word >> COUNT_BITS) & COUNT_MAX,
        word & COUNT_MAX,
    )
}

/// Adds `(da, db)` to a packed bucket for `epoch`, starting it afresh if it held another epoch.
fn add(word: &AtomicU64, epoch: u64, da: u64, db: u64) {
    let mut current = word.load(Ordering::Relaxed);
    loop {
        let (e, a, b) = unpack(current);
        let next = if e == epoch & EPOCH_MASK {
            pack(epoch, a + da, b + db)
        } else {
            pack(epoch, da, db)
        };
        match word.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => current = seen,
        }
    }
}

#[derive(Debug)]
pub(crate) struct TimeWindow {
    width_ns: u64,
    /// `epoch | calls | failures` per bucket.
    calls: Box<[AtomicU64]>,
    /// `epoch | slow | 0` per bucket.
    slow: Box<[AtomicU64]>,
    /// The bucket number of the last record, plus one (0: never recorded).
    last: AtomicU64,
}

impl TimeWindow {
    fn new(width_ns: u64, buckets: u32) -> Self {
        let make = || (0..buckets).map(|_| AtomicU64::new(0)).collect();
        Self {
            width_ns,
            calls: make(),
            slow: make(),
            last: AtomicU64::new(0),
        }
    }

    fn record(&self, sample: Sample, now_ns: u64) {
        let bucket = now_ns / self.width_ns;
        let slot = (bucket % self.calls.len() as u64) as usize;
        add(&self.calls[slot], bucket, 1, u64::from(sample.failure));
        if sample.slow {
            add(&self.slow[slot], bucket, 1, 0);
        }
        // Most records land in the bucket already stamped: a load, no read-modify-write.
        if self.last.load(Ordering::Relaxed) < bucket + 1 {
            self.last.fetch_max(bucket + 1, Ordering::AcqRel);
        }
    }

    fn counts(&self, now_ns: u64) -> Counts {
        let bucket = now_ns / self.width_ns;
        let n = self.calls.len() as u64;
        let last = self.last.load(Ordering::Acquire);
        if last == 0 || bucket.saturating_sub(last - 1) >= n {
            return Counts::default(); // nothing recorded within the window
        }
        // A bucket counts if its epoch is one of the last n bucket numbers.
        let live = |epoch: u64| (bucket.wrapping_sub(epoch) & EPOCH_MASK) < n;
        let mut counts = Counts::default();
        for (calls, slow) in self.calls.iter().zip(self.slow.iter()) {
            let (e, c, f) = unpack(calls.load(Ordering::Acquire));
            if (c > 0) && live(e) {
                counts.calls += c;
                counts.failures += f;
            }
            let (e, s, _) = unpack(slow.load(Ordering::Acquire));
            if (s > 0) && live(e) {
                counts.slow += s;
            }
        }
        counts
    }

    fn reset(&self) {
        for word in self.calls.iter().chain(self.slow.iter()) {
            word.store(0, Ordering::Release);
        }
        self.last.store(0, Ordering::Release);
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
    fn counts_saturate_instead_of_overflowing() {
        let word = AtomicU64::new(0);
        for _ in 0..3 {
            add(&word, 7, COUNT_MAX, COUNT_MAX);
        }
        assert_eq!(
            unpack(word.load(Ordering::Relaxed)),
            (7, COUNT_MAX, COUNT_MAX)
        );
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
