//! A pair of counters over a sliding time window, recorded into from many threads without a
//! lock.
//!
//! Each bucket keeps its epoch and both counts in one `AtomicU64` (`epoch:24 | a:20 | b:20`),
//! so recording is a single compare-and-swap, and a bucket that rolls over is reset and counted
//! in the same step: no count is lost or carried into the wrong bucket. The price is a cap of
//! about a million per bucket (counts saturate) and 24-bit epochs, guarded by the bucket of
//! the last record so that a long-idle window reads as empty. Used by the circuit breaker's
//! time window (calls, failures) and the retry budget (requests, retries).

use std::sync::atomic::{AtomicU64, Ordering};

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

/// Two counters summed over the last `buckets` buckets of `width_ns` each.
#[derive(Debug)]
pub(crate) struct PairWindow {
    width_ns: u64,
    words: Box<[AtomicU64]>,
    /// The bucket number of the last record, plus one (0: never recorded).
    last: AtomicU64,
}

impl PairWindow {
    pub(crate) fn new(width_ns: u64, buckets: u32) -> Self {
        Self {
            width_ns: width_ns.max(1),
            words: (0..buckets.max(1)).map(|_| AtomicU64::new(0)).collect(),
            last: AtomicU64::new(0),
        }
    }

    /// Adds `(da, db)` to the bucket of `now_ns`.
    #[inline]
    pub(crate) fn add(&self, now_ns: u64, da: u64, db: u64) {
        let bucket = now_ns / self.width_ns;
        let slot = (bucket % self.words.len() as u64) as usize;
        add(&self.words[slot], bucket, da, db);
        // Most records land in the bucket already stamped: a load, no read-modify-write.
        if self.last.load(Ordering::Relaxed) < bucket + 1 {
            self.last.fetch_max(bucket + 1, Ordering::AcqRel);
        }
    }

    /// Both sums over the window that ends in the bucket of `now_ns`.
    pub(crate) fn sum(&self, now_ns: u64) -> (u64, u64) {
        let bucket = now_ns / self.width_ns;
        let n = self.words.len() as u64;
        let last = self.last.load(Ordering::Acquire);
        if last == 0 || bucket.saturating_sub(last - 1) >= n {
            return (0, 0); // nothing recorded within the window
        }
        // A bucket counts if its epoch is one of the last n bucket numbers.
        let live = |epoch: u64| (bucket.wrapping_sub(epoch) & EPOCH_MASK) < n;
        let (mut a, mut b) = (0, 0);
        for word in self.words.iter() {
            let (e, x, y) = unpack(word.load(Ordering::Acquire));
            if (x > 0 || y > 0) && live(e) {
                a += x;
                b += y;
            }
        }
        (a, b)
    }

    pub(crate) fn reset(&self) {
        for word in self.words.iter() {
            word.store(0, Ordering::Release);
        }
        self.last.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn sums_over_the_last_buckets() {
        let w = PairWindow::new(10, 3);
        w.add(0, 1, 0);
        w.add(15, 2, 1);
        w.add(25, 4, 0);
        assert_eq!(w.sum(29), (7, 1));
        assert_eq!(w.sum(30), (6, 1), "bucket 0 rolled out");
        assert_eq!(w.sum(59), (0, 0));
    }
}
