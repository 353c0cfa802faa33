//! Tells the layers below a timeout that the call they are dropping ran out of time.
//!
//! A timeout layer ends a call by dropping its inner future. To everything below, that looks
//! like a caller that lost interest, which is rightly not held against the endpoint. But a
//! call that ran out of time is the endpoint's failure: a breaker that never sees the
//! timeouts of a hung instance never opens, and a round-robin balancer keeps feeding it.
//!
//! So the timeout layers drop an expired call inside [`dropping_expired`], and the futures
//! below (the balancer's, the breakers') ask [`is_expiring`] in their `Drop` to record a
//! failure instead of a cancellation. Drops run synchronously on the dropping thread, so a
//! thread-local flag carries the reason without a lock, an allocation or any cost on the
//! success path.

use std::cell::Cell;

thread_local! {
    static EXPIRING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `drop_it` (which drops an expired call) with the flag set; restores it afterwards,
/// even if a destructor panics.
pub(crate) fn dropping_expired<T>(drop_it: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            EXPIRING.with(|flag| flag.set(self.0));
        }
    }
    let _restore = Restore(EXPIRING.with(|flag| flag.replace(true)));
    drop_it()
}

/// Whether the future being dropped now is dropped because its time ran out.
#[inline]
pub(crate) fn is_expiring() -> bool {
    EXPIRING.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_set_only_inside_and_nests() {
        assert!(!is_expiring());
        dropping_expired(|| {
            assert!(is_expiring());
            dropping_expired(|| assert!(is_expiring()));
            assert!(is_expiring());
        });
        assert!(!is_expiring());
    }
}
