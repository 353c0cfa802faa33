//! A timer that costs nothing until it is needed.
//!
//! Most calls finish on their first poll; building a tokio `Sleep` for them (a runtime-handle
//! lookup and a timer entry) would be wasted. `LazyTimer` holds only the instant and creates
//! the `Sleep` the first time the guarded call is still pending. The `Sleep` is boxed: inline
//! it is over a hundred bytes that every future above it would move at each layer boundary,
//! while a call that waits long enough to need it also pays for registering it in tokio's
//! timer wheel, beside which the allocation is small.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub(crate) struct LazyTimer {
    at: Instant,
    /// An earlier instant to wake the task at first, for a layer above (see
    /// `timeout::wake_at`); the timer then goes on to `at`.
    early: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl LazyTimer {
    pub(crate) fn new(at: Instant) -> Self {
        Self {
            at,
            early: None,
            sleep: None,
        }
    }

    /// A timer for `at` that first wakes the task at the instant a layer above offered, if
    /// it offered one earlier than `at`.
    pub(crate) fn waking_early(at: Instant) -> Self {
        Self {
            at,
            early: super::take_wake(at),
            sleep: None,
        }
    }

    pub(crate) fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let first = self.early.unwrap_or(self.at);
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(first)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if self.early.take().is_some() {
            // The layer above learns that its instant has come, and this timer goes on.
            super::WOKE.with(|woke| woke.set(true));
            sleep.as_mut().reset(self.at);
            return sleep.as_mut().poll(cx);
        }
        Poll::Ready(())
    }
}
