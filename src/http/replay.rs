//! A request body that can be sent again.
//!
//! Every hyper and tonic request body is a stream that can be read once. [`ReplayBody`] wraps
//! one and keeps what has been read, up to a cap (default 64 KiB), so a clone made for a retry
//! first replays the kept bytes, then goes on reading the original stream if the first attempt
//! had not finished it. Trailers are kept too. Past the cap nothing more is kept and the body
//! is no longer replayable: it is sent once, and a retry layer does not retry it.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;

/// The default replay cap: 64 KiB.
pub const DEFAULT_REPLAY_CAP: usize = 64 * 1024;

/// A body that keeps what it sends, up to a cap (default 64 KiB), so a clone can send it again.
///
/// Every hyper and tonic request body is a stream that can be read once. A clone made for a
/// retry first replays the kept bytes, then goes on reading the original stream if the first
/// attempt had not finished it; trailers are kept too. Past the cap nothing more is kept and
/// the body is no longer replayable ([`is_replayable`](Self::is_replayable)): it is sent once,
/// and another clone fails with [`BodyNotReplayable`].
///
/// # Examples
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use seawall::http::ReplayBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), seawall::BoxError> {
/// let first = ReplayBody::new(Full::new(Bytes::from_static(b"hello")));
/// let again = first.clone();
/// assert_eq!(first.collect().await?.to_bytes(), "hello");
/// assert_eq!(again.collect().await?.to_bytes(), "hello"); // replayed
/// # Ok(())
/// # }
/// ```
pub struct ReplayBody<B> {
    /// `None` for a body that was empty from the start: nothing to keep, nothing to share.
    shared: Option<Arc<Mutex<Shared<B>>>>,
    /// How many kept chunks this clone has sent.
    position: usize,
    /// Whether this clone has sent the trailers (or the end).
    finished: bool,
    /// Whether this clone read past the cap: it alone may go on reading the stream.
    past_cap: bool,
}

struct Shared<B> {
    /// The original stream, until it ends.
    source: Option<Pin<Box<B>>>,
    kept: Vec<Bytes>,
    kept_len: usize,
    cap: usize,
    over_cap: bool,
    /// Whether a reader has claimed the stream past the cap (only one may).
    claimed: bool,
    trailers: Option<HeaderMap>,
    ended: bool,
    hint: SizeHint,
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body`, keeping up to [`DEFAULT_REPLAY_CAP`] bytes.
    pub fn new(body: B) -> Self {
        Self::with_cap(body, DEFAULT_REPLAY_CAP)
    }

    /// Wraps `body`, keeping up to `cap` bytes. A body whose size hint already says it is
    /// larger is not replayable from the start.
    pub fn with_cap(body: B, cap: usize) -> Self {
        if body.is_end_stream() {
            return Self {
                shared: None,
                position: 0,
                finished: true,
                past_cap: false,
            };
        }
        let hint = body.size_hint();
        let over_cap = hint.lower() > cap as u64;
        Self {
            shared: Some(Arc::new(Mutex::new(Shared {
                ended: body.is_end_stream(),
                source: Some(Box::pin(body)),
                kept: Vec::new(),
                kept_len: 0,
                cap,
                over_cap,
                claimed: false,
                trailers: None,
                hint,
            }))),
            position: 0,
            finished: false,
            past_cap: false,
        }
    }
}

impl<B> ReplayBody<B> {
    fn lock(&self) -> Option<MutexGuard<'_, Shared<B>>> {
        // The state is consistent after every statement; a panic in a body impl leaves it usable.
        let shared = self.shared.as_ref()?;
        Some(shared.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether a fresh clone could still send the whole body: nothing past the cap was read.
    pub fn is_replayable(&self) -> bool {
        self.lock().is_none_or(|shared| !shared.over_cap)
    }

    /// True when the whole body is known and kept (or there is none): a copy can be sent now,
    /// beside an attempt still in flight, as a hedge is.
    pub fn is_complete(&self) -> bool {
        self.lock()
            .is_none_or(|shared| shared.ended && !shared.over_cap && shared.source.is_none())
    }
}

impl<B> Clone for ReplayBody<B> {
    /// A body that starts again from the beginning.
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            position: 0,
            finished: self.shared.is_none(),
            past_cap: false,
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(shared) = self.lock() else {
            return f.debug_struct("ReplayBody").field("empty", &true).finish();
        };
        f.debug_struct("ReplayBody")
            .field("kept", &shared.kept_len)
            .field("cap", &shared.cap)
            .field("replayable", &!shared.over_cap)
            .finish_non_exhaustive()
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        let Some(shared) = this.shared.as_ref() else {
            this.finished = true;
            return Poll::Ready(None);
        };
        let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
        if shared.over_cap && !this.past_cap {
            if shared.claimed {
                this.finished = true;
                return Poll::Ready(Some(Err(BodyNotReplayable { cap: shared.cap }.into())));
            }
            // Known to be too large from its size hint: the first reader sends it, once.
            shared.claimed = true;
            this.past_cap = true;
        }
        // First, what was kept.
        if !this.past_cap {
            if let Some(chunk) = shared.kept.get(this.position) {
                this.position += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
            }
        }
        // Then the rest of the original stream.
        if shared.ended {
            this.finished = true;
            return Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        let Some(source) = shared.source.as_mut() else {
            this.finished = true;
            return Poll::Ready(None);
        };
        let frame = match source.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                shared.source = None;
                this.finished = true;
                return Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))));
            }
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(mut data) => {
                let chunk = data.copy_to_bytes(data.remaining());
                if !this.past_cap && shared.kept_len + chunk.len() <= shared.cap {
                    shared.kept_len += chunk.len();
                    shared.kept.push(chunk.clone());
                    this.position = shared.kept.len();
                } else if !this.past_cap {
                    // Past the cap: keep nothing more; only this reader can go on.
                    shared.over_cap = true;
                    shared.claimed = true;
                    shared.kept = Vec::new();
                    this.past_cap = true;
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    shared.trailers = Some(trailers.clone());
                    shared.ended = true;
                    shared.source = None;
                    this.finished = true;
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                // A frame of a kind this body does not know: skip it and read on.
                Err(_) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.finished {
            return true;
        }
        let Some(shared) = self.lock() else {
            return true;
        };
        !self.past_cap
            && shared.ended
            && self.position >= shared.kept.len()
            && shared.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let Some(shared) = self.lock() else {
            return SizeHint::with_exact(0);
        };
        if shared.ended && !shared.over_cap {
            return SizeHint::with_exact(shared.kept_len as u64);
        }
        shared.hint
    }
}

/// A body could not be sent again: more than the replay cap had already been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyNotReplayable {
    cap: usize,
}

impl BodyNotReplayable {
    /// The replay cap, in bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

impl fmt::Display for BodyNotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request body is larger than the {} byte replay cap, so it was sent once and not \
             retried; raise the cap or make the request smaller",
            self.cap
        )
    }
}

impl std::error::Error for BodyNotReplayable {}
