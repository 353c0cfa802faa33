use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tower::discover::Change;

/// A fixed set of endpoints: yields one `Insert` per entry, then ends.
///
/// A balancer keeps the last published set when its discovery stream ends, so a static list
/// stays in rotation for the balancer's lifetime.
///
/// # Examples
///
/// ```
/// use seawall::discover::from_list;
/// use tower::service_fn;
///
/// let discover = from_list([("a", 1), ("b", 2)].map(|(key, n)| {
///     (key, service_fn(move |_: ()| async move { Ok::<_, seawall::BoxError>(n) }))
/// }));
/// # let _ = discover;
/// ```
pub fn from_list<K, S, I>(endpoints: I) -> StaticList<K, S>
where
    I: IntoIterator<Item = (K, S)>,
{
    StaticList {
        pending: endpoints
            .into_iter()
            .map(|(key, service)| Change::Insert(key, service))
            .collect(),
    }
}

/// The stream returned by [`from_list`].
#[derive(Debug)]
pub struct StaticList<K, S> {
    pending: VecDeque<Change<K, S>>,
}

impl<K, S> Unpin for StaticList<K, S> {}

impl<K, S> Stream for StaticList<K, S> {
    type Item = Result<Change<K, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.pending.pop_front().map(Ok))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.pending.len(), Some(self.pending.len()))
    }
}
