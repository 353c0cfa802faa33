//! An in-process service registry with heartbeats and TTL expiry, modelled on Nacos and Consul.
//!
//! The registry has no task of its own. Expiry is enforced lazily and exactly: every operation
//! first expires what is due, and every [`Watch`] sleeps until the earliest deadline of its
//! service, so a silent instance disappears from every watcher at its deadline even when nothing
//! else happens — and nothing wakes up while no deadline is due.

mod ttl;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_core::Stream;
use tokio::time::{Instant, Sleep};
use tower::discover::Change;

pub use self::ttl::TtlTable;
use super::Instance;
use crate::BuildError;

/// An in-process registry: register instances with a TTL, heartbeat them, watch a service.
///
/// The handle is cheap to clone; every clone is the same registry.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use seawall::discover::{Instance, Registry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), seawall::discover::RegistryError> {
/// let registry = Registry::new();
/// let ttl = Duration::from_secs(5);
/// registry.register("users", Instance::new("users-1", ([127, 0, 0, 1], 9001).into()), ttl)?;
/// registry.heartbeat("users", "users-1")?;
/// assert_eq!(registry.instances("users").len(), 1);
/// assert!(registry.deregister("users", "users-1"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    table: TtlTable,
    waiters: HashMap<String, Vec<(u64, Waker)>>,
    next_watch_id: u64,
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        let expired = self.table.expire(now);
        for (service, id) in &expired {
            tracing::info!(service = %service, instance = %id, "registry: instance expired (missed heartbeats)");
        }
        for (service, _) in expired {
            self.wake(&service);
        }
    }

    fn wake(&mut self, service: &str) {
        if let Some(waiters) = self.waiters.get_mut(service) {
            for (_, waker) in waiters.drain(..) {
                waker.wake();
            }
        }
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The table is consistent after every operation, so a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers (or replaces) an instance of `service` that must heartbeat within `ttl`.
    ///
    /// # Errors
    ///
    /// [`RegistryError`] when `ttl` is zero or the instance id is empty.
    pub fn register(
        &self,
        service: &str,
        instance: Instance,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire(now);
        let before = inner.table.generation(service);
        inner.table.register(service, instance, ttl, now)?;
        if inner.table.generation(service) != before {
            inner.wake(service);
        }
        Ok(())
    }

    /// Records a heartbeat for an instance.
    ///
    /// # Errors
    ///
    /// [`RegistryError::is_unknown_instance`] when the instance is not registered — it was
    /// deregistered or has already expired. Register it again, as a Consul agent would.
    pub fn heartbeat(&self, service: &str, id: &str) -> Result<(), RegistryError> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire(now);
        inner.table.heartbeat(service, id, now)
    }

    /// Removes an instance at once. Returns whether it was registered.
    pub fn deregister(&self, service: &str, id: &str) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire(now);
        let removed = inner.table.deregister(service, id);
        if removed {
            inner.wake(service);
        }
        removed
    }

    /// The live instances of a service, ordered by id.
    pub fn instances(&self, service: &str) -> Vec<Instance> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire(now);
        inner.table.instances(service).cloned().collect()
    }

    /// Streams a service's instances: first an `Insert` for each live instance, then every change.
    ///
    /// The stream is a [`tower::discover::Discover`] keyed by instance id. Changes that happen
    /// between two polls are coalesced into the difference between what the watcher last saw and
    /// the current set, so a slow watcher never falls behind or misses a removal. It never ends.
    pub fn watch(&self, service: &str) -> Watch {
        let id = {
            let mut inner = self.lock();
            inner.next_watch_id += 1;
            inner.next_watch_id
        };
        Watch {
            registry: self.clone(),
            service: service.to_owned(),
            id,
            seen: None,
            view: HashMap::new(),
            pending: VecDeque::new(),
            sleep: None,
        }
    }

    /// Registers an instance and heartbeats it every `every` from a background task, as a
    /// service's own registration agent would.
    ///
    /// If a heartbeat finds the instance gone (it expired while the process stalled, or someone
    /// deregistered it), the task registers it again. Dropping the [`Heartbeat`] or calling
    /// [`Heartbeat::stop`] stops the beats, so the instance expires after its TTL, like a crashed
    /// process; [`Heartbeat::deregister`] removes it at once, like a clean shutdown.
    ///
    /// # Errors
    ///
    /// [`BuildError`] outside a Tokio runtime. Registration errors are [`RegistryError`]s,
    /// returned through the same boxed error.
    pub fn spawn_heartbeat(
        &self,
        service: &str,
        instance: Instance,
        ttl: Duration,
        every: Duration,
    ) -> Result<Heartbeat, crate::BoxError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| BuildError::no_runtime())?;
        self.register(service, instance.clone(), ttl)?;
        let registry = self.clone();
        let service_name = service.to_owned();
        let id = instance.id().to_owned();
        let every = every.max(Duration::from_millis(1));
        let task = handle.spawn(async move {
            let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if registry.heartbeat(&service_name, instance.id()).is_err() {
                    if let Err(error) = registry.register(&service_name, instance.clone(), ttl) {
                        tracing::warn!(%error, "registry: re-registration failed");
                    }
                }
            }
        });
        Ok(Heartbeat {
            registry: self.clone(),
            service: service.to_owned(),
            id,
            task,
        })
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// A background heartbeat for one registered instance; see [`Registry::spawn_heartbeat`].
///
/// Dropping it stops the heartbeats (the instance then expires after its TTL).
#[derive(Debug)]
pub struct Heartbeat {
    registry: Registry,
    service: String,
    id: String,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Stops heartbeating; the instance stays registered until its TTL runs out.
    pub fn stop(self) {}

    /// Stops heartbeating and deregisters the instance at once.
    pub fn deregister(self) -> bool {
        self.task.abort();
        self.registry.deregister(&self.service, &self.id)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A stream of changes to one service's instances; see [`Registry::watch`].
pub struct Watch {
    registry: Registry,
    service: String,
    id: u64,
    seen: Option<u64>,
    view: HashMap<String, Instance>,
    pending: VecDeque<Change<String, Instance>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Watch {
    /// The service this stream watches.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Diffs `current` against what this watcher last saw into pending changes.
    fn diff(&mut self, current: Vec<Instance>) {
        let mut next = HashMap::with_capacity(current.len());
        for instance in current {
            let id = instance.id().to_owned();
            if self.view.get(&id) != Some(&instance) {
                self.pending
                    .push_back(Change::Insert(id.clone(), instance.clone()));
            }
            next.insert(id, instance);
        }
        let mut removed: Vec<&String> = self
            .view
            .keys()
            .filter(|id| !next.contains_key(*id))
            .collect();
        removed.sort();
        for id in removed {
            self.pending.push_back(Change::Remove(id.clone()));
        }
        self.view = next;
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("service", &self.service)
            .field("instances", &self.view.len())
            .finish_non_exhaustive()
    }
}

impl Stream for Watch {
    type Item = Result<Change<String, Instance>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            let next_expiry = {
                let mut inner = this.registry.lock();
                inner.expire(Instant::now());
                let generation = inner.table.generation(&this.service);
                if this.seen != Some(generation) {
                    let current = inner.table.instances(&this.service).cloned().collect();
                    drop(inner);
                    this.seen = Some(generation);
                    this.diff(current);
                    continue;
                }
                let waiters = inner.waiters.entry(this.service.clone()).or_default();
                match waiters.iter_mut().find(|(id, _)| *id == this.id) {
                    Some((_, waker)) => waker.clone_from(cx.waker()),
                    None => waiters.push((this.id, cx.waker().clone())),
                }
                inner.table.next_expiry(&this.service)
            };
            let Some(deadline) = next_expiry else {
                return Poll::Pending;
            };
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The deadline passed: loop to expire what is due and diff again.
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(waiters) = inner.waiters.get_mut(&self.service) {
            waiters.retain(|(id, _)| *id != self.id);
        }
    }
}

/// A registry operation was refused.
#[derive(Debug, Clone)]
pub struct RegistryError {
    kind: RegistryErrorKind,
    service: String,
    id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegistryErrorKind {
    UnknownInstance,
    ZeroTtl,
    EmptyId,
}

impl RegistryError {
    fn new(kind: RegistryErrorKind, service: &str, id: &str) -> Self {
        Self {
            kind,
            service: service.to_owned(),
            id: id.to_owned(),
        }
    }

    pub(crate) fn unknown_instance(service: &str, id: &str) -> Self {
        Self::new(RegistryErrorKind::UnknownInstance, service, id)
    }

    pub(crate) fn zero_ttl(service: &str, id: &str) -> Self {
        Self::new(RegistryErrorKind::ZeroTtl, service, id)
    }

    pub(crate) fn empty_id(service: &str) -> Self {
        Self::new(RegistryErrorKind::EmptyId, service, "")
    }

    /// True when a heartbeat named an instance that is not registered (never registered,
    /// deregistered, or expired).
    pub fn is_unknown_instance(&self) -> bool {
        self.kind == RegistryErrorKind::UnknownInstance
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (service, id) = (&self.service, &self.id);
        match self.kind {
            RegistryErrorKind::UnknownInstance => write!(
                f,
                "instance `{id}` of service `{service}` is not registered (it expired or was \
                 deregistered): register it again"
            ),
            RegistryErrorKind::ZeroTtl => write!(
                f,
                "instance `{id}` of service `{service}` was given a zero TTL: use a TTL a few \
                 times longer than the heartbeat interval"
            ),
            RegistryErrorKind::EmptyId => write!(
                f,
                "an instance of service `{service}` has an empty id: give every instance a unique id"
            ),
        }
    }
}

impl std::error::Error for RegistryError {}
