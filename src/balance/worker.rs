//! The discovery task: drains the stream, edits the table, publishes snapshots.
//!
//! Changes that are ready together are applied as one batch and published as one snapshot, so a
//! burst of a thousand changes costs one publication, not a thousand. A stream error is logged
//! and counted, the last good set stays, and the stream is polled again after a backoff (100 ms
//! doubling to 5 s), so a source that fails in a loop cannot spin the task. When the stream ends
//! the last set stays for the balancer's lifetime.

use std::fmt;
use std::future::poll_fn;
use std::hash::Hash;
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;
use tower::discover::{Change, Discover};

use super::endpoint::Endpoint;
use super::picker::Pick;
use super::service::{Shared, Snapshot};
use super::set::EndpointTable;
use crate::BoxError;
use crate::breaker::endpoint::EndpointBreaker;
use crate::breaker::{BreakerConfig, EjectionBudget};

/// The most changes applied before publishing, so a firehose still publishes regularly.
const MAX_BATCH: usize = 4096;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct Batch<K, S> {
    applied: usize,
    inserts: u64,
    removes: u64,
    /// Endpoints removed or replaced in this batch: flagged just before the new set is published.
    retired: Vec<Arc<Endpoint<K, S>>>,
    error: Option<BoxError>,
    ended: bool,
}

pub(crate) async fn run<D, P, C>(
    discover: D,
    shared: Weak<Shared<D::Key, D::Service, P, C>>,
    mut table: EndpointTable<D::Key, D::Service>,
    weight_of: fn(&D::Service) -> u32,
) where
    D: Discover,
    D::Key: Hash + Eq + Clone + fmt::Debug,
    D::Error: Into<BoxError>,
    P: Pick,
{
    let Some((name, epoch, ejection)) = shared.upgrade().map(|s| {
        let ejection = s
            .ejection
            .as_ref()
            .map(|e| (e.breaker.clone(), Arc::clone(&e.budget)));
        (Arc::clone(&s.name), s.epoch, ejection)
    }) else {
        return;
    };
    let endpoints = EndpointFactory {
        upstream: name.clone(),
        weight_of,
        epoch,
        ejection,
    };
    let mut discover = pin!(discover);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let batch = poll_fn(|cx| {
            let mut batch = Batch {
                applied: 0,
                inserts: 0,
                removes: 0,
                retired: Vec::new(),
                error: None,
                ended: false,
            };
            loop {
                match discover.as_mut().poll_discover(cx) {
                    Poll::Ready(Some(Ok(change))) => {
                        apply(&mut table, change, &endpoints, &mut batch);
                        if batch.applied >= MAX_BATCH {
                            return Poll::Ready(batch);
                        }
                    }
                    Poll::Ready(Some(Err(error))) => {
                        batch.error = Some(error.into());
                        return Poll::Ready(batch);
                    }
                    Poll::Ready(None) => {
                        batch.ended = true;
                        return Poll::Ready(batch);
                    }
                    Poll::Pending if batch.applied > 0 => return Poll::Ready(batch),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;

        let Some(shared) = shared.upgrade() else {
            return; // every Balance is gone
        };
        if batch.applied > 0 {
            shared.metrics.inserts.increment(batch.inserts);
            shared.metrics.removes.increment(batch.removes);
            for endpoint in &batch.retired {
                endpoint.mark_removed();
                if let Some(breaker) = endpoint.breaker() {
                    breaker.retire();
                }
            }
            // A call that passed the removal check just before the flag is inside the
            // endpoint's synchronous `call` right now; let it return, so that once the new set
            // is published no call can reach a removed endpoint.
            for endpoint in &batch.retired {
                let mut spins = 0u32;
                while endpoint.is_sending() {
                    spins += 1;
                    if spins < 64 {
                        std::hint::spin_loop();
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
            }
            publish(&shared, &table);
        }
        if let Some(error) = batch.error {
            shared.metrics.discovery_errors.increment(1);
            tracing::warn!(upstream = %name, %error, retry_in = ?backoff,
                "discovery stream failed; keeping the last endpoint set");
            drop(shared);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        backoff = FIRST_BACKOFF;
        if batch.ended {
            tracing::debug!(upstream = %name, endpoints = table.len(),
                "discovery stream ended; keeping the last endpoint set");
            return;
        }
    }
}

/// Makes endpoints for discovered services: weight, labels, and a breaker when configured.
struct EndpointFactory<S> {
    upstream: Arc<str>,
    weight_of: fn(&S) -> u32,
    epoch: Instant,
    ejection: Option<(BreakerConfig, Arc<EjectionBudget>)>,
}

impl<S> EndpointFactory<S> {
    fn make<K: fmt::Debug>(&self, key: K, service: S) -> Endpoint<K, S> {
        let weight = (self.weight_of)(&service);
        let endpoint = Endpoint::new(key, service, weight, &self.upstream);
        match &self.ejection {
            Some((config, budget)) => {
                let label: Arc<str> = endpoint.label().into();
                endpoint.with_breaker(EndpointBreaker::new(
                    config.clone(),
                    Arc::clone(budget),
                    self.epoch,
                    Arc::clone(&self.upstream),
                    label,
                ))
            }
            None => endpoint,
        }
    }
}

fn apply<K, S>(
    table: &mut EndpointTable<K, S>,
    change: Change<K, S>,
    endpoints: &EndpointFactory<S>,
    batch: &mut Batch<K, S>,
) where
    K: Hash + Eq + Clone + fmt::Debug,
{
    batch.applied += 1;
    match change {
        Change::Insert(key, service) => {
            batch.inserts += 1;
            if let Some(old) = table.insert(endpoints.make(key, service)) {
                batch.retired.push(old);
            }
        }
        Change::Remove(key) => {
            batch.removes += 1;
            if let Some(old) = table.remove(&key) {
                batch.retired.push(old);
            }
        }
    }
}

fn publish<K, S, P: Pick, C>(shared: &Shared<K, S, P, C>, table: &EndpointTable<K, S>)
where
    K: Hash + Eq + Clone,
{
    let set = table.snapshot();
    let schedule = shared.picker.schedule(&set);
    let len = set.len();
    let generation = shared.snapshot.load().generation + 1;
    shared.snapshot.store(Arc::new(Snapshot {
        generation,
        set,
        schedule,
    }));
    shared.metrics.endpoints_ready.set(len as f64);
    if let Some(ejection) = &shared.ejection {
        ejection.budget.set_endpoints(len);
    }
    shared.published.send_replace((generation, len));
}
