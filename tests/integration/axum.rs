//! The axum example app, served over loopback and driven through a real axum `Router`: every
//! seawall error reaches the client as the status the `seawall::axum` mapping promises.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::axum_example::{Example, Settings};

/// One request to the app: status, `Retry-After` and body.
async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
) -> (StatusCode, Option<String>, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        retry_after,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, Option<String>, String) {
    send(addr, Method::GET, path).await
}

fn settings() -> Settings {
    Settings {
        report_deadline: Duration::from_millis(300),
        report_bulkhead: 2,
        legacy_open_for: Duration::from_secs(30),
        quote_deadline: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn a_handler_calling_an_upstream_maps_no_endpoints_to_503() {
    let example = Example::start(([127, 0, 0, 1], 0).into(), settings())
        .await
        .unwrap();
    let addr = example.addr;

    let mut served_by = BTreeSet::new();
    for _ in 0..6 {
        let (status, _, body) = get(addr, "/quote").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        served_by.insert(json["served_by"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        served_by.len(),
        3,
        "round robin reaches every instance: {served_by:?}"
    );

    // Every instance leaves the registry: the balancer has nothing to call.
    for (id, _, _) in &example.quotes {
        example.registry.deregister("quotes", id);
    }
    let mut last = None;
    for _ in 0..200 {
        let answer = get(addr, "/quote").await;
        if answer.0 == StatusCode::SERVICE_UNAVAILABLE {
            last = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, retry_after, body) = last.expect("503 once the registry is empty");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        body.contains("no endpoints for upstream `quotes`"),
        "{body}"
    );
    example.stop();
}

#[tokio::test]
async fn layers_on_a_route_answer_504_past_the_deadline_and_503_when_the_bulkhead_is_full() {
    let example = Example::start(([127, 0, 0, 1], 0).into(), settings())
        .await
        .unwrap();
    let addr = example.addr;

    let (status, _, body) = get(addr, "/report?ms=5").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "report ready after 5 ms\n");

    // Two calls that would work for a minute fill the bulkhead of two; the deadline ends them.
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(get(addr, "/report?ms=60000")))
        .collect();
    let mut rejected = None;
    for _ in 0..250 {
        let answer = get(addr, "/report?ms=0").await;
        if answer.0 == StatusCode::SERVICE_UNAVAILABLE {
            rejected = Some(answer);
            break;
        }
        assert_eq!(
            answer.0,
            StatusCode::OK,
            "before the bulkhead fills: {}",
            answer.2
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (_, retry_after, _) = rejected.expect("a third call is rejected while two are in flight");
    assert_eq!(retry_after.as_deref(), Some("1"));

    for call in slow {
        let (status, retry_after, body) = call.await.unwrap();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
        assert_eq!(retry_after, None);
        assert!(body.contains("deadline exceeded"), "{body}");
    }
    // The bulkhead frees its permits with the calls.
    assert_eq!(get(addr, "/report?ms=0").await.0, StatusCode::OK);
    example.stop();
}

#[tokio::test]
async fn a_breaker_on_a_route_opens_on_5xx_and_answers_503_with_retry_after() {
    let example = Example::start(([127, 0, 0, 1], 0).into(), settings())
        .await
        .unwrap();
    let addr = example.addr;
    assert_eq!(get(addr, "/legacy").await.0, StatusCode::OK);

    let (status, _, body) = send(addr, Method::POST, "/legacy/outage?on=true").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(example.legacy_failing.load(Ordering::Relaxed));
    // minimum_calls(5) at 50 %: 1 success then failures; the breaker opens on the 5th call.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, retry_after, _) = get(addr, "/legacy").await;
        statuses.push((status.as_u16(), retry_after));
    }
    assert_eq!(
        statuses,
        [
            (500, None),
            (500, None),
            (500, None),
            (500, None),
            (503, Some("30".to_owned())),
            (503, Some("30".to_owned())),
        ]
    );
    assert_eq!(
        example.legacy_breaker.state(),
        seawall::breaker::State::Open
    );
    example.stop();
}
