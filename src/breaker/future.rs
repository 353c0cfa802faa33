use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project::{pin_project, pinned_drop};
use tokio::time::Instant;

use super::handle::Breaker;
use super::state::{Ending, Permit};
use crate::BoxError;
use crate::classify::Classify;
use crate::error::CircuitOpen;

/// The future of a [`CircuitBreaker`](super::CircuitBreaker) call.
///
/// # Cancellation
///
/// Dropping it before it completes counts as neither success nor failure for an ordinary call,
/// but as a failure for a half-open trial (the circuit opens again), as in Hystrix. A call
/// that a seawall timeout layer above drops because its time ran out counts as a failure: a
/// timeout is the upstream's fault.
#[pin_project(PinnedDrop)]
pub struct ResponseFuture<F, C> {
    #[pin]
    inner: Option<F>,
    admitted: Option<Admitted<C>>,
    rejected: Option<CircuitOpen>,
}

struct Admitted<C> {
    breaker: Breaker,
    classify: C,
    permit: Permit,
    started: Option<Instant>,
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn admitted(
        inner: F,
        breaker: Breaker,
        classify: C,
        permit: Permit,
        started: Option<Instant>,
    ) -> Self {
        Self {
            inner: Some(inner),
            admitted: Some(Admitted {
                breaker,
                classify,
                permit,
                started,
            }),
            rejected: None,
        }
    }

    pub(crate) fn rejected(open: CircuitOpen) -> Self {
        Self {
            inner: None,
            admitted: None,
            rejected: Some(open),
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            let open = this.rejected.take();
            return Poll::Ready(Err(match open {
                Some(open) => open.into(),
                None => "circuit breaker future polled after completion".into(),
            }));
        };
        let result = ready!(inner.poll(cx));
        this.inner.set(None);
        if let Some(admitted) = this.admitted.take() {
            let outcome = admitted.classify.classify(result.as_ref());
            admitted.breaker.record(
                admitted.permit,
                Ending::Classified(outcome),
                admitted.started,
            );
        }
        Poll::Ready(result.map_err(Into::into))
    }
}

#[pinned_drop]
impl<F, C> PinnedDrop for ResponseFuture<F, C> {
    fn drop(self: Pin<&mut Self>) {
        if let Some(admitted) = self.project().admitted.take() {
            admitted
                .breaker
                .record(admitted.permit, Ending::dropped(), admitted.started);
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("admitted", &self.admitted.is_some())
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}
