//! The endpoint's own HTTP/1.1 connections (`HttpEndpoint::http1`) against servers that say
//! exactly what a test scripts: every framing a response may use, interim answers, early
//! answers, broken framing, and bodies dropped half-way.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use seawall::discover::Instance;
use seawall::http::{ExchangeError, Http1Config, HttpEndpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// What a scripted server saw.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    /// Every request head, in order.
    heads: Mutex<Vec<String>>,
    /// Request body bytes read (by `content-length` or up to the last chunk).
    bodies: Mutex<Vec<Vec<u8>>>,
}

/// A server answering the n-th request it reads (over all connections) with `answers[n]`;
/// after an answer whose `close` is set it closes that connection. A request whose head
/// contains `x-early` is answered before its body is read, and the body is then not read.
async fn scripted(answers: Vec<(&'static [u8], bool)>) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            record.accepted.fetch_add(1, Ordering::SeqCst);
            let (seen, answers) = (record.clone(), answers.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = read_until(&mut stream, &mut buf, b"\r\n\r\n").await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    buf.drain(..end);
                    seen.heads.lock().unwrap().push(head.clone());
                    let Some((answer, close)) = answers.lock().unwrap().next() else {
                        return;
                    };
                    if head.contains("x-early") {
                        let _ = stream.write_all(answer).await;
                        // Never reads the body; keeps the connection until the client goes.
                        let mut sink = [0u8; 1];
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                        return;
                    }
                    let body = if let Some(len) = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                    {
                        while buf.len() < len {
                            if !fill(&mut stream, &mut buf).await {
                                return;
                            }
                        }
                        buf.drain(..len).collect()
                    } else if head.contains("transfer-encoding: chunked") {
                        let Some(end) = read_until(&mut stream, &mut buf, b"0\r\n\r\n").await
                        else {
                            return;
                        };
                        buf.drain(..end).collect()
                    } else {
                        Vec::new()
                    };
                    seen.bodies.lock().unwrap().push(body);
                    if stream.write_all(answer).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Reads until `buf` holds `pattern`; the length up to its end.
async fn read_until(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    pattern: &[u8],
) -> Option<usize> {
    loop {
        if let Some(at) = buf.windows(pattern.len()).position(|w| w == pattern) {
            return Some(at + pattern.len());
        }
        if !fill(stream, buf).await {
            return None;
        }
    }
}

async fn fill(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn endpoint<B>(addr: SocketAddr) -> HttpEndpoint<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<seawall::BoxError>,
{
    HttpEndpoint::http1(&Instance::new("scripted", addr), Http1Config::default())
}

async fn get(
    endpoint: &HttpEndpoint<Empty<Bytes>>,
    method: http::Method,
) -> Result<(http::StatusCode, Bytes, Option<http::HeaderMap>), seawall::BoxError> {
    let request = http::Request::builder()
        .method(method)
        .uri("/x")
        .body(Empty::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), endpoint.clone().oneshot(request))
        .await
        .expect("bounded")?;
    let status = response.status();
    let collected = response.into_body().collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((status, collected.to_bytes(), trailers))
}

#[tokio::test]
async fn every_response_framing_arrives_whole_on_one_kept_connection() {
    let (addr, seen) = scripted(vec![
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nsea \r\n4;x=y\r\nwall\r\n0\r\nx-sum: 8\r\n\r\n",
            false,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 999\r\n\r\n", false),
        (b"HTTP/1.1 204 No Content\r\n\r\n", false),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew", false),
    ])
    .await;
    let endpoint = endpoint(addr);
    let (status, body, trailers) = get(&endpoint, http::Method::GET).await.unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"sea wall"[..]));
    assert_eq!(trailers.expect("trailers")["x-sum"], "8");
    let (_, body, _) = get(&endpoint, http::Method::GET).await.unwrap();
    assert_eq!(body, "hello");
    let (status, body, _) = get(&endpoint, http::Method::GET).await.unwrap();
    assert_eq!(
        (status.as_u16(), &body[..]),
        (201, &b"ok"[..]),
        "1xx skipped"
    );
    let (status, body, _) = get(&endpoint, http::Method::HEAD).await.unwrap();
    assert_eq!((status.as_u16(), body.len()), (200, 0), "HEAD has no body");
    let (status, body, _) = get(&endpoint, http::Method::GET).await.unwrap();
    assert_eq!((status.as_u16(), body.len()), (204, 0));
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        1,
        "all on one connection"
    );
    // No length: the body is whatever comes before the server closes...
    let (_, body, _) = get(&endpoint, http::Method::GET).await.unwrap();
    assert_eq!(body, "until the end");
    // ... and that connection is not used again.
    let (_, body, _) = get(&endpoint, http::Method::GET).await.unwrap();
    assert_eq!(body, "new");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
    let heads = seen.heads.lock().unwrap();
    assert!(heads[0].starts_with("get /x http/1.1\r\n"), "{}", heads[0]);
    assert!(heads[0].contains(&format!("host: {addr}")), "{}", heads[0]);
    assert!(heads[3].starts_with("head /x "), "{}", heads[3]);
}

/// A server that closes each connection after one answer without saying so: the client finds
/// out only when it tries the kept connection again.
#[tokio::test]
async fn a_kept_connection_the_server_closed_is_replaced_without_an_error() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, seen) = scripted(vec![(ok, true); 5]).await;
    let endpoint = endpoint(addr);
    for _ in 0..5 {
        let (_, body, _) = get(&endpoint, http::Method::GET)
            .await
            .expect("a closed kept connection is not the caller's problem");
        assert_eq!(body, "ok");
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn request_bodies_go_out_with_their_length_or_chunked() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let (addr, seen) = scripted(vec![(ok, false); 4]).await;
    let sized = endpoint::<Full<Bytes>>(addr);
    let request = http::Request::post("/a")
        .body(Full::new(Bytes::from_static(b"twelve bytes")))
        .unwrap();
    assert_eq!(sized.oneshot(request).await.unwrap().status(), 200);

    let frames = ["stream", "ed ", "", "body"]
        .map(|s| Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(s.as_bytes()))));
    let streamed = endpoint::<StreamBody<_>>(addr);
    let request = http::Request::put("/b")
        .body(StreamBody::new(futures_util_stream(frames)))
        .unwrap();
    assert_eq!(streamed.oneshot(request).await.unwrap().status(), 200);

    let empty = endpoint::<Empty<Bytes>>(addr);
    let request = http::Request::post("/c")
        .header("connection", "close")
        .body(Empty::new())
        .unwrap();
    assert_eq!(empty.clone().oneshot(request).await.unwrap().status(), 200);
    // One connection per endpoint so far (each endpoint keeps its own).
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 3);
    // That request asked for its connection to close: the next one opens another.
    let request = http::Request::get("/d").body(Empty::new()).unwrap();
    assert_eq!(empty.oneshot(request).await.unwrap().status(), 200);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 4);

    let heads = seen.heads.lock().unwrap();
    let bodies = seen.bodies.lock().unwrap();
    assert!(heads[0].contains("content-length: 12\r\n"), "{}", heads[0]);
    assert_eq!(bodies[0], b"twelve bytes");
    assert!(
        heads[1].contains("transfer-encoding: chunked\r\n"),
        "{}",
        heads[1]
    );
    assert!(!heads[1].contains("content-length"), "{}", heads[1]);
    // An empty data frame must not end the chunked body early.
    assert_eq!(
        bodies[1],
        b"6\r\nstream\r\n3\r\ned \r\n4\r\nbody\r\n0\r\n\r\n"
    );
    assert!(heads[2].contains("content-length: 0\r\n"), "{}", heads[2]);
}

/// A stream of the given items, without pulling in a stream crate.
fn futures_util_stream<T: Unpin>(items: [T; 4]) -> impl futures_core::Stream<Item = T> + Unpin {
    struct Iter<I>(I);
    impl<I: Iterator + Unpin> futures_core::Stream for Iter<I> {
        type Item = I::Item;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<I::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

#[tokio::test]
async fn an_early_answer_ends_the_upload_and_its_connection() {
    let (addr, seen) = scripted(vec![
        (
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig",
            false,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
    ])
    .await;
    // A body that sends one frame and then never ends.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(1);
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"first"))))
        .await
        .unwrap();
    let body = StreamBody::new(ReceiverStream(rx));
    let uploads = endpoint::<StreamBody<ReceiverStream>>(addr);
    let request = http::Request::post("/upload")
        .header("x-early", "1")
        .body(body)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), uploads.clone().oneshot(request))
        .await
        .expect("the answer does not wait for the body")
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "big"
    );
    drop(tx);
    // The server never read that body: the connection is out of step and not used again.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(tx);
    let request = http::Request::post("/next")
        .body(StreamBody::new(ReceiverStream(rx)))
        .unwrap();
    let response = uploads.oneshot(request).await.unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "ok"
    );
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
}

struct ReceiverStream(tokio::sync::mpsc::Receiver<Result<http_body::Frame<Bytes>, std::io::Error>>);

impl futures_core::Stream for ReceiverStream {
    type Item = Result<http_body::Frame<Bytes>, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::test]
async fn a_malformed_response_is_an_error_naming_the_instance_and_what_broke() {
    let cases: [(&[u8], &str); 4] = [
        (b"HTTP/1.1 abc OK\r\n\r\n", "invalid status line"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            "conflicting content-length",
        ),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not HTTP/1.x"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            "upgrades are not supported",
        ),
    ];
    for (answer, expected) in cases {
        let (addr, _) = scripted(vec![(answer, false)]).await;
        let error = get(&endpoint(addr), http::Method::GET).await.unwrap_err();
        let exchange = error
            .downcast_ref::<ExchangeError>()
            .expect("an ExchangeError");
        assert_eq!(exchange.addr(), addr);
        let text = error.to_string();
        assert!(text.contains(expected), "{text}");
        assert!(text.contains(&addr.to_string()), "{text}");
    }
    // Closed before a single byte of an answer: said so, and that it may have been processed.
    let (addr, _) = scripted(vec![]).await;
    let error = get(&endpoint(addr), http::Method::GET).await.unwrap_err();
    assert!(error.to_string().contains("without answering"), "{error}");
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_and_a_body_dropped_half_way_closes_its_connection() {
    let (addr, seen) = scripted(vec![
        // Promises 10 bytes, sends 4, closes.
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nsome", true),
        // Promises 10 bytes, sends 4, keeps the connection.
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nsome", false),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nkept", false),
    ])
    .await;
    let endpoint = endpoint(addr);
    let error = get(&endpoint, http::Method::GET).await.unwrap_err();
    assert!(
        error.to_string().contains("closed before the body's end"),
        "{error}"
    );
    // Half a body read, then dropped: the rest would arrive on a connection nobody reads.
    let request = http::Request::get("/half").body(Empty::new()).unwrap();
    let mut body = endpoint.clone().oneshot(request).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "some");
    drop(body);
    let (_, ok, _) = get(&endpoint, http::Method::GET).await.unwrap();
    assert_eq!(ok, "ok");
    // A body dropped unread but already all there keeps its connection.
    let request = http::Request::get("/unread").body(Empty::new()).unwrap();
    let response = endpoint.clone().oneshot(request).await.unwrap();
    drop(response);
    let (_, kept, _) = get(&endpoint, http::Method::GET).await.unwrap();
    assert_eq!(kept, "kept");
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        3,
        "closed by the server, dropped half-way, kept"
    );
}

/// Bytes no two positions of which repeat a short pattern, so a lost or doubled chunk shows.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn large_bodies_arrive_intact_by_length_and_chunked() {
    let body = noise(3 * 1024 * 1024 + 17);
    let mut sized =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    sized.extend_from_slice(&body);
    let mut chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for piece in body.chunks(100_003) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (sized, chunked): (&'static [u8], &'static [u8]) = (Vec::leak(sized), Vec::leak(chunked));
    let (addr, seen) = scripted(vec![(sized, false), (chunked, false), (sized, false)]).await;
    let endpoint = endpoint(addr);
    for round in 0..3 {
        let (status, got, _) = get(&endpoint, http::Method::GET).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(got.len(), body.len(), "round {round}");
        assert!(got == body, "round {round}: the bytes differ");
    }
    assert_eq!(
        seen.accepted.load(Ordering::SeqCst),
        1,
        "one kept connection"
    );
}

/// A server that answers one request per connection with an empty 200, then (if
/// `half_close`) shuts its side, and reports when the client closed the connection.
async fn watching_server(
    half_close: bool,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, closes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_until(&mut stream, &mut buf, b"\r\n\r\n")
                    .await
                    .is_none()
                {
                    return;
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                stream.write_all(answer).await.unwrap();
                if half_close {
                    stream.shutdown().await.unwrap();
                }
                while fill(&mut stream, &mut buf).await {}
                let _ = closed.send(());
            });
        }
    });
    (addr, closes)
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed_after_the_idle_timeout_and_closed_ones_at_the_next_sweep() {
    let config = |timeout| Http1Config::default().idle_timeout(timeout);
    let get = |endpoint: HttpEndpoint<Empty<Bytes>>| async move {
        let request = http::Request::get("/x").body(Empty::new()).unwrap();
        let response = endpoint.oneshot(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
    };

    // Idle for its timeout: closed between 1 and 1.5 times it after its answer.
    let (addr, mut closes) = watching_server(false).await;
    let endpoint = HttpEndpoint::http1(
        &Instance::new("idle", addr),
        config(Some(Duration::from_secs(2))),
    );
    get(endpoint.clone()).await;
    let answered = tokio::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(60), closes.recv()).await;
    assert!(closed.is_ok(), "still open after 60 s");
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_secs(2) && idle <= Duration::from_secs(3),
        "{idle:?}"
    );

    // Without a timeout it stays.
    let (addr, mut closes) = watching_server(false).await;
    let endpoint = HttpEndpoint::http1(&Instance::new("kept", addr), config(None));
    get(endpoint.clone()).await;
    let kept = tokio::time::timeout(Duration::from_secs(600), closes.recv()).await;
    assert!(
        kept.is_err(),
        "an idle connection was closed without a timeout"
    );

    // One the server closed goes at the next sweep (half the 10 s timeout), not in
    // CLOSE_WAIT until it would be used.
    let (addr, mut closes) = watching_server(true).await;
    let endpoint = HttpEndpoint::http1(
        &Instance::new("closed", addr),
        config(Some(Duration::from_secs(10))),
    );
    get(endpoint.clone()).await;
    let answered = tokio::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(60), closes.recv()).await;
    assert!(closed.is_ok(), "still open after 60 s");
    assert!(
        answered.elapsed() <= Duration::from_secs(5),
        "{:?}",
        answered.elapsed()
    );
    drop(endpoint);
}
