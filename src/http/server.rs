//! The server side of HTTP/1.1 for a proxy: one connection, its service run inline.
//!
//! hyper's server connection is general (upgrades, every body kind, its own timers) and feeds
//! a request body to the service through a channel from the connection. [`Http1Server`] does
//! less: it reads a request head, calls the service in the connection's own task, writes the
//! response head and what its body has ready in one write, and hands the service a
//! [`RequestBody`] that reads straight from the connection.

use std::fmt;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, DATE};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::BodyError;
use super::h1::{
    Chunk, Fields, MAX_HEAD, MAX_HEADERS, READ_CHUNK, Step, WRITE_CHUNK, parse_error, poll_fill,
    put_fields, put_length, says_close, step_chunked, write_chunk_size,
};
use crate::BoxError;

/// Bytes of an unread request body discarded before a connection that will not be reused
/// is closed (so the client reads the response instead of a reset).
const LINGER_CAP: usize = 1024 * 1024;

/// Serves HTTP/1.1 on accepted connections, running the service inline in each
/// connection's task.
///
/// Each request's head is read, the service is called with a
/// [`Request<RequestBody>`](RequestBody), and its response is written as the body produces
/// it: with its `content-length` (declared, or the body's exact size), else chunked (or
/// until close, for an HTTP/1.0 client). Nothing is spawned and nothing is handed to another
/// task per request. Connections are kept alive between requests as HTTP/1.1 says, and
/// pipelined requests are answered in order.
///
/// What it refuses, with the status it answers before closing: a malformed head 400, a head
/// over 64 KiB or with over 100 fields 431, an HTTP/1.1 request without `Host` 400, a body
/// framed by both `transfer-encoding` and `content-length` (or by a transfer coding other than
/// `chunked`) 400 — the framings proxies are smuggled through. A service that fails
/// gets 500, one that is not ready 503. Upgrades (`CONNECT`, WebSocket) are not supported:
/// the service sees them as plain requests.
///
/// Why not hyper's server: it is general (upgrades, every body kind, its own timers) and feeds
/// the request body to the service through a channel from the connection. In the example
/// gateway, serving with this instead cut a tenth of a proxied request's instructions and
/// raised its throughput by about 7 % (pinned `wrk`, side by side). Use hyper where you need
/// what it adds (HTTP/2, upgrades, TLS through its ecosystem).
///
/// # Examples
///
/// ```no_run
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http_body_util::Full;
/// use seawall::http::{Http1Server, RequestBody};
///
/// # async fn run() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let server = Http1Server::new().header_read_timeout(Duration::from_secs(5));
/// loop {
///     let (stream, _peer) = listener.accept().await?;
///     let _ = stream.set_nodelay(true);
///     let service = tower::service_fn(|request: http::Request<RequestBody>| async move {
///         let text = format!("you asked for {}\n", request.uri().path());
///         Ok::<_, Infallible>(http::Response::new(Full::new(bytes::Bytes::from(text))))
///     });
///     tokio::spawn(server.serve(stream, service));
/// }
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Http1Server {
    header_read_timeout: Option<Duration>,
}

impl Http1Server {
    /// A server with no header-read timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Closes a connection that has waited this long for a request head to be complete —
    /// from its opening, or from its last response (an idle kept-alive connection is closed
    /// after it too). One coarse timer per connection checks every half of it, so a late head
    /// is cut between 1 and 1.5 times `timeout`; a request being answered is never cut.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = Some(timeout);
        self
    }

    /// Serves `io` with `service` until the client closes, a response says `close`, or
    /// [`Connection::graceful_shutdown`] is called.
    pub fn serve<S, B>(&self, io: TcpStream, service: S) -> Connection<S, B>
    where
        S: Service<Request<RequestBody>, Response = Response<B>>,
    {
        let (read, write) = io.into_split();
        let period = self.header_read_timeout.map(|t| t / 2);
        Connection {
            service,
            state: State::Head,
            reader: Some(Reader {
                io: read,
                read: BytesMut::with_capacity(READ_CHUNK),
                read_chunk: READ_CHUNK,
                spans: Vec::new(),
            }),
            writer: Some(write),
            write: Vec::with_capacity(1024),
            written: 0,
            current: Current::default(),
            pending: None,
            body: None,
            watch: period.map(|period| Watch {
                timer: Box::pin(tokio::time::sleep(period)),
                armed: None,
                period,
                seen: 0,
                idle_checks: 0,
            }),
            requests: 0,
            shutting_down: false,
        }
    }
}

/// One client connection being served (see [`Http1Server::serve`]); resolves when it is
/// closed.
#[pin_project]
pub struct Connection<S, B>
where
    S: Service<Request<RequestBody>>,
{
    service: S,
    #[pin]
    state: State<S::Future, B>,
    /// The read side; a request body holds it while the body is being read.
    reader: Option<Reader>,
    /// `None` once the connection is closing (dropping it sends FIN).
    writer: Option<OwnedWriteHalf>,
    write: Vec<u8>,
    written: usize,
    current: Current,
    /// The request read, until the service is ready for it.
    pending: Option<Request<RequestBody>>,
    /// The request body handed to the service, if the request has one.
    body: Option<Arc<Mutex<BodyState>>>,
    watch: Option<Watch>,
    /// Request heads read so far.
    requests: u64,
    shutting_down: bool,
}

impl<S, B> fmt::Debug for Connection<S, B>
where
    S: Service<Request<RequestBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("requests", &self.requests)
            .field("shutting_down", &self.shutting_down)
            .finish_non_exhaustive()
    }
}

#[pin_project(project = StateProj)]
enum State<F, B> {
    /// Reading a request head.
    Head,
    /// `pending` waits for the service to be ready.
    Ready,
    Call(#[pin] F),
    /// Writing the response; `body` is `None` once it has ended. A body that broke off
    /// still gets what it gave before written, then the connection closes with `broken`.
    Send {
        #[pin]
        body: Option<B>,
        out: Out,
        broken: Option<BoxError>,
    },
    /// Writing what `write` holds (the connection's own refusal), then closing with the
    /// reason.
    Flush(Option<ServeErrorKind>),
    /// Closing: reading what the client still sends so that it reads the response rather
    /// than a reset.
    Linger(usize),
    Done,
}

/// What the connection needs to know of the request being answered.
#[derive(Debug, Default, Clone, Copy)]
struct Current {
    http10: bool,
    head: bool,
    /// The client asked to close after this response (or, HTTP/1.0, did not ask to keep).
    close: bool,
}

/// How the response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// Nothing (HEAD, 204, 304), or no more.
    Nothing,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 client, length unknown).
    Close,
}

struct Reader {
    io: OwnedReadHalf,
    read: BytesMut,
    read_chunk: usize,
    /// Where each field of the last head lies: name start and end, value start and end.
    spans: Vec<(usize, usize, usize, usize)>,
}

impl Reader {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.io, &mut self.read, &mut self.read_chunk, cx)
    }
}

/// The header-read timeout's one timer.
struct Watch {
    timer: Pin<Box<Sleep>>,
    /// The waker the timer was last polled with: while the task's waker stays the same and
    /// the timer has not fired, polling it again would only register the same waker again.
    armed: Option<Waker>,
    period: Duration,
    /// Request heads read at the last check.
    seen: u64,
    /// Checks in a row that found the connection waiting for the same head.
    idle_checks: u8,
}

impl Watch {
    /// Whether the connection has waited for one head over its time.
    fn overdue(&mut self, cx: &mut Context<'_>, waiting: bool, requests: u64) -> bool {
        if self
            .armed
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
            && !self.timer.is_elapsed()
        {
            return false;
        }
        self.armed = Some(cx.waker().clone());
        while self.timer.as_mut().poll(cx).is_ready() {
            // A check that finds the connection waiting, with a request started or answered
            // since the last check, counts one: the wait began within the last period.
            self.idle_checks = match (waiting, requests == self.seen) {
                (true, true) => self.idle_checks.saturating_add(1),
                (true, false) => 1,
                (false, _) => 0,
            };
            self.seen = requests;
            // Waiting at three checks half a timeout apart: for between 1 and 1.5 timeouts.
            if self.idle_checks >= 3 {
                return true;
            }
            let next = Instant::now() + self.period;
            self.timer.as_mut().reset(next);
        }
        false
    }
}

/// Why serving a connection ended early. A connection the client closed between requests,
/// or one closed after a response said `close`, ends without an error.
#[derive(Debug)]
pub struct ServeError {
    kind: ServeErrorKind,
}

#[derive(Debug)]
enum ServeErrorKind {
    Io(io::Error),
    /// The request could not be read; answered with this status.
    Refused(StatusCode, &'static str),
    HeadTimeout,
    /// `poll_ready` failed; answered 503.
    Unavailable(BoxError),
    Service(BoxError),
    ResponseBody(BoxError),
}

impl ServeError {
    /// The status the client was answered with before the connection closed, if it was
    /// refused (400, 431, 500, 503).
    pub fn status(&self) -> Option<StatusCode> {
        match &self.kind {
            ServeErrorKind::Refused(status, _) => Some(*status),
            ServeErrorKind::Unavailable(_) => Some(StatusCode::SERVICE_UNAVAILABLE),
            ServeErrorKind::Service(_) => Some(StatusCode::INTERNAL_SERVER_ERROR),
            _ => None,
        }
    }
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ServeErrorKind::Io(e) => write!(f, "client connection failed: {e}"),
            ServeErrorKind::Refused(status, why) => {
                write!(f, "refused a request ({why}): answered {status} and closed")
            }
            ServeErrorKind::HeadTimeout => f.write_str(
                "a request head did not arrive within the header-read timeout; closed the connection",
            ),
            ServeErrorKind::Unavailable(e) => {
                write!(f, "the service is not ready ({e}): answered 503 and closed")
            }
            ServeErrorKind::Service(e) => {
                write!(f, "the service failed ({e}): answered 500 and closed")
            }
            ServeErrorKind::ResponseBody(e) => write!(
                f,
                "the response body broke off ({e}); closed the connection so the client sees it incomplete"
            ),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ServeErrorKind::Io(e) => Some(e),
            ServeErrorKind::Unavailable(e)
            | ServeErrorKind::Service(e)
            | ServeErrorKind::ResponseBody(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

fn fail(kind: ServeErrorKind) -> Poll<Result<(), ServeError>> {
    Poll::Ready(Err(ServeError { kind }))
}

impl<S, B> Connection<S, B>
where
    S: Service<Request<RequestBody>, Response = Response<B>>,
{
    /// Finishes the request in progress, if any, and closes; an idle connection closes at
    /// its next poll (keep polling the connection after calling this). The response in
    /// progress says `connection: close` if its head is not written yet.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        *self.project().shutting_down = true;
    }
}

impl<S, B> Future for Connection<S, B>
where
    S: Service<Request<RequestBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<(), ServeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(watch) = this.watch.as_mut() {
            let waiting = matches!(*this.state, State::Head | State::Linger(_));
            if watch.overdue(cx, waiting, *this.requests) {
                // An idle kept-alive connection closing is no error; part of a head is.
                let partial = this.reader.as_ref().is_some_and(|r| !r.read.is_empty());
                return match *this.state {
                    State::Head if partial => fail(ServeErrorKind::HeadTimeout),
                    _ => Poll::Ready(Ok(())),
                };
            }
        }
        loop {
            match this.state.as_mut().project() {
                StateProj::Head => {
                    let Some(reader) = this.reader.as_mut() else {
                        return Poll::Ready(Ok(()));
                    };
                    if *this.shutting_down && reader.read.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    match parse_request(reader) {
                        Ok(Some(parsed)) => {
                            *this.requests += 1;
                            *this.current = parsed.current;
                            if parsed.expects_continue {
                                this.write
                                    .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                            }
                            let body = match parsed.body {
                                In::Done => RequestBody { shared: None },
                                framing => {
                                    let shared = Arc::new(Mutex::new(BodyState {
                                        reader: this.reader.take(),
                                        framing,
                                    }));
                                    *this.body = Some(Arc::clone(&shared));
                                    RequestBody {
                                        shared: Some(shared),
                                    }
                                }
                            };
                            *this.pending = Some(parsed.request.map(|()| body));
                            this.state.set(State::Ready);
                        }
                        Ok(None) => {
                            if reader.read.len() > MAX_HEAD {
                                let why = "the request head exceeds 64 KiB";
                                let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
                                refuse(this.write, status, why);
                                *this.reader = None;
                                let kind = ServeErrorKind::Refused(status, why);
                                this.state.set(State::Flush(Some(kind)));
                                continue;
                            }
                            match ready!(reader.poll_fill(cx)) {
                                // The client closed between requests (or inside a head it
                                // will never finish): nothing to answer.
                                Ok(0) => return Poll::Ready(Ok(())),
                                Ok(_) => {}
                                Err(e) => return fail(ServeErrorKind::Io(e)),
                            }
                        }
                        Err((status, why)) => {
                            refuse(this.write, status, why);
                            *this.reader = None;
                            let kind = ServeErrorKind::Refused(status, why);
                            this.state.set(State::Flush(Some(kind)));
                        }
                    }
                }
                StateProj::Ready => match ready!(this.service.poll_ready(cx)) {
                    Ok(()) => {
                        let Some(request) = this.pending.take() else {
                            return Poll::Ready(Ok(()));
                        };
                        let future = this.service.call(request);
                        this.state.set(State::Call(future));
                    }
                    Err(e) => {
                        let status = StatusCode::SERVICE_UNAVAILABLE;
                        refuse(this.write, status, "the service is not available");
                        *this.pending = None;
                        *this.body = None;
                        let kind = ServeErrorKind::Unavailable(e.into());
                        this.state.set(State::Flush(Some(kind)));
                    }
                },
                StateProj::Call(future) => {
                    // A `100 Continue` goes out while the service reads the body.
                    if *this.written < this.write.len() {
                        match poll_write_all(this.writer, this.write, this.written, cx) {
                            Poll::Ready(Err(e)) => return fail(ServeErrorKind::Io(e)),
                            Poll::Ready(Ok(())) | Poll::Pending => {}
                        }
                    }
                    match ready!(future.poll(cx)) {
                        Ok(response) => {
                            // A 100 Continue not all written yet goes out before the head.
                            let (parts, body) = response.into_parts();
                            let unread = this
                                .body
                                .as_ref()
                                .is_some_and(|shared| lock(shared).framing != In::Done);
                            let mut close = this.current.close || *this.shutting_down || unread;
                            let out = encode_response(
                                this.write,
                                &parts,
                                &body,
                                this.current,
                                &mut close,
                            );
                            this.current.close = close;
                            let body = (out != Out::Nothing).then_some(body);
                            this.state.set(State::Send {
                                body,
                                out,
                                broken: None,
                            });
                        }
                        Err(e) => {
                            let status = StatusCode::INTERNAL_SERVER_ERROR;
                            refuse(this.write, status, "the service failed");
                            *this.body = None;
                            let kind = ServeErrorKind::Service(e.into());
                            this.state.set(State::Flush(Some(kind)));
                        }
                    }
                }
                StateProj::Send {
                    mut body,
                    out,
                    broken,
                } => {
                    // What the body has ready goes behind the head, out in one write.
                    if let Some(live) = body.as_mut().as_pin_mut() {
                        match gather(live, out, this.write, cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Gathered::More) => {}
                            Poll::Ready(Gathered::End) => body.set(None),
                            Poll::Ready(Gathered::Broken(e)) => *broken = Some(e),
                        }
                    }
                    ready!(poll_write_all(this.writer, this.write, this.written, cx)).map_err(
                        |e| ServeError {
                            kind: ServeErrorKind::Io(e),
                        },
                    )?;
                    if let Some(e) = broken.take() {
                        return fail(ServeErrorKind::ResponseBody(e));
                    }
                    if body.is_none() {
                        // All written: the next request, or the end.
                        let keep = !this.current.close && !*this.shutting_down;
                        let body_read = match this.body.take() {
                            None => true,
                            Some(shared) => {
                                let mut state = lock(&shared);
                                let done = state.framing == In::Done;
                                if !done {
                                    state.framing = In::Abandoned;
                                }
                                *this.reader = state.reader.take();
                                done
                            }
                        };
                        if keep && body_read {
                            this.state.set(State::Head);
                        } else {
                            *this.writer = None;
                            // Only with a timeout to bound it: the client may never close.
                            let linger = !body_read && this.watch.is_some();
                            this.state.set(if linger {
                                State::Linger(0)
                            } else {
                                State::Done
                            });
                        }
                    }
                }
                StateProj::Flush(why) => {
                    let written = ready!(poll_write_all(this.writer, this.write, this.written, cx));
                    let why = why.take();
                    *this.writer = None;
                    this.state.set(State::Done);
                    return match (why, written) {
                        (Some(kind), _) => fail(kind),
                        (None, Err(e)) => fail(ServeErrorKind::Io(e)),
                        (None, Ok(())) => Poll::Ready(Ok(())),
                    };
                }
                StateProj::Linger(discarded) => {
                    let Some(reader) = this.reader.as_mut() else {
                        this.state.set(State::Done);
                        continue;
                    };
                    reader.read.clear();
                    match ready!(reader.poll_fill(cx)) {
                        Ok(n) if n > 0 && *discarded + n <= LINGER_CAP => *discarded += n,
                        _ => this.state.set(State::Done),
                    }
                }
                StateProj::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// What [`gather`] got from a response body.
enum Gathered {
    /// Frames, and maybe more to come.
    More,
    /// The end (the chunked body's last chunk is written).
    End,
    /// The body failed, or broke its length: write what came before, then close.
    Broken(BoxError),
}

/// Frames `body` has ready, framed by `out` into `write`, up to [`WRITE_CHUNK`]; pending
/// only if it had nothing at all.
fn gather<B>(
    mut body: Pin<&mut B>,
    out: &mut Out,
    write: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<Gathered>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    while write.len() < WRITE_CHUNK {
        let frame = match body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Gathered::Broken(e.into())),
            Poll::Ready(None) => {
                return Poll::Ready(match *out {
                    Out::Length(0) | Out::Nothing | Out::Close => Gathered::End,
                    Out::Length(_) => {
                        Gathered::Broken("the body is shorter than its content-length".into())
                    }
                    Out::Chunked => {
                        write.extend_from_slice(b"0\r\n\r\n");
                        Gathered::End
                    }
                });
            }
            Poll::Pending if write.is_empty() => return Poll::Pending,
            Poll::Pending => break,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Out::Chunked, Ok(trailers)) = (*out, frame.into_trailers()) {
                    write.extend_from_slice(b"0\r\n");
                    put_fields(write, &trailers, |_, _| true);
                    write.extend_from_slice(b"\r\n");
                    *out = Out::Nothing;
                }
                continue;
            }
        };
        let len = data.remaining() as u64;
        match out {
            Out::Length(left) if len > *left => {
                let e = "the body is longer than its content-length";
                return Poll::Ready(Gathered::Broken(e.into()));
            }
            Out::Length(left) => {
                *left -= len;
                write.put(&mut data);
            }
            Out::Chunked if len > 0 => {
                write_chunk_size(write, len);
                write.put(&mut data);
                write.extend_from_slice(b"\r\n");
            }
            Out::Chunked | Out::Nothing => {}
            Out::Close => write.put(&mut data),
        }
    }
    Poll::Ready(Gathered::More)
}

fn lock(shared: &Mutex<BodyState>) -> std::sync::MutexGuard<'_, BodyState> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `write[written..]`; ready when all of it is out (and `write` is emptied).
fn poll_write_all(
    writer: &mut Option<OwnedWriteHalf>,
    write: &mut Vec<u8>,
    written: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let Some(io) = writer.as_mut() else {
        write.clear();
        *written = 0;
        return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
    };
    while *written < write.len() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, &write[*written..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *written += n;
    }
    write.clear();
    *written = 0;
    Poll::Ready(Ok(()))
}

/// Writes the connection's own answer to a request it refuses (after anything still owed,
/// such as a `100 Continue` partly written), and closes after it.
fn refuse(write: &mut Vec<u8>, status: StatusCode, why: &str) {
    put_status_line(write, status);
    write.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\n");
    put_length(write, why.len() as u64 + 1);
    write.extend_from_slice(b"connection: close\r\n");
    put_date(write);
    write.extend_from_slice(b"\r\n");
    write.extend_from_slice(why.as_bytes());
    write.push(b'\n');
}

fn put_status_line(write: &mut Vec<u8>, status: StatusCode) {
    write.extend_from_slice(b"HTTP/1.1 ");
    write.extend_from_slice(status.as_str().as_bytes());
    write.push(b' ');
    write.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    write.extend_from_slice(b"\r\n");
}

/// Writes the response head into `write` (after anything already there) in one pass over
/// the headers, and says how its body goes on the wire. `close` comes in as what the
/// connection wants and goes out as what the head says.
fn encode_response<B: Body>(
    write: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &B,
    current: &Current,
    close: &mut bool,
) -> Out {
    let status = parts.status;
    put_status_line(write, status);
    let mut has_date = false;
    let declared = put_fields(write, &parts.headers, |name, value| {
        // Whether the connection stays is the connection's to say, once.
        if name == CONNECTION {
            *close |= says_close(value);
            return false;
        }
        has_date |= name == DATE;
        true
    });
    if !has_date {
        put_date(write);
    }
    let declared = declared.and_then(|value| {
        let text = value.to_str().ok()?.trim();
        text.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| text.parse::<u64>().ok())
            .flatten()
    });
    let out = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        if status == StatusCode::NOT_MODIFIED {
            if let Some(n) = declared {
                put_length(write, n);
            }
        }
        Out::Nothing
    } else {
        let length = declared.or_else(|| match body.is_end_stream() {
            true => Some(0),
            false => body.size_hint().exact(),
        });
        match length {
            Some(n) => {
                put_length(write, n);
                match current.head || n == 0 {
                    true => Out::Nothing,
                    false => Out::Length(n),
                }
            }
            None if current.head => Out::Nothing,
            None if current.http10 => {
                *close = true;
                Out::Close
            }
            None => {
                write.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Out::Chunked
            }
        }
    };
    if *close {
        if !current.http10 {
            write.extend_from_slice(b"connection: close\r\n");
        }
    } else if current.http10 {
        write.extend_from_slice(b"connection: keep-alive\r\n");
    }
    write.extend_from_slice(b"\r\n");
    out
}

/// Writes a `date` field with the current time, formatted at most once a second per thread.
fn put_date(write: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        write.extend_from_slice(b"date: ");
        write.extend_from_slice(text.as_bytes());
        write.extend_from_slice(b"\r\n");
    });
}

/// A request head, read.
struct Parsed {
    request: Request<()>,
    current: Current,
    body: In,
    expects_continue: bool,
}

type Refusal = (StatusCode, &'static str);

/// A request head from the front of `reader.read`, which it consumes; `None` if it is not
/// all there yet.
fn parse_request(reader: &mut Reader) -> Result<Option<Parsed>, Refusal> {
    let bad = |why| (StatusCode::BAD_REQUEST, why);
    // Empty lines before a request line are to be ignored (RFC 9112, 2.2).
    while reader.read.starts_with(b"\r\n") {
        reader.read.advance(2);
    }
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut parsed, &reader.read, &mut headers)
        .map_err(|e| match e {
            httparse::Error::TooManyHeaders => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "more than 100 header fields",
            ),
            e => bad(parse_error(e)),
        })?;
    let httparse::Status::Complete(len) = status else {
        return Ok(None);
    };
    if len > MAX_HEAD {
        return Err((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "the request head exceeds 64 KiB",
        ));
    }
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| bad("invalid method"))?;
    let http10 = parsed.version == Some(0);
    let base = reader.read.as_ptr() as usize;
    let path = parsed.path.unwrap_or("");
    let path_at = path.as_ptr() as usize - base;
    let path_span = (path_at, path_at + path.len());
    // Offsets, so the head can be frozen into shared bytes the fields point into.
    reader.spans.clear();
    for header in parsed.headers.iter() {
        let name = header.name.as_ptr() as usize - base;
        let value = header.value.as_ptr() as usize - base;
        reader.spans.push((
            name,
            name + header.name.len(),
            value,
            value + header.value.len(),
        ));
    }
    let count = reader.spans.len();
    let head = reader.read.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_span.0..path_span.1))
        .map_err(|_| bad("invalid request target"))?;
    // Room for the fields a proxy adds (`x-forwarded-for`, …) without growing the map.
    let mut map = HeaderMap::with_capacity(count + 4);
    let mut fields = Fields::default();
    for &(n0, n1, v0, v1) in &reader.spans {
        let name = HeaderName::from_bytes(&head[n0..n1]).map_err(|_| bad("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
            .map_err(|_| bad("invalid header value"))?;
        fields.see(&name, &value).map_err(bad)?;
        map.append(name, value);
    }
    match fields.hosts {
        0 if !http10 => return Err(bad("an HTTP/1.1 request without Host")),
        0 | 1 => {}
        _ => return Err(bad("more than one Host")),
    }
    let body = match (fields.transfer_encoding, fields.content_length) {
        (true, Some(_)) => {
            return Err(bad("both transfer-encoding and content-length"));
        }
        (true, None) if http10 || !fields.chunked => {
            return Err(bad("a transfer coding other than a final chunked"));
        }
        (true, None) => In::Chunked(Chunk::Size),
        (false, Some(0) | None) => In::Done,
        (false, Some(n)) => In::Length(n),
    };
    let close = match http10 {
        true => !fields.keep_alive,
        false => fields.close,
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = map;
    let current = Current {
        http10,
        head: request.method() == Method::HEAD,
        close,
    };
    let expects_continue =
        fields.expects_continue && !http10 && body != In::Done && reader.read.is_empty();
    Ok(Some(Parsed {
        request,
        current,
        body,
        expects_continue,
    }))
}

/// Where a request body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum In {
    Length(u64),
    Chunked(Chunk),
    /// All of it has been read (or there was none).
    Done,
    /// Broke off (bad framing, the client closed), or the connection gave up on it.
    Abandoned,
}

struct BodyState {
    /// `None` once the connection took it back.
    reader: Option<Reader>,
    framing: In,
}

/// A request body, read from the client connection as the service asks for it.
///
/// Reading it is what makes the connection read: a service that never reads it (an early
/// answer, say a 413) gets its response sent, and the connection closes after it instead
/// of being kept. Chunked trailers arrive as a trailers frame.
pub struct RequestBody {
    shared: Option<Arc<Mutex<BodyState>>>,
}

impl RequestBody {
    /// A body with nothing in it.
    pub fn empty() -> Self {
        Self { shared: None }
    }
}

impl Default for RequestBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody").finish_non_exhaustive()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(shared) = self.shared.as_ref() else {
            return Poll::Ready(None);
        };
        let mut state = lock(shared);
        let state = &mut *state;
        loop {
            let Some(reader) = state.reader.as_mut() else {
                return Poll::Ready(match state.framing {
                    In::Done => None,
                    _ => Some(Err(BodyError::request("the connection was closed".into()))),
                });
            };
            match &mut state.framing {
                In::Done => return Poll::Ready(None),
                In::Abandoned => {
                    return Poll::Ready(Some(Err(BodyError::request(
                        "the request body was abandoned".into(),
                    ))));
                }
                In::Length(left) => {
                    if !reader.read.is_empty() {
                        let n = (*left).min(reader.read.len() as u64);
                        *left -= n;
                        let data = reader.read.split_to(n as usize).freeze();
                        if *left == 0 {
                            state.framing = In::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                In::Chunked(chunk) => match step_chunked(chunk, &mut reader.read) {
                    Err(what) => {
                        state.framing = In::Abandoned;
                        return Poll::Ready(Some(Err(BodyError::request(what.into()))));
                    }
                    Ok(Some(Step::Data(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Some(Step::End(trailers))) => {
                        state.framing = In::Done;
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(None) => {}
                },
            }
            match ready!(reader.poll_fill(cx)) {
                Ok(0) => {
                    state.framing = In::Abandoned;
                    return Poll::Ready(Some(Err(BodyError::request(
                        "the client closed the connection before the body's end".into(),
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    state.framing = In::Abandoned;
                    return Poll::Ready(Some(Err(BodyError::request(e.into()))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|shared| lock(shared).framing == In::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.shared.as_ref().map(|shared| lock(shared).framing) {
            None | Some(In::Done) => SizeHint::with_exact(0),
            Some(In::Length(left)) => SizeHint::with_exact(left),
            Some(_) => SizeHint::default(),
        }
    }
}
