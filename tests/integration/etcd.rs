//! etcd discovery and registration against a real etcd, started here on free 127.0.0.1 ports
//! with a temporary data directory and stopped by its PID.
//!
//! Without an `etcd` binary these tests skip with a printed reason, unless
//! `SEAWALL_REQUIRE_ETCD=1` (set by `.ci/run`), where they fail.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, CompactionOptions, GetOptions, PutOptions};
use futures_core::Stream;
use seawall::discover::etcd::{EtcdConfig, EtcdRegistration, EtcdWatch};
use seawall::discover::{Change, Instance};

/// One etcd server this test started.
struct Etcd {
    binary: PathBuf,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

impl Etcd {
    /// Starts etcd, or returns `None` (after saying why) when there is none and it is not
    /// required.
    async fn start(name: &str) -> Option<Self> {
        let binary = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("etcd"))
                .find(|path| path.is_file())
        });
        let Some(binary) = binary else {
            if std::env::var("SEAWALL_REQUIRE_ETCD").is_ok_and(|v| v == "1") {
                panic!(
                    "SEAWALL_REQUIRE_ETCD=1 but no `etcd` on PATH (Debian: apt-get install etcd-server)"
                );
            }
            eprintln!(
                "skipping {name}: no `etcd` binary on PATH (Debian: apt-get install etcd-server)"
            );
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "seawall-etcd-{}-{name}-{}",
            std::process::id(),
            free_port()
        ));
        let mut etcd = Self {
            binary,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        etcd.run_on(etcd.client_port).await;
        Some(etcd)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Runs etcd on its data directory, serving clients on `client_port`, and waits until it
    /// answers.
    async fn run_on(&mut self, client_port: u16) {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&self.binary)
            .args(["--name", "seawall-test", "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("seawall-test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(mut c) = Client::connect([client.as_str()], None).await {
                if c.get("/", None).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etcd did not answer on {client} within 10 s");
    }

    /// Stops the etcd this test started, by its PID.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn client(&self) -> Client {
        Client::connect([self.url()], None).await.unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(etcd: &Etcd) -> EtcdConfig {
    EtcdConfig::new([etcd.url()])
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(2))
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
}

/// The next change from `watch`, within 15 s.
async fn next(watch: &mut EtcdWatch) -> Change<String, Instance> {
    let change = tokio::time::timeout(
        Duration::from_secs(15),
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut *watch).poll_next(cx)),
    )
    .await
    .expect("a change within 15 s")
    .expect("the watch never ends");
    match change {
        Ok(change) => change,
        Err(never) => match never {},
    }
}

/// Writes `key = value` through `client`.
async fn put(client: &mut Client, key: &str, value: &str) {
    client.put(key, value, None).await.unwrap();
}

fn describe(change: &Change<String, Instance>) -> String {
    match change {
        Change::Insert(id, instance) => {
            format!("+{id}@{}w{}", instance.addr().port(), instance.weight())
        }
        Change::Remove(id) => format!("-{id}"),
    }
}

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_appears_stays_while_kept_alive_and_expires_when_stopped() {
    let Some(etcd) = Etcd::start("register").await else {
        return;
    };
    let config = config(&etcd);
    let mut watch = EtcdWatch::new(&config, "users").unwrap();

    let one = Instance::new("users-1", addr(9001)).with_weight(2);
    let registration = EtcdRegistration::register(&config, "users", &one, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(registration.key(), "/services/users/users-1");
    assert_eq!(describe(&next(&mut watch).await), "+users-1@9001w2");

    // Twice the TTL later the key is still there: the keep-alives work.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut client = etcd.client().await;
    let listed = client
        .get("/services/users/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(listed.kvs().len(), 1);
    assert_eq!(
        listed.kvs()[0].value_str().unwrap(),
        "127.0.0.1:9001;weight=2"
    );

    // No more keep-alives: etcd deletes the key when the TTL runs out.
    registration.stop();
    assert_eq!(describe(&next(&mut watch).await), "-users-1");

    // Deregistering deletes the key at once.
    let two = Instance::new("users-2", addr(9002));
    let registration = EtcdRegistration::register(&config, "users", &two, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(describe(&next(&mut watch).await), "+users-2@9002w1");
    let started = tokio::time::Instant::now();
    registration.deregister().await.unwrap();
    assert_eq!(describe(&next(&mut watch).await), "-users-2");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a revoke, not a 30 s expiry"
    );
    assert_eq!(watch.errors(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_reconnects_when_etcd_restarts_and_misses_nothing() {
    let Some(mut etcd) = Etcd::start("restart").await else {
        return;
    };
    let config = config(&etcd);
    let mut client = etcd.client().await;
    put(&mut client, "/services/users/users-1", "127.0.0.1:9001").await;
    // A junk value is skipped, a key of another service ignored.
    put(&mut client, "/services/users/users-bad", "not an address").await;
    put(&mut client, "/services/usersx/users-9", "127.0.0.1:9009").await;
    let mut watch = EtcdWatch::new(&config, "users").unwrap();
    assert_eq!(describe(&next(&mut watch).await), "+users-1@9001w1");

    etcd.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let port = etcd.client_port;
    etcd.run_on(port).await;

    let mut client = etcd.client().await;
    put(
        &mut client,
        "/services/users/users-2",
        "127.0.0.1:9002;weight=4",
    )
    .await;
    assert_eq!(describe(&next(&mut watch).await), "+users-2@9002w4");
    client
        .delete("/services/users/users-1", None)
        .await
        .unwrap();
    assert_eq!(describe(&next(&mut watch).await), "-users-1");
    assert!(watch.errors() >= 1, "the outage was noticed and counted");
    assert_eq!(
        watch.relists(),
        0,
        "resumed from its revision, no second list"
    );
    assert!(watch.invalid_values() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_compaction_the_watch_lists_again_and_emits_only_the_difference() {
    let Some(mut etcd) = Etcd::start("compact").await else {
        return;
    };
    let config = config(&etcd);
    let mut client = etcd.client().await;
    put(&mut client, "/services/users/users-1", "127.0.0.1:9001").await;
    put(&mut client, "/services/users/users-2", "127.0.0.1:9002").await;
    let mut watch = EtcdWatch::new(&config, "users").unwrap();
    let mut first = vec![
        describe(&next(&mut watch).await),
        describe(&next(&mut watch).await),
    ];
    first.sort();
    assert_eq!(first, ["+users-1@9001w1", "+users-2@9002w1"]);

    // While the watch cannot reach it, etcd serves on another port: the set changes and the
    // history is compacted past the watch's revision.
    etcd.stop();
    let port = etcd.client_port;
    let elsewhere = free_port();
    etcd.run_on(elsewhere).await;
    let mut other = Client::connect([format!("http://127.0.0.1:{elsewhere}")], None)
        .await
        .unwrap();
    other.delete("/services/users/users-1", None).await.unwrap();
    put(&mut other, "/services/users/users-3", "127.0.0.1:9003").await;
    let put = other
        .put(
            "/services/users/users-2",
            "127.0.0.1:9002;weight=5",
            Some(PutOptions::new()),
        )
        .await
        .unwrap();
    let revision = put.header().unwrap().revision();
    other
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    drop(other);
    etcd.stop();
    etcd.run_on(port).await;

    let mut changes: Vec<String> = Vec::new();
    for _ in 0..3 {
        changes.push(describe(&next(&mut watch).await));
    }
    changes.sort();
    assert_eq!(changes, ["+users-2@9002w5", "+users-3@9003w1", "-users-1"]);
    assert_eq!(watch.relists(), 1);

    // And it watches again afterwards.
    let mut client = etcd.client().await;
    client
        .delete("/services/users/users-3", None)
        .await
        .unwrap();
    assert_eq!(describe(&next(&mut watch).await), "-users-3");
}

#[cfg(feature = "http")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_cluster_registers_and_discovers_through_etcd() {
    use http::StatusCode;

    use crate::cluster::Harness;
    use crate::instance::{Directory, TTL};

    let Some(etcd) = Etcd::start("cluster").await else {
        return;
    };
    let harness =
        std::sync::Arc::new(Harness::start_on(Directory::Etcd(config(&etcd)), |_| {}).await);
    let (status, body) = harness.get("/users/7").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Kill one instance under load: every GET succeeds, and etcd drops it at its lease's TTL.
    let load = {
        let harness = std::sync::Arc::clone(&harness);
        tokio::spawn(async move { harness.load(8, 50).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(harness.node("users-2").kill());
    let (done, bad) = load.await.unwrap();
    assert!(
        bad.is_empty(),
        "{} of {done} failed: {:?}",
        bad.len(),
        bad.first()
    );
    let killed = tokio::time::Instant::now();
    crate::support::eventually("users-2 leaves rotation", || {
        !harness
            .fleet
            .endpoints("users")
            .contains(&"users-2".to_owned())
    })
    .await;
    assert!(
        killed.elapsed() < TTL + Duration::from_secs(3),
        "{:?}",
        killed.elapsed()
    );

    // Restarted on a new port, it registers again and comes back.
    let addr = harness.node("users-2").restart().await.unwrap();
    crate::support::eventually("users-2 back in rotation", || {
        harness.fleet.endpoints("users").len() == 3
    })
    .await;
    let mut client = etcd.client().await;
    let listed = client.get("/services/users/users-2", None).await.unwrap();
    assert_eq!(listed.kvs()[0].value_str().unwrap(), addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_comes_back_after_its_lease_expired_in_an_outage() {
    let Some(mut etcd) = Etcd::start("outage").await else {
        return;
    };
    let config = config(&etcd);
    let one = Instance::new("users-1", addr(9001));
    let _registration = EtcdRegistration::register(&config, "users", &one, Duration::from_secs(2))
        .await
        .unwrap();

    // etcd serves where the instance cannot reach it for longer than the lease's TTL: the
    // lease expires and the key goes.
    etcd.stop();
    let port = etcd.client_port;
    let elsewhere = free_port();
    etcd.run_on(elsewhere).await;
    let mut other = Client::connect([format!("http://127.0.0.1:{elsewhere}")], None)
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..100 {
        let listed = other.get("/services/users/users-1", None).await.unwrap();
        if listed.kvs().is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "the lease expired while its keep-alives could not reach etcd"
    );
    drop(other);
    etcd.stop();
    etcd.run_on(port).await;

    // Back where the instance can reach it: its keeper finds the lease gone and registers
    // again under a new one.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut client = etcd.client().await;
    let listed = client.get("/services/users/users-1", None).await.unwrap();
    assert_eq!(
        listed.kvs().len(),
        1,
        "the registration came back after the outage"
    );
    assert_eq!(listed.kvs()[0].value_str().unwrap(), "127.0.0.1:9001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_that_lost_its_data_is_listed_again() {
    let Some(mut etcd) = Etcd::start("wiped").await else {
        return;
    };
    let config = config(&etcd);
    let mut client = etcd.client().await;
    put(&mut client, "/services/users/users-1", "127.0.0.1:9001").await;
    put(&mut client, "/services/users/users-2", "127.0.0.1:9002").await;
    let mut watch = EtcdWatch::new(&config, "users").unwrap();
    let mut first = vec![
        describe(&next(&mut watch).await),
        describe(&next(&mut watch).await),
    ];
    first.sort();
    assert_eq!(first, ["+users-1@9001w1", "+users-2@9002w1"]);

    // The same etcd comes back empty (its data directory lost), and gets one new key.
    etcd.stop();
    std::fs::remove_dir_all(&etcd.dir).unwrap();
    let port = etcd.client_port;
    etcd.run_on(port).await;
    let mut client = etcd.client().await;
    put(&mut client, "/services/users/users-9", "127.0.0.1:9009").await;

    let mut changes = Vec::new();
    for _ in 0..3 {
        changes.push(describe(&next(&mut watch).await));
    }
    changes.sort();
    assert_eq!(changes, ["+users-9@9009w1", "-users-1", "-users-2"]);
    assert_eq!(watch.relists(), 1);
}
