//! The happy path of a Balance call allocates nothing on the heap.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use seawall::balance::{Balance, LeastConn, P2c, Pick, RoundRobin};
use seawall::discover::from_list;
use tower::Service;

use crate::support::{Named, allocations, eventually};

async fn no_allocations<P: Pick>(picker: P) {
    let names = ["a", "b", "c", "d"];
    let discover = from_list(names.iter().enumerate().map(|(i, &n)| (i, Named::new(n))));
    let mut balance = Balance::builder(discover).picker(picker).build().unwrap();
    eventually("published", || balance.endpoints().len() == 4).await;
    let mut cx = Context::from_waker(Waker::noop());
    let mut call = |balance: &mut Balance<_, _, P>| {
        assert!(balance.poll_ready(&mut cx).is_ready());
        let future = pin!(balance.call(()));
        match future.poll(&mut cx) {
            Poll::Ready(Ok(name)) => name,
            other => panic!("not ready: {:?}", other.map(|_| ())),
        }
    };
    for _ in 0..100 {
        call(&mut balance); // warm up (thread-locals, lazily created handles)
    }
    let (_, allocated) = allocations(|| {
        for _ in 0..1000 {
            call(&mut balance);
        }
    });
    assert_eq!(allocated, 0, "heap allocations on the happy path");
}

#[tokio::test(flavor = "current_thread")]
async fn round_robin_call_allocates_nothing() {
    no_allocations(RoundRobin::new()).await;
}

#[tokio::test(flavor = "current_thread")]
async fn least_conn_call_allocates_nothing() {
    no_allocations(LeastConn::new()).await;
}

#[tokio::test(flavor = "current_thread")]
async fn p2c_call_allocates_nothing() {
    no_allocations(P2c::new()).await;
}
