//! Discovery sources: streams of [`Change`]s that keep a balancer's endpoint set current.
//!
//! Every source here is a `Stream<Item = Result<Change<K, V>, E>>`, so it is a
//! [`tower::discover::Discover`], and every existing tower `Discover` works wherever these do.
//!
//! | source | what it is |
//! | --- | --- |
//! | [`from_list`] | a fixed set, inserted once |
//! | [`Registry`] | an in-process registry modelled on Nacos and Consul: instances register with a TTL and heartbeat; a silent instance expires; [`Registry::watch`] streams the current set, then changes |
//! | [`Polling`] | calls your async function every interval and diffs the returned set into inserts and removes; an error keeps the last set |
//!
//! Sources yield [`Instance`]s or plain values; [`DiscoverExt::map_service`] turns each
//! discovered value into the service the balancer calls.

mod diff;
#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
pub mod dns;
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub mod etcd;
mod instance;
mod list;
mod map;
mod poll;
mod registry;

pub use self::instance::Instance;
pub use self::list::{StaticList, from_list};
pub use self::map::{DiscoverExt, MapService};
pub use self::poll::{PollErrors, Polling};
pub use self::registry::{Heartbeat, Registry, RegistryError, TtlTable, Watch};
pub use tower::discover::{Change, Discover};
