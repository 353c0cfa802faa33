//! The tonic example's greeter: three servers behind a seawall-balanced tonic client.

use std::sync::atomic::Ordering;
use std::time::Duration;

use seawall::discover::Registry;
use seawall::http::headers::parse_grpc_timeout;

use crate::tonic_example::{Server, client, run, say_hello};

fn start(registry: &Registry) -> Vec<Server> {
    ["greeter-1", "greeter-2", "greeter-3"]
        .into_iter()
        .map(|id| Server::start(id, registry).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_server_mid_stream_of_calls_fails_no_call() {
    let registry = Registry::new();
    let mut servers = start(&registry);
    let (client, balance) = client(&registry, Duration::from_secs(2)).unwrap();

    let mut victim = servers.remove(1);
    let victim_served = std::sync::Arc::clone(&victim.served);
    let (replies, failures) = run(client, 8, 100, 300, move || victim.kill()).await;

    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(replies.len(), 800);
    let before_kill = victim_served.load(Ordering::Relaxed);
    assert!(before_kill > 0, "the victim served calls before it died");
    // A call greeter-2 executed but could not answer before it died was answered elsewhere:
    // the replies from greeter-2 are at most what it executed.
    let by_victim = replies
        .iter()
        .filter(|r| r.served_by == "greeter-2")
        .count() as u64;
    assert!(
        by_victim <= before_kill,
        "{by_victim} replies, {before_kill} executed"
    );
    let survivors: u64 = servers
        .iter()
        .map(|s| s.served.load(Ordering::Relaxed))
        .sum();
    assert_eq!(
        survivors + by_victim,
        800,
        "every other call was answered by a survivor"
    );

    // The deadline reached every server as a `grpc-timeout` no longer than the per-try timeout.
    for reply in &replies {
        let timeout = parse_grpc_timeout(&reply.grpc_timeout).unwrap();
        assert!(timeout <= Duration::from_millis(300), "{timeout:?}");
        assert!(timeout > Duration::ZERO);
    }
    drop(balance);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_elsewhere_and_trips_the_endpoint_breaker() {
    let registry = Registry::new();
    let servers = start(&registry);
    let (mut client, balance) = client(&registry, Duration::from_secs(2)).unwrap();
    servers[0].unavailable.store(true, Ordering::Relaxed);

    for i in 0..60 {
        let reply = say_hello(&mut client, &format!("caller {i}"))
            .await
            .unwrap();
        assert_ne!(reply.served_by, "greeter-1");
    }
    let ejected = balance.ejection_stats().map(|s| s.ejected);
    assert_eq!(
        ejected,
        Some(1),
        "greeter-1's breaker opened on UNAVAILABLE"
    );
    assert_eq!(servers[0].served.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_in_its_trailers_counts_against_its_instance() {
    use crate::tonic_example::say_hellos;

    let registry = Registry::new();
    let servers = start(&registry);
    let (mut client, balance) = client(&registry, Duration::from_secs(2)).unwrap();
    // Every instance found, and a healthy stream from each first: trailers say OK.
    crate::support::eventually("3 endpoints", || balance.endpoints().len() == 3).await;
    for i in 0..3 {
        let replies = say_hellos(&mut client, &format!("warm-up {i}"))
            .await
            .unwrap();
        assert_eq!(replies.len(), 3);
    }
    assert_eq!(balance.ejection_stats().map(|s| s.ejected), Some(0));

    // greeter-1 now sends one message and then UNAVAILABLE, in the trailers: the response
    // head said nothing was wrong, so only the trailers can trip its breaker.
    servers[0].broken_streams.store(true, Ordering::Relaxed);
    let mut broken = 0;
    for i in 0..30 {
        match say_hellos(&mut client, &format!("caller {i}")).await {
            Ok(replies) => {
                assert_eq!(replies.len(), 3);
                assert_ne!(replies[0].served_by, "greeter-1");
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                broken += 1;
            }
        }
    }
    // The breaker (at least 3 calls, 60 % failed) ejects greeter-1 after its second broken
    // stream (its warm-up stream succeeded: 2 of 3); round robin does not reach it again.
    assert_eq!(broken, 2, "greeter-1 was ejected after 2 broken streams");
    assert_eq!(balance.ejection_stats().map(|s| s.ejected), Some(1));
    // No call stays counted in flight once its stream ended (the balancer's verdict task
    // records the last one moments after its trailers).
    crate::support::eventually("every stream recorded", || {
        balance
            .endpoints()
            .iter()
            .map(|e| e.in_flight())
            .sum::<usize>()
            == 0
    })
    .await;
}
