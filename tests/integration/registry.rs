//! The in-process registry: watchers, heartbeats and TTL expiry, with a paused clock.

use std::time::Duration;

use futures_core::Stream;
use seawall::balance::{Balance, RoundRobin};
use seawall::discover::{Change, DiscoverExt, Instance, Registry};
use tokio::time::Instant;
use tokio_test::{assert_pending, task};
use tower::ServiceExt;

use crate::support::{Named, eventually};

fn inst(id: &str, port: u16) -> Instance {
    Instance::new(id, ([127, 0, 0, 1], port).into())
}

const TTL: Duration = Duration::from_secs(3);

type Item = Option<Result<Change<String, Instance>, std::convert::Infallible>>;

async fn next(watch: &mut seawall::discover::Watch) -> Change<String, Instance> {
    let item: Item = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *watch).poll_next(cx)).await;
    item.expect("watch never ends").unwrap()
}

fn key(change: &Change<String, Instance>) -> (&'static str, String) {
    match change {
        Change::Insert(id, _) => ("insert", id.clone()),
        Change::Remove(id) => ("remove", id.clone()),
    }
}

#[tokio::test(start_paused = true)]
async fn a_watcher_gets_the_current_set_then_changes() {
    let registry = Registry::new();
    registry.register("users", inst("u1", 1), TTL).unwrap();
    registry.register("users", inst("u2", 2), TTL).unwrap();
    registry.register("other", inst("o1", 3), TTL).unwrap();

    let mut watch = registry.watch("users");
    let mut first = vec![key(&next(&mut watch).await), key(&next(&mut watch).await)];
    first.sort();
    assert_eq!(first, [("insert", "u1".into()), ("insert", "u2".into())]);

    registry.register("users", inst("u3", 4), TTL).unwrap();
    assert_eq!(key(&next(&mut watch).await), ("insert", "u3".into()));
    assert!(registry.deregister("users", "u1"));
    assert_eq!(key(&next(&mut watch).await), ("remove", "u1".into()));
    // A new address under the same id replaces the instance.
    registry.register("users", inst("u2", 20), TTL).unwrap();
    match next(&mut watch).await {
        Change::Insert(id, instance) => {
            assert_eq!(id, "u2");
            assert_eq!(instance.addr().port(), 20);
        }
        Change::Remove(id) => panic!("unexpected removal of {id}"),
    }
    // Other services do not wake this watcher with changes.
    registry.register("other", inst("o2", 5), TTL).unwrap();
    let mut polled = task::spawn(next(&mut watch));
    assert_pending!(polled.poll());
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_an_instance_and_silence_expires_it_at_its_ttl() {
    let registry = Registry::new();
    registry.register("users", inst("u1", 1), TTL).unwrap();
    let mut watch = registry.watch("users");
    assert_eq!(key(&next(&mut watch).await), ("insert", "u1".into()));

    // Heartbeats every 2 s for 10 s keep it registered.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        registry.heartbeat("users", "u1").unwrap();
    }
    assert_eq!(registry.instances("users").len(), 1);

    // Then silence: it leaves exactly TTL after the last heartbeat, and the watcher is told
    // without any other registry activity.
    let last_beat = Instant::now();
    let change = next(&mut watch).await;
    assert_eq!(key(&change), ("remove", "u1".into()));
    assert_eq!(last_beat.elapsed(), TTL);
    let error = registry.heartbeat("users", "u1").unwrap_err();
    assert!(error.is_unknown_instance());
    assert!(error.to_string().contains("register it again"));
}

#[tokio::test(start_paused = true)]
async fn a_registration_task_heartbeats_until_stopped() {
    let registry = Registry::new();
    let beat = registry
        .spawn_heartbeat("users", inst("u1", 1), TTL, Duration::from_secs(1))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(registry.instances("users").len(), 1, "kept alive for 30 s");

    beat.stop(); // the process "crashes": no more heartbeats
    let stopped = Instant::now();
    let mut watch = registry.watch("users");
    assert_eq!(key(&next(&mut watch).await), ("insert", "u1".into()));
    assert_eq!(key(&next(&mut watch).await), ("remove", "u1".into()));
    assert!(stopped.elapsed() <= TTL, "gone within its TTL");

    let beat = registry
        .spawn_heartbeat("users", inst("u2", 2), TTL, Duration::from_secs(1))
        .unwrap();
    assert!(beat.deregister(), "clean shutdown deregisters at once");
    assert!(registry.instances("users").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_silent_instance_leaves_the_balancer_within_its_ttl() {
    let registry = Registry::new();
    let _a = registry
        .spawn_heartbeat("users", inst("a", 1), TTL, Duration::from_secs(1))
        .unwrap();
    let b = registry
        .spawn_heartbeat("users", inst("b", 2), TTL, Duration::from_secs(1))
        .unwrap();
    let discover = registry
        .watch("users")
        .map_service(|i: Instance| Named::new(if i.id() == "a" { "a" } else { "b" }));
    let balance = Balance::builder(discover)
        .picker(RoundRobin::new())
        .build()
        .unwrap();
    eventually("both in rotation", || balance.endpoints().len() == 2).await;

    b.stop();
    let stopped = Instant::now();
    eventually("b out of rotation", || balance.endpoints().len() == 1).await;
    assert!(stopped.elapsed() <= TTL + Duration::from_millis(5));
    for _ in 0..5 {
        assert_eq!(balance.clone().oneshot(()).await.unwrap(), "a");
    }
}

#[test]
fn bad_registrations_are_errors() {
    let registry = Registry::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert!(
            registry
                .register("s", inst("a", 1), Duration::ZERO)
                .is_err()
        );
        assert!(registry.register("s", inst("", 1), TTL).is_err());
        assert!(registry.heartbeat("s", "nope").is_err());
        assert!(!registry.deregister("s", "nope"));
    });
    // Outside a runtime, the heartbeat task cannot be spawned: an error, not a panic.
    let error = registry
        .spawn_heartbeat("s", inst("a", 1), TTL, Duration::from_secs(1))
        .unwrap_err();
    assert!(error.to_string().contains("Tokio runtime"));
}
