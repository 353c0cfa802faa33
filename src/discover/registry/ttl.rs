//! The registry's bookkeeping as a pure table: no clock, no locks, no tasks.
//!
//! Every operation takes `now`; the async glue reads the clock once per event. An instance
//! expires when `now ≥ last heartbeat + ttl` — a heartbeat that arrives exactly at the deadline is
//! too late, as with a Consul TTL check. Each service carries a generation that moves whenever its
//! set of instances changes (not on a heartbeat), so watchers diff only when something changed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::RegistryError;
use crate::discover::Instance;

/// The registry's table of services, instances and their TTL deadlines.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use seawall::discover::{Instance, TtlTable};
/// use tokio::time::Instant;
///
/// let mut table = TtlTable::default();
/// let t0 = Instant::now();
/// let ttl = Duration::from_secs(3);
/// table.register("users", Instance::new("u1", ([127, 0, 0, 1], 1).into()), ttl, t0)?;
/// table.heartbeat("users", "u1", t0 + Duration::from_secs(2))?;
/// assert!(table.expire(t0 + Duration::from_secs(4)).is_empty());
/// assert_eq!(table.expire(t0 + Duration::from_secs(5)), [("users".to_owned(), "u1".to_owned())]);
/// # Ok::<(), seawall::discover::RegistryError>(())
/// ```
#[derive(Debug, Default)]
pub struct TtlTable {
    services: HashMap<String, ServiceEntry>,
}

#[derive(Debug, Default)]
struct ServiceEntry {
    instances: BTreeMap<String, Entry>,
    generation: u64,
}

#[derive(Debug)]
struct Entry {
    instance: Instance,
    ttl: Duration,
    expires_at: Instant,
}

impl TtlTable {
    /// Registers (or replaces) an instance that must heartbeat within `ttl`.
    ///
    /// Re-registering an existing id with a different address or weight changes the service's
    /// generation; re-registering the same instance only refreshes its deadline.
    ///
    /// # Errors
    ///
    /// [`RegistryError`] when `ttl` is zero or the id is empty.
    pub fn register(
        &mut self,
        service: &str,
        instance: Instance,
        ttl: Duration,
        now: Instant,
    ) -> Result<(), RegistryError> {
        if ttl.is_zero() {
            return Err(RegistryError::zero_ttl(service, instance.id()));
        }
        if instance.id().is_empty() {
            return Err(RegistryError::empty_id(service));
        }
        let expires_at = now + ttl;
        let entry = self.services.entry(service.to_owned()).or_default();
        let id = instance.id().to_owned();
        let changed = entry
            .instances
            .get(&id)
            .is_none_or(|old| old.instance != instance);
        entry.instances.insert(
            id,
            Entry {
                instance,
                ttl,
                expires_at,
            },
        );
        if changed {
            entry.generation += 1;
        }
        Ok(())
    }

    /// Records a heartbeat: the instance's deadline becomes `now + ttl`.
    ///
    /// # Errors
    ///
    /// [`RegistryError`] when the instance is not registered (it was never registered,
    /// deregistered, or already expired): register it again.
    pub fn heartbeat(
        &mut self,
        service: &str,
        id: &str,
        now: Instant,
    ) -> Result<(), RegistryError> {
        match self
            .services
            .get_mut(service)
            .and_then(|entry| entry.instances.get_mut(id))
        {
            Some(entry) if now < entry.expires_at => {
                entry.expires_at = now + entry.ttl;
                Ok(())
            }
            _ => Err(RegistryError::unknown_instance(service, id)),
        }
    }

    /// Removes an instance. Returns whether it was registered.
    pub fn deregister(&mut self, service: &str, id: &str) -> bool {
        let Some(entry) = self.services.get_mut(service) else {
            return false;
        };
        let removed = entry.instances.remove(id).is_some();
        if removed {
            entry.generation += 1;
        }
        removed
    }

    /// Removes every instance whose deadline is at or before `now`, returning `(service, id)`
    /// for each.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut expired = Vec::new();
        for (service, entry) in &mut self.services {
            let before = expired.len();
            entry.instances.retain(|id, instance| {
                let alive = now < instance.expires_at;
                if !alive {
                    expired.push((service.clone(), id.clone()));
                }
                alive
            });
            if expired.len() > before {
                entry.generation += 1;
            }
        }
        expired
    }

    /// The earliest deadline among a service's instances.
    pub fn next_expiry(&self, service: &str) -> Option<Instant> {
        self.services
            .get(service)?
            .instances
            .values()
            .map(|entry| entry.expires_at)
            .min()
    }

    /// The service's generation: it changes whenever the set of instances changes.
    pub fn generation(&self, service: &str) -> u64 {
        self.services
            .get(service)
            .map_or(0, |entry| entry.generation)
    }

    /// The instances of a service, ordered by id.
    pub fn instances(&self, service: &str) -> impl Iterator<Item = &Instance> {
        self.services
            .get(service)
            .into_iter()
            .flat_map(|entry| entry.instances.values().map(|entry| &entry.instance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, port: u16) -> Instance {
        Instance::new(id, ([127, 0, 0, 1], port).into())
    }

    const TTL: Duration = Duration::from_secs(3);

    #[test]
    fn expiry_is_at_the_deadline() {
        let t0 = Instant::now();
        let mut table = TtlTable::default();
        table.register("s", inst("a", 1), TTL, t0).unwrap();
        assert!(table.expire(t0 + TTL - Duration::from_nanos(1)).is_empty());
        assert_eq!(table.expire(t0 + TTL), [("s".to_owned(), "a".to_owned())]);
        assert_eq!(table.instances("s").count(), 0);
    }

    #[test]
    fn heartbeats_extend_and_late_heartbeats_fail() {
        let t0 = Instant::now();
        let mut table = TtlTable::default();
        table.register("s", inst("a", 1), TTL, t0).unwrap();
        let g = table.generation("s");
        for k in 1..=10 {
            table
                .heartbeat("s", "a", t0 + Duration::from_secs(2 * k))
                .unwrap();
        }
        assert_eq!(table.generation("s"), g, "heartbeats do not change the set");
        assert_eq!(table.next_expiry("s"), Some(t0 + Duration::from_secs(23)));
        // A heartbeat exactly at the deadline is too late.
        let err = table
            .heartbeat("s", "a", t0 + Duration::from_secs(23))
            .unwrap_err();
        assert!(err.is_unknown_instance());
    }

    #[test]
    fn generation_moves_on_set_changes_only() {
        let t0 = Instant::now();
        let mut table = TtlTable::default();
        assert_eq!(table.generation("s"), 0);
        table.register("s", inst("a", 1), TTL, t0).unwrap();
        let g1 = table.generation("s");
        table.register("s", inst("a", 1), TTL, t0).unwrap();
        assert_eq!(
            table.generation("s"),
            g1,
            "same instance again: refresh only"
        );
        table.register("s", inst("a", 2), TTL, t0).unwrap();
        assert!(table.generation("s") > g1, "new address is a change");
        let g2 = table.generation("s");
        assert!(!table.deregister("s", "zzz"));
        assert_eq!(table.generation("s"), g2);
        assert!(table.deregister("s", "a"));
        assert!(table.generation("s") > g2);
    }

    #[test]
    fn services_are_independent() {
        let t0 = Instant::now();
        let mut table = TtlTable::default();
        table.register("s", inst("a", 1), TTL, t0).unwrap();
        table
            .register("t", inst("a", 2), Duration::from_secs(10), t0)
            .unwrap();
        let gt = table.generation("t");
        assert_eq!(table.expire(t0 + TTL).len(), 1);
        assert_eq!(table.generation("t"), gt);
        assert_eq!(table.instances("t").count(), 1);
    }

    #[test]
    fn bad_registrations() {
        let t0 = Instant::now();
        let mut table = TtlTable::default();
        assert!(
            table
                .register("s", inst("a", 1), Duration::ZERO, t0)
                .is_err()
        );
        assert!(table.register("s", inst("", 1), TTL, t0).is_err());
        assert!(table.heartbeat("s", "a", t0).is_err());
    }
}
