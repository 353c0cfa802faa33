//! `Http1Server` against raw TCP clients that send exactly what a test scripts: kept and
//! pipelined requests, every request body framing, 100-continue, HTTP/1.0, heads it must
//! refuse, bodies the service leaves unread, failing services and bodies, the header-read
//! timeout and graceful shutdown.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use seawall::BoxError;
use seawall::http::{Http1Server, RequestBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

type Body = Either<Full<Bytes>, StreamBody<futures_util_stream::Frames>>;

/// A tiny stream of frames, so tests need no extra crate.
mod futures_util_stream {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::Frame;

    pub struct Frames(pub VecDeque<Result<Frame<Bytes>, std::io::Error>>);

    impl futures_core::Stream for Frames {
        type Item = Result<Frame<Bytes>, std::io::Error>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.0.pop_front())
        }
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(body.into())));
    *response.status_mut() = status;
    response
}

fn frames(frames: Vec<Result<Frame<Bytes>, std::io::Error>>) -> Response<Body> {
    Response::new(Either::Right(StreamBody::new(futures_util_stream::Frames(
        frames.into(),
    ))))
}

/// The test service, by path:
/// - `/echo`: reads the whole body, answers it back (trailer names in `x-trailers`);
/// - `/stream`: answers `hello world` in two chunks of unknown total length, then a trailer;
/// - `/ignore`: answers 413 without reading the body;
/// - `/fail`: fails; `/broken`: a body that breaks after its first chunk;
/// - `/slow`: answers after 500 ms.
async fn handle(request: Request<RequestBody>) -> Result<Response<Body>, BoxError> {
    match request.uri().path() {
        "/echo" => {
            let collected = request.into_body().collect().await?;
            let trailers = collected.trailers().map(|t| {
                t.keys()
                    .map(|k| k.as_str().to_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            });
            let mut response = full(StatusCode::OK, collected.to_bytes());
            if let Some(names) = trailers {
                response
                    .headers_mut()
                    .insert("x-trailers", HeaderValue::from_str(&names)?);
            }
            Ok(response)
        }
        "/stream" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-sum", HeaderValue::from_static("11"));
            Ok(frames(vec![
                Ok(Frame::data(Bytes::from_static(b"hello "))),
                Ok(Frame::data(Bytes::from_static(b"world"))),
                Ok(Frame::trailers(trailers)),
            ]))
        }
        "/ignore" => Ok(full(StatusCode::PAYLOAD_TOO_LARGE, "too large")),
        "/fail" => Err("the handler failed".into()),
        "/broken" => Ok(frames(vec![
            Ok(Frame::data(Bytes::from_static(b"first"))),
            Err(std::io::Error::other("the source went away")),
        ])),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(full(StatusCode::OK, "slow"))
        }
        _ => Ok(full(StatusCode::NOT_FOUND, "")),
    }
}

/// A server on a free loopback port; counts accepted connections. `stop` tells every
/// connection to shut down gracefully; each connection's result goes to `ended`.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<Notify>,
    ended: tokio::sync::mpsc::UnboundedReceiver<Result<(), String>>,
}

async fn server(config: Http1Server) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(Notify::new());
    let (report, ended) = tokio::sync::mpsc::unbounded_channel();
    let (count, stopping) = (accepted.clone(), stop.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let service = tower::service_fn(handle);
            let connection = config.serve(stream, service);
            let (stopping, report) = (stopping.clone(), report.clone());
            tokio::spawn(async move {
                let mut connection = pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    () = stopping.notified() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                let _ = report.send(result.map_err(|e| e.to_string()));
            });
        }
    });
    Server {
        addr,
        accepted,
        stop,
        ended,
    }
}

/// Writes `bytes`, then reads until the server closes (at most 5 s).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "still open after 5 s: {}",
        String::from_utf8_lossy(&answer)
    );
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads until `answer` contains `needle`.
async fn read_until(stream: &mut TcpStream, answer: &mut String, needle: &str) {
    let mut buf = [0u8; 4096];
    while !answer.contains(needle) {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before {needle:?}: {answer:?}");
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn keeps_the_connection_and_answers_pipelined_requests_in_order() {
    let server = server(Http1Server::new()).await;
    let answer = exchange(
        server.addr,
        b"GET /echo HTTP/1.1\r\nhost: a\r\n\r\n\
          POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello\
          GET /stream HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    let responses: Vec<&str> = answer.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(responses.len(), 3, "{answer}");
    // An empty body says its length; a known one too; the last is chunked with its trailer.
    assert!(responses[0].starts_with("200 OK\r\n"), "{answer}");
    assert!(responses[0].contains("content-length: 0\r\n"), "{answer}");
    assert!(responses[0].contains("\r\ndate: "), "{answer}");
    assert!(responses[1].contains("content-length: 5\r\n"), "{answer}");
    assert!(responses[1].ends_with("\r\n\r\nhello"), "{answer}");
    assert!(
        responses[2].contains("transfer-encoding: chunked\r\n"),
        "{answer}"
    );
    assert!(responses[2].contains("connection: close\r\n"), "{answer}");
    assert!(
        responses[2].ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\nx-sum: 11\r\n\r\n"),
        "{answer}"
    );
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn chunked_request_bodies_and_their_trailers_reach_the_service() {
    let server = server(Http1Server::new()).await;
    let answer = exchange(
        server.addr,
        b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-check: 1\r\n\r\n\
          GET /echo HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    let responses: Vec<&str> = answer.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(responses.len(), 2, "{answer}");
    assert!(responses[0].contains("x-trailers: x-check\r\n"), "{answer}");
    assert!(responses[0].ends_with("\r\n\r\nhello world"), "{answer}");
    assert!(responses[1].starts_with("200 OK"), "{answer}");
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let server = server(Http1Server::new()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\
              connection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    read_until(&mut stream, &mut answer, "\r\n\r\n").await;
    assert_eq!(answer, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    let rest = read_to_close(&mut stream).await;
    assert!(rest.starts_with("HTTP/1.1 200 OK"), "{rest}");
    assert!(rest.ends_with("\r\n\r\nhello"), "{rest}");
}

#[tokio::test]
async fn malformed_and_smuggling_prone_heads_get_an_answer_and_a_close() {
    let server = server(Http1Server::new()).await;
    let long = format!(
        "GET /echo HTTP/1.1\r\nhost: a\r\nx-long: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let many = format!(
        "GET /echo HTTP/1.1\r\nhost: a\r\n{}\r\n",
        (0..101)
            .map(|i| format!("x-{i}: 1\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, &[u8], &str)> = vec![
        ("not a header", b"GET /echo HTTP/1.1\r\nhost: a\r\nnot a header\r\n\r\n", "400"),
        ("not HTTP", b"HELLO\r\n\r\n", "400"),
        ("no Host", b"GET /echo HTTP/1.1\r\n\r\n", "400"),
        ("two Hosts", b"GET /echo HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", "400"),
        (
            "length and chunked",
            b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "400",
        ),
        (
            "not chunked last",
            b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            "400",
        ),
        (
            "two lengths",
            b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            "400",
        ),
        (
            "a length that is not a number",
            b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: +3\r\n\r\nabc",
            "400",
        ),
        ("head over 64 KiB", long.as_bytes(), "431"),
        ("101 fields", many.as_bytes(), "431"),
    ];
    for (what, request, status) in cases {
        let answer = exchange(server.addr, request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {answer:?}"
        );
        assert!(
            answer.contains("connection: close\r\n"),
            "{what}: {answer:?}"
        );
        // The body says why, and its length is right.
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{what}: {answer:?}"
        );
    }
    // And it keeps serving.
    let answer = exchange(
        server.addr,
        b"GET /echo HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}

#[tokio::test]
async fn http_1_0_clients_get_close_delimited_bodies_or_kept_connections_as_they_ask() {
    let server = server(Http1Server::new()).await;
    // No keep-alive asked: the connection closes, and a body of unknown length is not
    // chunked (HTTP/1.0 has no chunks) but ends with the connection.
    let answer = exchange(server.addr, b"GET /stream HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(!answer.contains("transfer-encoding"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello world"), "{answer}");
    // Keep-alive asked: kept, and said so.
    let answer = exchange(
        server.addr,
        b"GET /echo HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET /echo HTTP/1.0\r\n\r\n",
    )
    .await;
    let responses: Vec<&str> = answer.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(responses.len(), 2, "{answer}");
    assert!(
        responses[0].contains("connection: keep-alive\r\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_body_the_service_leaves_unread_closes_the_connection_after_a_whole_answer() {
    let server = server(
        // Lingering after the answer is bounded by the header-read timeout.
        Http1Server::new().header_read_timeout(Duration::from_secs(2)),
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let body = vec![b'x'; 512 * 1024];
    let head = format!(
        "POST /ignore HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The client goes on sending the body it announced, and a request after it.
    let (mut read, mut write) = stream.into_split();
    let sender = tokio::spawn(async move {
        let _ = write.write_all(&body).await;
        let _ = write
            .write_all(b"GET /echo HTTP/1.1\r\nhost: a\r\n\r\n")
            .await;
        write
    });
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut answer))
        .await
        .expect("closed within 5 s")
        .expect("closed cleanly, not reset");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\ntoo large"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    drop(sender.await);
}

#[tokio::test]
async fn head_requests_get_the_length_and_no_body() {
    let server = server(Http1Server::new()).await;
    let answer = exchange(
        server.addr,
        b"HEAD /stream HTTP/1.1\r\nhost: a\r\n\r\n\
          HEAD /ignore HTTP/1.1\r\nhost: a\r\n\r\n\
          GET /echo HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    let responses: Vec<&str> = answer.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(responses.len(), 3, "{answer}");
    assert!(responses[0].ends_with("\r\n\r\n"), "{answer}");
    assert!(!responses[0].contains("transfer-encoding"), "{answer}");
    assert!(responses[1].contains("content-length: 9\r\n"), "{answer}");
    assert!(responses[1].ends_with("\r\n\r\n"), "{answer}");
    assert!(responses[2].starts_with("200 OK"), "{answer}");
}

#[tokio::test]
async fn a_failing_service_gets_500_and_a_broken_body_cuts_the_connection() {
    let mut server = server(Http1Server::new()).await;
    let answer = exchange(server.addr, b"GET /fail HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 500 "), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    let ended = server.ended.recv().await.unwrap().unwrap_err();
    assert!(ended.contains("the handler failed"), "{ended}");

    // The head and the first chunk went out; the chunked body never ends, so the client
    // knows it is incomplete.
    let answer = exchange(server.addr, b"GET /broken HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n5\r\nfirst\r\n"), "{answer}");
    let ended = server.ended.recv().await.unwrap().unwrap_err();
    assert!(ended.contains("the source went away"), "{ended}");
}

#[tokio::test(start_paused = true)]
async fn the_header_read_timeout_cuts_waiting_connections_and_spares_slow_answers() {
    let timeout = Duration::from_secs(2);
    let mut server = server(Http1Server::new().header_read_timeout(timeout)).await;

    // A head that never finishes: cut between 1 and 1.5 timeouts after the connection opened.
    let started = Instant::now();
    let answer = exchange(server.addr, b"GET /echo HTTP/1.1\r\nhost: a\r\nx-slow: ").await;
    let waited = started.elapsed();
    assert_eq!(answer, "");
    assert!(waited >= timeout && waited <= timeout * 3 / 2, "{waited:?}");
    let ended = server.ended.recv().await.unwrap().unwrap_err();
    assert!(ended.contains("header-read timeout"), "{ended}");

    // An answer slower than 1.5 timeouts is not cut; the idle connection after it is, the
    // timeout after the answer.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    read_until(&mut stream, &mut answer, "\r\n\r\nslow").await;
    let answered = Instant::now();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let rest = read_to_close(&mut stream).await;
    let idle = answered.elapsed();
    assert_eq!(rest, "");
    assert!(idle >= timeout && idle <= timeout * 3 / 2, "{idle:?}");
    // Closing an idle kept-alive connection is no error.
    assert_eq!(server.ended.recv().await.unwrap(), Ok(()));
}

// Paused time: the 100 ms wait below ends only once every task is idle, so the slow request
// has surely reached the service (a real sleep would only hope so).
#[tokio::test(start_paused = true)]
async fn graceful_shutdown_finishes_the_request_in_flight_and_closes_idle_connections() {
    let mut server = server(Http1Server::new()).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /echo HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    read_until(&mut idle, &mut answer, "content-length: 0\r\n\r\n").await;

    let mut busy = TcpStream::connect(server.addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    // The request is at the service when the server is told to stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop.notify_waiters();
    assert_eq!(read_to_close(&mut idle).await, "");
    let answer = read_to_close(&mut busy).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nslow"), "{answer}");
    for _ in 0..2 {
        assert_eq!(server.ended.recv().await.unwrap(), Ok(()));
    }
}
