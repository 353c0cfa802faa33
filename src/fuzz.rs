//! Fuzz harnesses, shared by the cargo-fuzz targets in `fuzz/` and by `cargo test`, which
//! replays the committed corpora and a seeded stream of random inputs on stable.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use crate::balance::{Endpoint, EndpointSet, EndpointTable, weighted_order};

/// Drives an [`EndpointTable`] with arbitrary inserts and removes and checks every snapshot
/// against a `BTreeMap` model, including that old snapshots never change.
///
/// Input: a sequence of 2-byte operations `[op, arg]`: `op % 4 == 3` removes key `arg % 100`,
/// anything else inserts key `arg % 100` with weight `op / 4 % 4 + 1`.
pub fn endpoint_table(data: &[u8]) {
    let mut table: EndpointTable<u8, ()> = EndpointTable::new();
    let mut model: BTreeMap<u8, u32> = BTreeMap::new();
    let mut kept: Vec<(EndpointSet<u8, ()>, BTreeMap<u8, u32>)> = Vec::new();
    for (step, op) in data.chunks_exact(2).enumerate() {
        let key = op[1] % 100;
        if op[0] % 4 == 3 {
            let removed = table.remove(&key).map(|e| *e.key());
            assert_eq!(removed, model.remove(&key).map(|_| key));
        } else {
            let weight = u32::from(op[0] / 4 % 4 + 1);
            let old = table.insert(Endpoint::new(key, (), weight, "fuzz"));
            assert_eq!(old.map(|e| e.weight()), model.insert(key, weight));
        }
        let snapshot = table.snapshot();
        check(&snapshot, &model);
        for (k, w) in &model {
            assert_eq!(table.get(k).map(|e| e.weight()), Some(*w));
        }
        if step % 7 == 0 {
            kept.push((snapshot, model.clone()));
        }
    }
    for (snapshot, model) in &kept {
        check(snapshot, model);
    }
}

fn check(set: &EndpointSet<u8, ()>, model: &BTreeMap<u8, u32>) {
    assert_eq!(set.len(), model.len());
    let mut seen: BTreeMap<u8, u32> = BTreeMap::new();
    for i in 0..set.len() {
        let endpoint = set.get(i).expect("dense index");
        assert!(seen.insert(*endpoint.key(), endpoint.weight()).is_none());
    }
    assert!(set.get(set.len()).is_none());
    assert_eq!(&seen, model);
    let uniform = model
        .values()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        <= 1;
    assert_eq!(set.has_uniform_weights(), uniform);
}

/// Checks [`weighted_order`] on arbitrary weights: one period holds each index exactly
/// `weight / gcd` times.
pub fn weighted_round_robin(data: &[u8]) {
    let weights: Vec<u32> = data
        .iter()
        .take(64)
        .map(|&b| u32::from(b % 50) + 1)
        .collect();
    if weights.is_empty() {
        return;
    }
    let order = weighted_order(&weights);
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    let mut counts = vec![0u32; weights.len()];
    for &i in &order {
        counts[i as usize] += 1;
    }
    for (count, weight) in counts.iter().zip(&weights) {
        assert_eq!(*count, weight / g);
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::SmallRng};

    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut inputs = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                inputs.push(std::fs::read(entry.path()).unwrap());
            }
        }
        assert!(
            !inputs.is_empty(),
            "no committed corpus in {}",
            dir.display()
        );
        inputs
    }

    fn random_inputs(seed: u64, count: usize, max_len: usize) -> Vec<Vec<u8>> {
        let mut rng = SmallRng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                let len = (rng.next_u32() as usize) % max_len;
                (0..len).map(|_| rng.next_u32() as u8).collect()
            })
            .collect()
    }

    #[test]
    fn endpoint_table_corpus() {
        for input in corpus("endpoint_table") {
            endpoint_table(&input);
        }
    }

    #[test]
    fn endpoint_table_random() {
        for input in random_inputs(7, 300, 600) {
            endpoint_table(&input);
        }
    }

    #[test]
    fn weighted_round_robin_corpus_and_random() {
        for input in corpus("weighted_round_robin")
            .into_iter()
            .chain(random_inputs(11, 200, 64))
        {
            weighted_round_robin(&input);
        }
    }
}
