//! One HTTP/1.1 exchange on a connection the caller owns, driven by the caller's own task.
//!
//! hyper's client gives every connection a task of its own: a request travels to it over a
//! channel, and its response comes back over another. In a proxy that is a hand-off per
//! request, and about a fifth of the instructions a request proxied by the example gateway
//! cost. Here the request's future writes the request and reads the response head itself,
//! and the response body reads the rest and gives the connection back to its pool when the
//! last byte has arrived.
//!
//! Framing follows RFC 9112: request bodies are sent with the `content-length` they declare
//! (or their exact size) or chunked; response bodies are read by `transfer-encoding:
//! chunked`, `content-length`, or until the server closes, and a connection is kept only
//! when both messages ended exactly where their framing said they would.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::pool::Http1Pool;
use crate::BoxError;

/// Headers a message head may carry.
pub(super) const MAX_HEADERS: usize = 100;
/// Bytes a message head (or a chunk-size line, or the trailers) may take.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Bytes read at a time at first, and at least.
pub(super) const READ_CHUNK: usize = 8 * 1024;
/// Bytes read at a time at most: reads grow while they fill the buffer (large bodies).
const MAX_READ_CHUNK: usize = 256 * 1024;
/// Body bytes gathered before they are written.
pub(super) const WRITE_CHUNK: usize = 64 * 1024;

/// A connection to an instance, between or during exchanges.
pub(crate) struct Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// Bytes to write: the request head and the body gathered so far.
    write: Vec<u8>,
    /// Where each header of the last response head lies in `read`.
    spans: Vec<Span>,
    /// How much room the next read gets.
    read_chunk: usize,
    /// Sweeps of its pool this connection has sat idle through.
    pub(crate) idle_sweeps: u32,
}

/// A header's name and value as offsets into the response head.
#[derive(Clone, Copy)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

impl Conn {
    pub(crate) fn new(io: TcpStream) -> Self {
        Self {
            io,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: Vec::with_capacity(1024),
            spans: Vec::new(),
            read_chunk: READ_CHUNK,
            idle_sweeps: 0,
        }
    }

    /// Whether a connection that sat idle is still usable: the server neither closed it nor
    /// sent anything unasked. Costs a system call only if the socket has become readable.
    pub(crate) fn is_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads more bytes into `read`; 0 means the server closed the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.io, &mut self.read, &mut self.read_chunk, cx)
    }
}

/// Reads more bytes from `io` into `read`, `read_chunk` at a time; 0 means the peer closed
/// the connection.
pub(super) fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    read: &mut BytesMut,
    read_chunk: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < *read_chunk / 4 {
        read.reserve(*read_chunk);
    }
    let room = read.capacity() - read.len();
    let n = ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, read))?;
    // Like hyper's adaptive reads: a read that filled its room asks for twice the room
    // next time, one that used less than a quarter of it for half.
    if n == room {
        *read_chunk = (*read_chunk * 2).min(MAX_READ_CHUNK);
    } else if n < room / 4 {
        *read_chunk = (*read_chunk / 2).max(READ_CHUNK);
    }
    Poll::Ready(Ok(n))
}

/// What went wrong in an exchange, and whether the request may have reached the server.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Writing the request failed: the server closed or reset the connection.
    Write(io::Error),
    /// The connection closed before any byte of a response arrived.
    ClosedBeforeResponse,
    /// Reading the response failed.
    Read(io::Error),
    /// The response head broke the protocol.
    Malformed(&'static str),
    /// The request itself could not be sent as it is.
    Request(&'static str),
    /// The request body failed.
    RequestBody(BoxError),
}

/// An HTTP/1.1 exchange with one instance failed.
///
/// Says which instance and what happened; [`source`](std::error::Error::source) is the I/O
/// error or the request body's own error where there is one (so a body over its cap is still
/// recognised by [`ErrorKind`](crate::ErrorKind)).
#[derive(Debug)]
pub struct ExchangeError {
    addr: SocketAddr,
    failure: Failure,
}

impl ExchangeError {
    pub(crate) fn new(addr: SocketAddr, failure: Failure) -> Self {
        Self { addr, failure }
    }

    /// The instance address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The request itself is at fault (a method or framing it cannot be sent with): sending
    /// it anywhere else would fail the same way.
    pub(crate) fn is_request_fault(&self) -> bool {
        matches!(self.failure, Failure::Request(_))
    }
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.addr;
        match &self.failure {
            Failure::Write(e) => write!(f, "sending the request to {addr} failed: {e}"),
            Failure::ClosedBeforeResponse => write!(
                f,
                "{addr} closed the connection without answering; the request may or may not \
                 have been processed"
            ),
            Failure::Read(e) => write!(f, "reading the response of {addr} failed: {e}"),
            Failure::Malformed(what) => write!(f, "{addr} sent a malformed response: {what}"),
            Failure::Request(what) => write!(f, "cannot send the request to {addr}: {what}"),
            Failure::RequestBody(e) => {
                write!(f, "the request body failed while being sent to {addr}: {e}")
            }
        }
    }
}

impl std::error::Error for ExchangeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.failure {
            Failure::Write(e) | Failure::Read(e) => Some(e),
            Failure::RequestBody(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// How a request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sending {
    /// `content-length`: this many bytes still to come.
    Length(u64),
    Chunked,
}

/// What the request head said that the exchange needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Encoded {
    /// How the body goes on the wire; `None`: no body.
    pub(crate) sending: Option<Sending>,
    /// The request asked for its connection to be closed after the response.
    pub(crate) close: bool,
}

/// Writes the request head into `conn.write`, in one pass over the headers.
pub(crate) fn encode_head<B: Body>(
    conn: &mut Conn,
    parts: &http::request::Parts,
    path: &str,
    host: Option<&HeaderValue>,
    body: &B,
) -> Result<Encoded, Failure> {
    if parts.method == Method::CONNECT {
        return Err(Failure::Request(
            "CONNECT is not supported over pooled connections",
        ));
    }
    let w = &mut conn.write;
    w.clear();
    w.extend_from_slice(parts.method.as_str().as_bytes());
    w.push(b' ');
    w.extend_from_slice(path.as_bytes());
    w.extend_from_slice(b" HTTP/1.1\r\n");
    let fields = w.len();
    let (mut has_host, mut close) = (false, false);
    let declared = put_fields(w, &parts.headers, |name, value| {
        if name == HOST {
            has_host = true;
        } else if name == CONNECTION {
            close |= says_close(value);
        }
        true
    });
    if !has_host {
        if let Some(host) = host {
            // First, where user agents put it.
            let line = [b"host: ", host.as_bytes(), b"\r\n"].concat();
            w.splice(fields..fields, line);
        }
    }
    let declared = match declared {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(Failure::Request("its content-length is not a number"))?,
        ),
        None => None,
    };
    let sending = match declared {
        Some(0) => None,
        Some(n) => Some(Sending::Length(n)),
        None if body.is_end_stream() => None,
        None => match body.size_hint().exact() {
            Some(0) => None,
            Some(n) => Some(Sending::Length(n)),
            None => Some(Sending::Chunked),
        },
    };
    match sending {
        Some(Sending::Length(n)) => put_length(w, n),
        Some(Sending::Chunked) => w.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        None if declared == Some(0) || expects_length(&parts.method) => {
            w.extend_from_slice(b"content-length: 0\r\n");
        }
        None => {}
    }
    w.extend_from_slice(b"\r\n");
    Ok(Encoded { sending, close })
}

/// Writes `headers` as header fields, but not the framing ones (`content-length`,
/// `transfer-encoding`), which are the connection's to say, once: returns the first
/// `content-length` declared. `keep` sees every other field first and says whether it is
/// written.
pub(super) fn put_fields<'a>(
    w: &mut Vec<u8>,
    headers: &'a HeaderMap,
    mut keep: impl FnMut(&HeaderName, &HeaderValue) -> bool,
) -> Option<&'a HeaderValue> {
    let mut declared = None;
    for (name, value) in headers {
        if name == CONTENT_LENGTH {
            declared = declared.or(Some(value));
            continue;
        }
        if name == TRANSFER_ENCODING || !keep(name, value) {
            continue;
        }
        w.extend_from_slice(name.as_str().as_bytes());
        w.extend_from_slice(b": ");
        w.extend_from_slice(value.as_bytes());
        w.extend_from_slice(b"\r\n");
    }
    declared
}

/// The comma-separated tokens of a header value (`connection`, `transfer-encoding`),
/// trimmed; compare them without regard to case.
pub(super) fn tokens(value: &HeaderValue) -> impl DoubleEndedIterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
}

/// Whether a `connection` header value lists `close`.
pub(super) fn says_close(value: &HeaderValue) -> bool {
    tokens(value).any(|token| token.eq_ignore_ascii_case(b"close"))
}

/// Methods whose requests say their length even when it is zero (servers may demand it).
fn expects_length(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Writes a `content-length` field.
pub(super) fn put_length(w: &mut Vec<u8>, n: u64) {
    w.extend_from_slice(b"content-length: ");
    w.extend_from_slice(itoa(n, &mut [0; 20]));
    w.extend_from_slice(b"\r\n");
}

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The request side of an exchange in progress.
pub(crate) struct Outgoing<B> {
    pub(crate) body: B,
    /// The body has been asked for a frame: it cannot be sent again.
    body_polled: bool,
    sending: Option<Sending>,
    /// Bytes of `conn.write` already written.
    written: usize,
    /// Head and body are all written.
    pub(crate) done: bool,
}

impl<B> Outgoing<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(body: B, sending: Option<Sending>) -> Self {
        Self {
            body,
            body_polled: false,
            sending,
            written: 0,
            done: false,
        }
    }

    pub(crate) fn body_polled(&self) -> bool {
        self.body_polled
    }

    /// Starts over on another connection, whose head has just been encoded.
    pub(crate) fn restart(&mut self) {
        self.written = 0;
        self.done = false;
    }

    /// Writes the head and the body as they come; ready when all is written.
    fn poll_send(&mut self, conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        loop {
            while self.written < conn.write.len() {
                let n = ready!(Pin::new(&mut conn.io).poll_write(cx, &conn.write[self.written..]))
                    .map_err(Failure::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(Failure::Write(io::ErrorKind::WriteZero.into())));
                }
                self.written += n;
            }
            conn.write.clear();
            self.written = 0;
            if self.sending.is_none() {
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            // Gather what the body has ready, then write it in one go.
            while conn.write.len() < WRITE_CHUNK {
                self.body_polled = true;
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(mut data) = frame.into_data() else {
                            continue; // trailers of a request: HTTP/1.1 proxies drop them
                        };
                        let len = data.remaining() as u64;
                        match &mut self.sending {
                            Some(Sending::Length(left)) => {
                                if len > *left {
                                    return Poll::Ready(Err(Failure::Request(
                                        "its body is longer than its content-length",
                                    )));
                                }
                                *left -= len;
                                conn.write.put(&mut data);
                            }
                            Some(Sending::Chunked) if len > 0 => {
                                write_chunk_size(&mut conn.write, len);
                                conn.write.put(&mut data);
                                conn.write.extend_from_slice(b"\r\n");
                            }
                            _ => {}
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(Failure::RequestBody(e.into())));
                    }
                    Poll::Ready(None) => {
                        match self.sending {
                            Some(Sending::Length(0)) => {}
                            Some(Sending::Length(_)) => {
                                return Poll::Ready(Err(Failure::Request(
                                    "its body is shorter than its content-length",
                                )));
                            }
                            _ => conn.write.extend_from_slice(b"0\r\n\r\n"),
                        }
                        self.sending = None;
                        break;
                    }
                    Poll::Pending if conn.write.is_empty() => return Poll::Pending,
                    Poll::Pending => break,
                }
            }
        }
    }
}

pub(super) fn write_chunk_size(w: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    w.extend_from_slice(&digits[i..]);
    w.extend_from_slice(b"\r\n");
}

/// A response head as read, with how its body is framed.
pub(crate) struct Head {
    response: http::Response<()>,
    framing: Framing,
    keep_alive: bool,
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body at all.
    Empty,
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the server closes the connection.
    Close,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data are next.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// The trailer section is next.
    Trailers,
}

/// Sends the request (head and body) and reads the response head, at once: a server may
/// answer before the body is all sent, and then the rest of the body is not sent.
pub(crate) async fn exchange<B>(
    conn: &mut Conn,
    outgoing: &mut Outgoing<B>,
    method: &Method,
) -> Result<Head, Failure>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    poll_fn(|cx| {
        if !outgoing.done {
            if let Poll::Ready(Err(e)) = outgoing.poll_send(conn, cx) {
                // A server that answered early may have stopped reading: its answer wins.
                if let (Failure::Write(_), Poll::Ready(Ok(head))) =
                    (&e, poll_head(conn, cx, method))
                {
                    return Poll::Ready(Ok(head));
                }
                return Poll::Ready(Err(e));
            }
        }
        poll_head(conn, cx, method)
    })
    .await
}

fn poll_head(
    conn: &mut Conn,
    cx: &mut Context<'_>,
    method: &Method,
) -> Poll<Result<Head, Failure>> {
    loop {
        if !conn.read.is_empty() {
            if let Some(head) = parse_head(conn, method)? {
                return Poll::Ready(Ok(head));
            }
            if conn.read.len() > MAX_HEAD {
                return Poll::Ready(Err(Failure::Malformed("the response head exceeds 64 KiB")));
            }
        }
        let before = conn.read.len();
        let n = ready!(conn.poll_fill(cx)).map_err(Failure::Read)?;
        if n == 0 {
            return Poll::Ready(Err(if before == 0 {
                Failure::ClosedBeforeResponse
            } else {
                Failure::Malformed("the connection closed inside the response head")
            }));
        }
    }
}

/// A final response head from the front of `conn.read`, which it consumes; `None` if the
/// head is not all there yet. Interim (1xx) responses are skipped.
fn parse_head(conn: &mut Conn, method: &Method) -> Result<Option<Head>, Failure> {
    loop {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut parsed, &conn.read, &mut headers)
            .map_err(|e| Failure::Malformed(parse_error(e)))?;
        let httparse::Status::Complete(len) = status else {
            return Ok(None);
        };
        if len > MAX_HEAD {
            return Err(Failure::Malformed("the response head exceeds 64 KiB"));
        }
        let code = parsed.code.unwrap_or(0);
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(Failure::Malformed(
                    "101 Switching Protocols: upgrades are not supported over pooled connections",
                ));
            }
            conn.read.advance(len);
            continue;
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| Failure::Malformed("bad status code"))?;
        let base = conn.read.as_ptr() as usize;
        conn.spans.clear();
        for header in parsed.headers.iter() {
            let name = header.name.as_ptr() as usize - base;
            let value = header.value.as_ptr() as usize - base;
            conn.spans.push(Span {
                name: (name, name + header.name.len()),
                value: (value, value + header.value.len()),
            });
        }
        let head = conn.read.split_to(len).freeze();
        let mut map = HeaderMap::with_capacity(conn.spans.len());
        let mut fields = Fields::default();
        for span in &conn.spans {
            let name = HeaderName::from_bytes(&head[span.name.0..span.name.1])
                .map_err(|_| Failure::Malformed("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1))
                .map_err(|_| Failure::Malformed("invalid header value"))?;
            fields.see(&name, &value).map_err(Failure::Malformed)?;
            map.append(name, value);
        }
        let (framing, keep_alive) = framing(fields, version, status, method);
        let mut response = http::Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = map;
        return Ok(Some(Head {
            response,
            framing,
            keep_alive,
        }));
    }
}

pub(super) fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "more than 100 headers",
        httparse::Error::Version => "not HTTP/1.x",
    }
}

/// What a message's header fields say about its framing (and, for a request, its `Host`
/// and `Expect`), gathered while they are read.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Fields {
    pub(super) close: bool,
    pub(super) keep_alive: bool,
    pub(super) transfer_encoding: bool,
    /// The last transfer coding is `chunked`.
    pub(super) chunked: bool,
    pub(super) content_length: Option<u64>,
    pub(super) hosts: u32,
    pub(super) expects_continue: bool,
}

impl Fields {
    #[inline]
    pub(super) fn see(
        &mut self,
        name: &HeaderName,
        value: &HeaderValue,
    ) -> Result<(), &'static str> {
        if name == CONNECTION {
            self.close |= says_close(value);
            self.keep_alive |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"keep-alive"));
        } else if name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
            self.chunked = tokens(value)
                .next_back()
                .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked"));
        } else if name == CONTENT_LENGTH {
            for part in tokens(value) {
                let n = std::str::from_utf8(part)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or("invalid content-length")?;
                if self.content_length.is_some_and(|l| l != n) {
                    return Err("conflicting content-length values");
                }
                self.content_length = Some(n);
            }
        } else if name == HOST {
            self.hosts += 1;
        } else if name == EXPECT {
            self.expects_continue |= value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        Ok(())
    }
}

/// How the body of a response ends, and whether the connection may be used again.
fn framing(
    fields: Fields,
    version: Version,
    status: StatusCode,
    method: &Method,
) -> (Framing, bool) {
    let keep_alive = !fields.close && (version == Version::HTTP_11 || fields.keep_alive);
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return (Framing::Empty, keep_alive);
    }
    if fields.transfer_encoding {
        // With a content-length as well the message is suspect: read it by its
        // transfer-encoding, then close (RFC 9112, 6.3).
        let keep = keep_alive && fields.chunked && fields.content_length.is_none();
        return match fields.chunked {
            true => (Framing::Chunked(Chunk::Size), keep),
            false => (Framing::Close, false),
        };
    }
    match fields.content_length {
        Some(0) => (Framing::Empty, keep_alive),
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::Close, false),
    }
}

/// The response of `head`, its body read from `conn`; `reusable` says whether the request
/// side allows another exchange on the connection (all of it was written, and it did not ask
/// to close).
pub(crate) fn respond(
    conn: Conn,
    head: Head,
    reusable: bool,
    pool: Arc<Http1Pool>,
) -> http::Response<Incoming> {
    let mut body = Incoming {
        conn: Some(conn),
        pool,
        framing: head.framing,
        keep: head.keep_alive && reusable,
    };
    if body.framing == Framing::Empty {
        body.finish();
    }
    head.response.map(|()| body)
}

/// A response body read from a pooled connection, which goes back to its pool once the body
/// has ended where its framing said (and is closed if it is dropped before).
pub(crate) struct Incoming {
    conn: Option<Conn>,
    pool: Arc<Http1Pool>,
    framing: Framing,
    /// The connection may serve another exchange once this body has ended.
    keep: bool,
}

impl Incoming {
    pub(crate) fn is_end_stream(&self) -> bool {
        self.framing == Framing::Empty
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// The body ended where its framing said: the connection goes back if it may.
    fn finish(&mut self) {
        self.framing = Framing::Empty;
        if let Some(conn) = self.conn.take() {
            // Bytes after the response that nobody asked for: the connection is out of step.
            if self.keep && conn.read.is_empty() {
                self.pool.keep(conn);
            }
        }
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFailure>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.framing {
                Framing::Empty => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !conn.read.is_empty() {
                        let n = (*left).min(conn.read.len() as u64);
                        *left -= n;
                        let data = conn.read.split_to(n as usize).freeze();
                        if *left == 0 {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Close => {
                    if !conn.read.is_empty() {
                        let data = conn.read.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(chunk) => match step_chunked(chunk, &mut conn.read) {
                    Err(what) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(BodyFailure::Malformed(what))));
                    }
                    Ok(Some(Step::Data(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Some(Step::End(trailers))) => {
                        self.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(None) => {}
                },
            }
            // Everything buffered is consumed: read more.
            let read = ready!(conn.poll_fill(cx));
            match read {
                Ok(0) if self.framing == Framing::Close => {
                    self.conn = None;
                    self.framing = Framing::Empty;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(BodyFailure::Closed)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(BodyFailure::Read(e))));
                }
            }
        }
    }
}

impl Drop for Incoming {
    /// A body dropped before its end still gives its connection back if the rest of it has
    /// already arrived (callers that look only at the status do this); otherwise the
    /// connection closes, as nobody will read what is still on its way.
    fn drop(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let ended = match &mut self.framing {
            Framing::Length(left) => {
                let whole = conn.read.len() as u64 == *left;
                if whole {
                    conn.read.clear();
                }
                whole
            }
            Framing::Chunked(chunk) => loop {
                match step_chunked(chunk, &mut conn.read) {
                    Ok(Some(Step::Data(_))) => {}
                    Ok(Some(Step::End(_))) => break true,
                    Ok(None) | Err(_) => break false,
                }
            },
            Framing::Empty | Framing::Close => false,
        };
        if ended {
            self.finish();
        }
    }
}

/// What a chunked body gave.
pub(super) enum Step {
    Data(Bytes),
    /// The last chunk and its trailers, if it had any.
    End(Option<HeaderMap>),
}

/// Advances a chunked body over what `read` holds; `None` when it needs more bytes.
pub(super) fn step_chunked(
    chunk: &mut Chunk,
    read: &mut BytesMut,
) -> Result<Option<Step>, &'static str> {
    loop {
        match *chunk {
            Chunk::Size => match httparse::parse_chunk_size(read) {
                Ok(httparse::Status::Complete((len, size))) => {
                    read.advance(len);
                    *chunk = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Ok(httparse::Status::Partial) if read.len() > MAX_HEAD => {
                    return Err("a chunk-size line exceeds 64 KiB");
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(_) => return Err("invalid chunk size"),
            },
            Chunk::Data(left) => {
                if read.is_empty() {
                    return Ok(None);
                }
                let n = left.min(read.len() as u64);
                *chunk = if n == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n)
                };
                return Ok(Some(Step::Data(read.split_to(n as usize).freeze())));
            }
            Chunk::DataEnd => {
                if read.len() < 2 {
                    return Ok(None);
                }
                if &read[..2] != b"\r\n" {
                    return Err("chunk data does not end with CRLF");
                }
                read.advance(2);
                *chunk = Chunk::Size;
            }
            Chunk::Trailers => {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                match httparse::parse_headers(read, &mut headers) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::new();
                        for field in fields {
                            let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(field.name.as_bytes()),
                                HeaderValue::from_bytes(field.value),
                            ) else {
                                return Err("invalid trailer field");
                            };
                            trailers.append(name, value);
                        }
                        read.advance(len);
                        let trailers = (!trailers.is_empty()).then_some(trailers);
                        return Ok(Some(Step::End(trailers)));
                    }
                    Ok(httparse::Status::Partial) if read.len() > MAX_HEAD => {
                        return Err("the trailer section exceeds 64 KiB");
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err("invalid trailer section"),
                }
            }
        }
    }
}

/// Why a response body broke off.
#[derive(Debug)]
pub(crate) enum BodyFailure {
    Closed,
    Read(io::Error),
    Malformed(&'static str),
}

impl fmt::Display for BodyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("the connection closed before the body's end"),
            Self::Read(e) => write!(f, "reading failed: {e}"),
            Self::Malformed(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for BodyFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_read_across_any_split() {
        let wire = b"4\r\nRust\r\n5;ext=1\r\n seas\r\n0\r\nx-sum: 9\r\n\r\n";
        for split in 0..wire.len() {
            let mut chunk = Chunk::Size;
            let mut read = BytesMut::new();
            let mut data = Vec::new();
            let mut trailers = None;
            for part in [&wire[..split], &wire[split..]] {
                read.extend_from_slice(part);
                while let Some(step) = step_chunked(&mut chunk, &mut read).unwrap() {
                    match step {
                        Step::Data(bytes) => data.extend_from_slice(&bytes),
                        Step::End(t) => trailers = Some(t),
                    }
                }
            }
            assert_eq!(data, b"Rust seas", "split at {split}");
            let trailers = trailers.flatten().expect("trailers");
            assert_eq!(trailers["x-sum"], "9");
            assert!(read.is_empty());
        }
    }

    #[test]
    fn bad_chunked_framing_is_an_error() {
        for wire in [&b"zz\r\n"[..], b"4\r\nRustXX", b"ffffffffffffffffff\r\n"] {
            let mut read = BytesMut::from(wire);
            let mut chunk = Chunk::Size;
            let mut result = Ok(None);
            for _ in 0..4 {
                result = step_chunked(&mut chunk, &mut read);
                if !matches!(result, Ok(Some(_))) {
                    break;
                }
            }
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let ok = StatusCode::OK;
        let v11 = Version::HTTP_11;
        let get = &Method::GET;
        let f = |h: &[(&'static str, &'static str)], v, s, m| {
            let mut fields = Fields::default();
            for (name, value) in &headers(h) {
                fields.see(name, value).map_err(Failure::Malformed)?;
            }
            Ok::<_, Failure>(framing(fields, v, s, m))
        };
        assert_eq!(
            f(&[("content-length", "12")], v11, ok, get).unwrap(),
            (Framing::Length(12), true)
        );
        assert_eq!(
            f(&[("content-length", "12, 12")], v11, ok, get).unwrap(),
            (Framing::Length(12), true)
        );
        assert!(f(&[("content-length", "12, 13")], v11, ok, get).is_err());
        assert!(f(&[("content-length", "-1")], v11, ok, get).is_err());
        assert!(f(&[("content-length", "+1")], v11, ok, get).is_err());
        assert_eq!(
            f(&[("transfer-encoding", "gzip, chunked")], v11, ok, get).unwrap(),
            (Framing::Chunked(Chunk::Size), true)
        );
        // Both: read by transfer-encoding, then close.
        assert_eq!(
            f(
                &[("transfer-encoding", "chunked"), ("content-length", "3")],
                v11,
                ok,
                get
            )
            .unwrap(),
            (Framing::Chunked(Chunk::Size), false)
        );
        assert_eq!(
            f(&[("transfer-encoding", "gzip")], v11, ok, get).unwrap(),
            (Framing::Close, false)
        );
        assert_eq!(f(&[], v11, ok, get).unwrap(), (Framing::Close, false));
        assert_eq!(
            f(&[("content-length", "5")], v11, ok, &Method::HEAD).unwrap(),
            (Framing::Empty, true)
        );
        assert_eq!(
            f(&[], v11, StatusCode::NO_CONTENT, get).unwrap(),
            (Framing::Empty, true)
        );
        assert_eq!(
            f(
                &[("content-length", "1"), ("connection", "Close")],
                v11,
                ok,
                get
            )
            .unwrap(),
            (Framing::Length(1), false)
        );
        assert_eq!(
            f(&[("content-length", "1")], Version::HTTP_10, ok, get).unwrap(),
            (Framing::Length(1), false)
        );
        assert_eq!(
            f(
                &[("content-length", "1"), ("connection", "keep-alive")],
                Version::HTTP_10,
                ok,
                get
            )
            .unwrap(),
            (Framing::Length(1), true)
        );
    }

    #[test]
    fn numbers_are_written_in_decimal_and_hex() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
        let mut w = Vec::new();
        write_chunk_size(&mut w, 0x1f);
        write_chunk_size(&mut w, 0);
        assert_eq!(w, b"1f\r\n0\r\n");
    }
}
