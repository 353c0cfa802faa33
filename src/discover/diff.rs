//! The one diff every snapshot-taking source uses (polling, etcd lists, DNS answers).

use std::collections::HashMap;
use std::hash::Hash;

use tower::discover::Change;

/// The changes that turn `known` into `next`, with `known` updated to `next`: an insert for
/// every key that is new or whose value changed, then a removal for every key that is gone.
/// Inserts come first, so a set that is replaced whole never looks empty in between.
pub(crate) fn changes<K, V>(known: &mut HashMap<K, V>, next: HashMap<K, V>) -> Vec<Change<K, V>>
where
    K: Hash + Eq + Clone,
    V: PartialEq + Clone,
{
    let mut changes = Vec::new();
    for (key, value) in &next {
        if known.get(key) != Some(value) {
            changes.push(Change::Insert(key.clone(), value.clone()));
        }
    }
    for key in known.keys() {
        if !next.contains_key(key) {
            changes.push(Change::Remove(key.clone()));
        }
    }
    *known = next;
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_differences_are_emitted_inserts_first() {
        let mut known = HashMap::from([("a", 1), ("b", 2), ("c", 3)]);
        let changes = changes(&mut known, HashMap::from([("a", 1), ("b", 20), ("d", 4)]));
        let described: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::Insert(k, v) => format!("+{k}{v}"),
                Change::Remove(k) => format!("-{k}"),
            })
            .collect();
        let (inserts, removes) = described.split_at(2);
        let mut inserts = inserts.to_vec();
        inserts.sort();
        assert_eq!(inserts, ["+b20", "+d4"]);
        assert_eq!(removes, ["-c"]);
        assert_eq!(known, HashMap::from([("a", 1), ("b", 20), ("d", 4)]));
        assert!(
            super::changes(&mut known, HashMap::from([("a", 1), ("b", 20), ("d", 4)])).is_empty()
        );
    }
}
