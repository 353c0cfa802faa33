//! One clock read per call, however many layers need the time.
//!
//! Reading the clock costs about 24 ns, as much as a whole layer should. The outermost seawall
//! layer of a call reads it once and keeps it here, in a thread-local, while it makes its inner
//! `call`; the layers below it (`call` is synchronous) take that instant instead of reading
//! the clock again. Outside such a call the slot is empty and [`now`] reads the clock. The
//! instant is at most as old as the synchronous descent through the layers' `call`s, which
//! does no I/O; futures never use it: a poll reads the real clock.

use std::cell::Cell;

use tokio::time::Instant;

thread_local! {
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The instant of the call being made on this thread, or the clock's now.
#[inline]
pub(crate) fn now() -> Instant {
    NOW.with(Cell::get).unwrap_or_else(Instant::now)
}

/// Runs `call` with `now` as the time of the call for the layers it reaches, then restores
/// what was there (also when `call` panics).
#[inline]
pub(crate) fn during<T>(now: Instant, call: impl FnOnce() -> T) -> T {
    lend(&NOW, now, call)
}

/// Runs `call` with `value` in the thread-local `slot` for the layers it reaches
/// synchronously, then restores what was there (also when `call` panics): how a layer lends
/// something of its call (the clock's instant, an upstream's deadline) to the layers below.
#[inline]
pub(crate) fn lend<V: Copy + 'static, T>(
    slot: &'static std::thread::LocalKey<Cell<Option<V>>>,
    value: V,
    call: impl FnOnce() -> T,
) -> T {
    struct Restore<V: Copy + 'static> {
        slot: &'static std::thread::LocalKey<Cell<Option<V>>>,
        previous: Option<V>,
    }
    impl<V: Copy + 'static> Drop for Restore<V> {
        fn drop(&mut self) {
            self.slot.with(|slot| slot.set(self.previous));
        }
    }
    let previous = slot.with(|slot| slot.replace(Some(value)));
    let _restore = Restore { slot, previous };
    call()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn layers_inside_a_call_share_its_instant_and_the_slot_empties_after() {
        let outer = Instant::now();
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let seen = during(outer, || {
            let inner = now();
            let nested = during(Instant::now(), now);
            (inner, nested, now())
        });
        assert_eq!(seen.0, outer);
        assert_eq!(seen.2, outer, "restored after a nested call");
        assert!(seen.1 > outer);
        assert_eq!(now(), Instant::now(), "empty outside a call");
    }

    #[test]
    fn a_panicking_call_leaves_the_slot_empty() {
        let _ = std::panic::catch_unwind(|| during(Instant::now(), || panic!("inner call")));
        assert!(NOW.with(Cell::get).is_none());
    }
}
