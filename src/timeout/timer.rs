//! A timer that costs nothing until it is needed.
//!
//! Most calls finish on their first poll; building a tokio `Sleep` for them (a runtime-handle
//! lookup and a timer entry) would be wasted. `LazyTimer` holds only the instant and creates
//! the `Sleep` the first time the guarded call is still pending.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project::pin_project;
use tokio::time::{Instant, Sleep};

#[pin_project]
#[derive(Debug)]
pub(crate) struct LazyTimer {
    at: Instant,
    #[pin]
    sleep: Option<Sleep>,
}

impl LazyTimer {
    pub(crate) fn new(at: Instant) -> Self {
        Self { at, sleep: None }
    }

    /// Ready once the instant has passed; registers the timer on the first call.
    pub(crate) fn poll_elapsed(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until(*this.at)));
        }
        match this.sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx),
            None => Poll::Ready(()),
        }
    }
}
