//! DNS discovery against an in-process hickory DNS server on a random loopback port, whose
//! records the tests change while the watch runs.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use hickory_server::ServerFuture;
use hickory_server::authority::{AuthorityObject, Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryAuthority;
use seawall::discover::dns::{DnsConfig, DnsWatch};
use seawall::discover::{Change, Instance};

/// The zone `test.`, served over UDP on 127.0.0.1.
struct Zone {
    authority: Arc<InMemoryAuthority>,
    server: ServerFuture<Catalog>,
    addr: SocketAddr,
    serial: u32,
}

fn name(text: &str) -> Name {
    Name::from_str(text).unwrap()
}

impl Zone {
    async fn start() -> Self {
        let origin = name("test.");
        let authority = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
        let soa = SOA::new(name("ns.test."), name("admin.test."), 1, 60, 60, 60, 1);
        authority
            .upsert(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1)
            .await;
        let authority = Arc::new(authority);
        let mut catalog = Catalog::new();
        let object: Arc<dyn AuthorityObject> = authority.clone();
        catalog.upsert(LowerName::new(&origin), vec![object]);
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut server = ServerFuture::new(catalog);
        server.register_socket(socket);
        Self {
            authority,
            server,
            addr,
            serial: 1,
        }
    }

    /// Replaces the records of `owner` of type `kind` with `rdata`, each with a 1 s TTL.
    async fn set(&mut self, owner: &str, kind: RecordType, rdata: Vec<RData>) {
        self.serial += 1;
        let owner = name(owner);
        self.authority
            .records_mut()
            .await
            .remove(&RrKey::new(LowerName::new(&owner), kind));
        for rdata in rdata {
            self.authority
                .upsert(Record::from_rdata(owner.clone(), 1, rdata), self.serial)
                .await;
        }
    }

    async fn set_a(&mut self, owner: &str, ips: &[Ipv4Addr]) {
        let rdata = ips.iter().map(|ip| RData::A(A::from(*ip))).collect();
        self.set(owner, RecordType::A, rdata).await;
    }

    fn config(&self) -> DnsConfig {
        DnsConfig::with_servers([self.addr])
            .ttl_bounds(Duration::from_millis(50), Duration::from_millis(200))
            .error_retry(Duration::from_millis(100))
            .timeout(Duration::from_millis(300))
    }
}

/// The next change, within 10 s.
async fn next(watch: &mut DnsWatch) -> Change<String, Instance> {
    let item = tokio::time::timeout(
        Duration::from_secs(10),
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut *watch).poll_next(cx)),
    )
    .await
    .expect("a change within 10 s")
    .expect("the watch never ends");
    match item {
        Ok(change) => change,
        Err(never) => match never {},
    }
}

/// The next `n` changes, described and sorted.
async fn changes(watch: &mut DnsWatch, n: usize) -> Vec<String> {
    let mut described = Vec::new();
    for _ in 0..n {
        described.push(match next(watch).await {
            Change::Insert(id, instance) => format!("+{id} w{}", instance.weight()),
            Change::Remove(id) => format!("-{id}"),
        });
    }
    described.sort();
    described
}

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

#[tokio::test]
async fn a_and_aaaa_records_are_followed_as_they_change() {
    let mut zone = Zone::start().await;
    zone.set_a("users.test.", &[v4(1), v4(2)]).await;
    let mut watch = DnsWatch::a(&zone.config(), "users.test.", 8080).unwrap();
    assert_eq!(
        changes(&mut watch, 2).await,
        ["+127.0.0.1:8080 w1", "+127.0.0.2:8080 w1"]
    );

    zone.set_a("users.test.", &[v4(2), v4(3)]).await;
    assert_eq!(
        changes(&mut watch, 2).await,
        ["+127.0.0.3:8080 w1", "-127.0.0.1:8080"]
    );

    let ipv6 = RData::AAAA(AAAA::from(Ipv6Addr::LOCALHOST));
    zone.set("users.test.", RecordType::AAAA, vec![ipv6]).await;
    assert_eq!(changes(&mut watch, 1).await, ["+[::1]:8080 w1"]);
    assert_eq!(watch.errors(), 0);
}

#[tokio::test]
async fn srv_records_keep_the_best_priority_with_their_ports_and_weights() {
    let mut zone = Zone::start().await;
    zone.set_a("a.test.", &[v4(1)]).await;
    zone.set_a("b.test.", &[v4(2)]).await;
    zone.set_a("c.test.", &[v4(3)]).await;
    let srv = |priority, weight, port, target: &str| {
        RData::SRV(SRV::new(priority, weight, port, name(target)))
    };
    let owner = "_http._tcp.users.test.";
    zone.set(
        owner,
        RecordType::SRV,
        vec![
            srv(10, 5, 9001, "a.test."),
            srv(10, 0, 9002, "b.test."),
            srv(20, 1, 9003, "c.test."),
        ],
    )
    .await;
    let mut watch = DnsWatch::srv(&zone.config(), owner).unwrap();
    assert_eq!(
        changes(&mut watch, 2).await,
        ["+127.0.0.1:9001 w5", "+127.0.0.2:9002 w1"]
    );

    // The priority-10 targets go: the backup takes over.
    zone.set(owner, RecordType::SRV, vec![srv(20, 1, 9003, "c.test.")])
        .await;
    assert_eq!(
        changes(&mut watch, 3).await,
        ["+127.0.0.3:9003 w1", "-127.0.0.1:9001", "-127.0.0.2:9002"]
    );
}

#[tokio::test]
async fn a_silent_server_keeps_the_last_set_and_no_such_name_empties_it() {
    let mut zone = Zone::start().await;
    zone.set_a("users.test.", &[v4(1)]).await;
    let mut watch = DnsWatch::a(&zone.config(), "users.test.", 80).unwrap();
    assert_eq!(changes(&mut watch, 1).await, ["+127.0.0.1:80 w1"]);

    // The name disappears: an authoritative answer, so the set empties.
    zone.set("users.test.", RecordType::A, Vec::new()).await;
    assert_eq!(changes(&mut watch, 1).await, ["-127.0.0.1:80"]);
    zone.set_a("users.test.", &[v4(4)]).await;
    assert_eq!(changes(&mut watch, 1).await, ["+127.0.0.4:80 w1"]);

    // The server stops answering: lookups fail, the last set stays.
    zone.server.shutdown_gracefully().await.unwrap();
    let lookups = watch.lookups();
    for _ in 0..400 {
        if watch.errors() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(watch.errors() >= 2, "lookups failed: {}", watch.errors());
    assert!(watch.lookups() > lookups);
    let pending = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut watch).poll_next(cx).is_pending())
    })
    .await;
    assert!(pending, "no change while the server is silent");
}
