//! Which endpoints this request already tried: a thread-local set only while the retry layer
//! makes its inner `call`.
//!
//! `Balance` picks synchronously inside `call`, so the retry layer can tell it which endpoints
//! to avoid without a request extension, a lock or an allocation on the common path: outside a
//! retry's call the set is absent and the balancer checks one thread-local flag. Layers between
//! the retry and the balancer must call through synchronously (seawall's timeouts and breakers
//! do); behind a `Buffer` the hint is lost and retries are merely re-balanced.

use std::cell::RefCell;

thread_local! {
    static ATTEMPT: RefCell<Option<Attempt>> = const { RefCell::new(None) };
}

#[derive(Debug, Default)]
struct Attempt {
    avoid: Vec<usize>,
    picked: Option<usize>,
}

/// Runs `call` with `tried` as the endpoints to avoid, then adds the endpoint it picked.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn with_avoided<T>(tried: &mut Vec<usize>, call: impl FnOnce() -> T) -> T {
    let previous = ATTEMPT.with(|a| {
        a.borrow_mut().replace(Attempt {
            avoid: std::mem::take(tried),
            picked: None,
        })
    });
    let result = call();
    let attempt = ATTEMPT.with(|a| std::mem::replace(&mut *a.borrow_mut(), previous));
    if let Some(attempt) = attempt {
        *tried = attempt.avoid;
        if let Some(picked) = attempt.picked {
            tried.push(picked);
        }
    }
    result
}

/// For the balancer: whether a retry asked to avoid `endpoint` (an endpoint's identity).
#[inline]
pub(crate) fn avoids(endpoint: usize) -> bool {
    ATTEMPT.with(|a| {
        a.borrow()
            .as_ref()
            .is_some_and(|attempt| attempt.avoid.contains(&endpoint))
    })
}

/// For the balancer: whether a retry is listening at all (cheap: one thread-local read).
#[inline]
pub(crate) fn active() -> bool {
    ATTEMPT.with(|a| a.borrow().is_some())
}

/// For the balancer: the endpoint this attempt went to.
pub(crate) fn record_pick(endpoint: usize) {
    ATTEMPT.with(|a| {
        if let Some(attempt) = a.borrow_mut().as_mut() {
            attempt.picked = Some(endpoint);
        }
    });
}
