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
