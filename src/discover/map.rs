use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use tower::discover::Change;

/// Adapters for discovery streams.
pub trait DiscoverExt<K, V, E>: Stream<Item = Result<Change<K, V>, E>> + Sized {
    /// Turns every discovered value into a service with `f`; removals pass through.
    ///
    /// # Examples
    ///
    /// ```
    /// use seawall::discover::{DiscoverExt, Instance, Registry};
    /// use tower::service_fn;
    ///
    /// let registry = Registry::new();
    /// let discover = registry.watch("users").map_service(|instance: Instance| {
    ///     let addr = instance.addr();
    ///     service_fn(move |_: ()| async move { Ok::<_, seawall::BoxError>(addr) })
    /// });
    /// # let _ = discover;
    /// ```
    fn map_service<F, S>(self, f: F) -> MapService<Self, F>
    where
        F: FnMut(V) -> S,
    {
        MapService { inner: self, f }
    }
}

impl<K, V, E, D> DiscoverExt<K, V, E> for D where D: Stream<Item = Result<Change<K, V>, E>> {}

/// The stream returned by [`DiscoverExt::map_service`].
#[pin_project::pin_project]
#[derive(Debug, Clone)]
pub struct MapService<D, F> {
    #[pin]
    inner: D,
    f: F,
}

impl<D, F, K, V, E, S> Stream for MapService<D, F>
where
    D: Stream<Item = Result<Change<K, V>, E>>,
    F: FnMut(V) -> S,
{
    type Item = Result<Change<K, S>, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let next = ready!(this.inner.poll_next(cx));
        Poll::Ready(next.map(|item| {
            item.map(|change| match change {
                Change::Insert(key, value) => Change::Insert(key, (this.f)(value)),
                Change::Remove(key) => Change::Remove(key),
            })
        }))
    }
}
