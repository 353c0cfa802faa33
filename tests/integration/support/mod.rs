//! Test doubles shared by the integration tests.
#![allow(unsafe_code)] // only the counting allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_core::Stream;
use seawall::BoxError;
use seawall::discover::Change;
use tokio::sync::{Notify, mpsc};
use tower::Service;

// ---------------------------------------------------------------------------------------------
// A discovery stream driven by the test.

pub type ChangeResult<K, S> = Result<Change<K, S>, BoxError>;

/// A discovery stream fed through a channel; sets `dropped` when the balancer drops it.
pub struct ChannelDiscover<K, S> {
    rx: mpsc::UnboundedReceiver<ChangeResult<K, S>>,
    pub dropped: Arc<AtomicBool>,
    /// How many items the balancer has taken from the stream.
    pub consumed: Arc<AtomicUsize>,
    /// How many times the balancer has polled the stream.
    pub polls: Arc<AtomicUsize>,
}

pub fn channel<K, S>() -> (
    mpsc::UnboundedSender<ChangeResult<K, S>>,
    ChannelDiscover<K, S>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        tx,
        ChannelDiscover {
            rx,
            dropped: Arc::new(AtomicBool::new(false)),
            consumed: Arc::new(AtomicUsize::new(0)),
            polls: Arc::new(AtomicUsize::new(0)),
        },
    )
}

impl<K, S> Stream for ChannelDiscover<K, S> {
    type Item = ChangeResult<K, S>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        let item = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(_)) = item {
            self.consumed.fetch_add(1, Ordering::SeqCst);
        }
        item
    }
}

impl<K, S> Unpin for ChannelDiscover<K, S> {}

impl<K, S> Drop for ChannelDiscover<K, S> {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// Waits (bounded: 10 s of real or paused time) until `check` holds.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for: {what}");
}

// ---------------------------------------------------------------------------------------------
// Endpoint services.

/// Answers with its name and counts its calls.
#[derive(Clone)]
pub struct Named {
    pub name: &'static str,
    pub calls: Arc<AtomicUsize>,
}

impl Named {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Service<()> for Named {
    type Response = &'static str;
    type Error = Infallible;
    type Future = std::future::Ready<Result<&'static str, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(self.name))
    }
}

/// A switch the test flips: readiness or completion waits for it.
#[derive(Clone, Default)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Default)]
struct GateInner {
    open: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
    notify: Notify,
}

impl Gate {
    pub fn open(&self) {
        self.inner.open.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
        for waker in self.inner.wakers.lock().unwrap().drain(..) {
            waker.wake();
        }
    }

    pub fn is_open(&self) -> bool {
        self.inner.open.load(Ordering::SeqCst)
    }

    fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_open() {
            return Poll::Ready(());
        }
        self.inner.wakers.lock().unwrap().push(cx.waker().clone());
        if self.is_open() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub async fn wait(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if self.is_open() {
                return;
            }
            notified.await;
        }
    }
}

/// Not ready until `ready` opens; each call then completes when `done` opens.
#[derive(Clone)]
pub struct Gated {
    pub name: &'static str,
    pub ready: Gate,
    pub done: Gate,
    pub calls: Arc<AtomicUsize>,
}

impl Gated {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            ready: Gate::default(),
            done: Gate::default(),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Service<()> for Gated {
    type Response = &'static str;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<&'static str, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.ready.poll_open(cx).map(Ok)
    }

    fn call(&mut self, _: ()) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let done = self.done.clone();
        let name = self.name;
        Box::pin(async move {
            done.wait().await;
            Ok(name)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Allocation counting, per thread, so parallel tests do not disturb each other.

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

pub struct CountingAllocator;

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Heap allocations made by this thread while `f` runs.
pub fn allocations<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATIONS.with(Cell::get);
    let value = f();
    (value, ALLOCATIONS.with(Cell::get) - before)
}

/// Answers with its name, or fails while `failing` is set; counts its calls.
#[derive(Clone)]
pub struct Flaky {
    pub name: &'static str,
    pub failing: Arc<AtomicBool>,
    pub calls: Arc<AtomicUsize>,
}

impl Flaky {
    pub fn new(name: &'static str, failing: bool) -> Self {
        Self {
            name,
            failing: Arc::new(AtomicBool::new(failing)),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

impl Service<()> for Flaky {
    type Response = &'static str;
    type Error = BoxError;
    type Future = std::future::Ready<Result<&'static str, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            std::future::ready(Err(format!("{} failed", self.name).into()))
        } else {
            std::future::ready(Ok(self.name))
        }
    }
}

/// A loopback HTTP server that answers every request with `status` and counts requests.
#[cfg(feature = "http")]
pub async fn status_server(status: u16, count: Arc<AtomicUsize>) -> std::net::SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        count.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let _ = req.into_body().collect().await;
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(bytes::Bytes::new()))
                        }
                    });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
