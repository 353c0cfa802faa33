//! Endpoints come and go while many callers are in flight, on a 2-worker runtime.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use seawall::balance::{Balance, LeastConn, P2c, Pick, RoundRobin};
use seawall::discover::Change;
use tower::{Service, ServiceExt};

use crate::support::{channel, eventually};

/// An endpoint that records a violation if it is called after the test saw its removal published.
#[derive(Clone)]
struct Tracked {
    id: u32,
    dead: Arc<AtomicBool>,
    violations: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl Service<()> for Tracked {
    type Response = u32;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<u32, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        if self.dead.load(Ordering::SeqCst) {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = self.id;
        Box::pin(async move {
            tokio::task::yield_now().await;
            Ok(id)
        })
    }
}

async fn churn<P: Pick>(picker: P) {
    let (tx, discover) = channel::<u32, Tracked>();
    let violations = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut dead: HashMap<u32, Arc<AtomicBool>> = HashMap::new();
    let endpoint = |id: u32, dead: &mut HashMap<u32, Arc<AtomicBool>>| {
        let flag = Arc::new(AtomicBool::new(false));
        dead.insert(id, flag.clone());
        Tracked {
            id,
            dead: flag,
            violations: violations.clone(),
            calls: calls.clone(),
        }
    };
    for id in 0..4 {
        tx.send(Ok(Change::Insert(id, endpoint(id, &mut dead))))
            .unwrap();
    }
    let balance = Balance::builder(discover).picker(picker).build().unwrap();
    eventually("initial set", || balance.endpoints().len() == 4).await;

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(Mutex::new(0usize));
    let mut callers = Vec::new();
    for _ in 0..16 {
        let balance = balance.clone();
        let stop = stop.clone();
        let answered = answered.clone();
        callers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 2000 {
                balance
                    .clone()
                    .oneshot(())
                    .await
                    .expect("never without endpoints");
                n += 1;
            }
            *answered.lock().unwrap() += n;
        }));
    }

    // Replace endpoints one by one while the callers run: add one, remove the oldest.
    for round in 0..40u32 {
        let new = 4 + round;
        tx.send(Ok(Change::Insert(new, endpoint(new, &mut dead))))
            .unwrap();
        let old = round;
        tx.send(Ok(Change::Remove(old))).unwrap();
        eventually("removal published", || {
            balance.endpoints().iter().all(|e| *e.key() != old)
        })
        .await;
        dead[&old].store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }

    assert_eq!(
        violations.load(Ordering::SeqCst),
        0,
        "calls sent after removal was published"
    );
    assert_eq!(*answered.lock().unwrap(), calls.load(Ordering::SeqCst));
    assert!(calls.load(Ordering::SeqCst) > 0);
    let set = balance.endpoints();
    assert_eq!(set.len(), 4);
    assert!(
        set.iter().all(|e| e.in_flight() == 0),
        "in-flight counts leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_round_robin() {
    churn(RoundRobin::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_least_conn() {
    churn(LeastConn::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_p2c() {
    churn(P2c::new()).await;
}
