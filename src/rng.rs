//! Seeding for the crate's small, fast random number generators.
//!
//! Every randomised component takes an explicit seed in its `with_seed` twin so tests are
//! deterministic; the default constructors draw a seed from the standard library's per-process
//! random hash keys, which avoids a dependency on an OS entropy crate.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use rand::SeedableRng;
use rand::rngs::SmallRng;

/// A fresh, unpredictable 64-bit seed.
pub(crate) fn random_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// A small generator from a seed.
pub(crate) fn small_rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

/// Hands every clone of a shared component its own generator: the n-th seed is a hash of the
/// base seed and n, so a seeded component is reproducible clone by clone and clones never
/// share a stream.
#[derive(Debug)]
pub(crate) struct SeedSequence {
    base: u64,
    next: AtomicU64,
}

impl SeedSequence {
    /// A sequence from `base`, or from a random base when `None`.
    pub(crate) fn new(base: Option<u64>) -> Self {
        Self {
            base: base.unwrap_or_else(random_seed),
            next: AtomicU64::new(0),
        }
    }

    /// The next seed.
    pub(crate) fn next_seed(&self) -> u64 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        splitmix(self.base ^ splitmix(n))
    }
}

/// SplitMix64's finaliser: spreads nearby inputs over the whole range.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
