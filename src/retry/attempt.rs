//! Which endpoints this request already tried: a thread-local set only while the retry layer
//! makes its inner `call`.
//!
//! `Balance` picks synchronously inside `call`, so the retry layer can tell it which endpoints
//! to avoid without a request extension, a lock or an allocation on the common path: outside a
//! retry's call the set is absent and the balancer checks one thread-local flag. Layers between
//! the retry and the balancer must call through synchronously (seawall's timeouts and breakers
//! do); behind a `Buffer` the hint is lost and retries are merely re-balanced.

use std::cell::{Cell, RefCell};

thread_local! {
    /// Whether a retry layer is listening, and the endpoint its attempt went to.
    static LISTENING: Cell<Option<Option<usize>>> = const { Cell::new(None) };
    /// The endpoints the current attempt should avoid (empty for a first attempt).
    static AVOID: RefCell<Tried> = const { RefCell::new(Tried::new()) };
}

/// The endpoints a call has tried. The first is kept inline: a call that is never retried
/// (nearly all) records one pick and allocates nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tried {
    first: Option<usize>,
    rest: Vec<usize>,
}

impl Tried {
    pub(crate) const fn new() -> Self {
        Self {
            first: None,
            rest: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn push(&mut self, endpoint: usize) {
        match self.first {
            None => self.first = Some(endpoint),
            Some(_) => self.rest.push(endpoint),
        }
    }

    fn contains(&self, endpoint: usize) -> bool {
        self.first == Some(endpoint) || self.rest.contains(&endpoint)
    }

    #[cfg(test)]
    fn to_vec(&self) -> Vec<usize> {
        self.first.iter().chain(&self.rest).copied().collect()
    }
}

/// Runs `call` with `tried` as the endpoints to avoid, then adds the endpoint it picked.
///
/// A first attempt (nothing to avoid) costs two `Cell` swaps and a look at the list; only a
/// retry (or an attempt nested in one) swaps a list in.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn with_avoided<T>(tried: &mut Tried, call: impl FnOnce() -> T) -> T {
    struct Restore {
        listening: Option<Option<usize>>,
        avoid: Option<Tried>,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            LISTENING.with(|l| l.set(self.listening));
            if let Some(previous) = self.avoid.take() {
                AVOID.with(|a| *a.borrow_mut() = previous);
            }
        }
    }
    let listening = LISTENING.with(|l| l.replace(Some(None)));
    let avoid = (!tried.is_empty() || AVOID.with(|a| !a.borrow().is_empty()))
        .then(|| AVOID.with(|a| std::mem::replace(&mut *a.borrow_mut(), std::mem::take(tried))));
    let restore = Restore { listening, avoid };
    let result = call();
    let picked = LISTENING.with(Cell::get).flatten();
    // Put the list back before `restore` puts the outer one in its place.
    if restore.avoid.is_some() {
        *tried = AVOID.with(|a| std::mem::take(&mut *a.borrow_mut()));
    }
    if let Some(picked) = picked {
        tried.push(picked);
    }
    drop(restore);
    result
}

/// For the balancer: whether a retry asked to avoid `endpoint` (an endpoint's identity).
#[inline]
pub(crate) fn avoids(endpoint: usize) -> bool {
    LISTENING.with(Cell::get).is_some() && AVOID.with(|a| a.borrow().contains(endpoint))
}

/// For the balancer: whether a retry is listening at all (cheap: one thread-local read).
#[inline]
pub(crate) fn active() -> bool {
    LISTENING.with(Cell::get).is_some()
}

/// For the balancer: the endpoint this attempt went to.
pub(crate) fn record_pick(endpoint: usize) {
    LISTENING.with(|l| {
        if l.get().is_some() {
            l.set(Some(Some(endpoint)));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_sees_its_own_list_and_records_its_pick() {
        assert!(!active());
        let mut tried = Tried::new();
        with_avoided(&mut tried, || {
            assert!(active());
            assert!(!avoids(1));
            record_pick(1);
        });
        assert_eq!(tried.to_vec(), [1]);
        assert!(!active(), "nothing listens after the call");
        with_avoided(&mut tried, || {
            assert!(avoids(1));
            assert!(!avoids(2));
            record_pick(2);
        });
        assert_eq!(tried.to_vec(), [1, 2]);
        record_pick(3);
        assert_eq!(
            tried.to_vec(),
            [1, 2],
            "a pick outside an attempt is not recorded"
        );
    }

    #[test]
    fn a_nested_attempt_hides_the_outer_list_and_restores_it() {
        let mut outer = Tried::new();
        outer.push(7);
        with_avoided(&mut outer, || {
            assert!(avoids(7));
            let mut inner = Tried::new();
            with_avoided(&mut inner, || {
                assert!(!avoids(7), "the inner first attempt avoids nothing");
                record_pick(8);
            });
            assert_eq!(inner.to_vec(), [8]);
            assert!(avoids(7), "the outer list is back");
            record_pick(9);
        });
        assert_eq!(outer.to_vec(), [7, 9]);
        assert!(!active());
    }
}
