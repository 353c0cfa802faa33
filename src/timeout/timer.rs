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
    sleep: Option<Pin<Box<Sleep>>>,
}

impl LazyTimer {
    pub(crate) fn new(at: Instant) -> Self {
        Self { at, sleep: None }
    }

    /// Ready once the instant has passed; registers the timer on the first call.
    pub(crate) fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let at = self.at;
        self.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
            .as_mut()
            .poll(cx)
    }
}
