//! Fixtures shared by the benchmarks.
#![allow(dead_code, missing_docs, unreachable_pub)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use seawall::balance::{Endpoint, EndpointSet, EndpointTable};
use tower::Service;

/// A service that answers at once and does nothing: the cost measured is the middleware's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

impl Service<()> for Noop {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        ready(Ok(()))
    }
}

/// A table of `n` no-op endpoints, weights from `weight(i)`.
pub fn table(n: usize, weight: impl Fn(usize) -> u32) -> EndpointTable<usize, Noop> {
    let mut table = EndpointTable::new();
    for i in 0..n {
        table.insert(Endpoint::new(i, Noop, weight(i), "bench"));
    }
    table
}

pub fn set(n: usize) -> EndpointSet<usize, Noop> {
    table(n, |_| 1).snapshot()
}

pub const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
