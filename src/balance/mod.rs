//! A load balancer that is `Clone`, fed by any discovery stream, and never hangs.
//!
//! [`Balance`] spreads calls over the endpoints a [`Discover`](tower::discover::Discover) stream
//! publishes, choosing with a [`Pick`]er: [`RoundRobin`] (smooth weighted, nginx's order),
//! [`LeastConn`] (fewest in-flight calls per weight, ties at random) or [`P2c`] (the cheaper of
//! two random endpoints by a peak-EWMA latency in which failures count as expensive).
//!
//! # Why not tower's `p2c::Balance`
//!
//! | | tower `p2c::Balance` | seawall `Balance` |
//! | --- | --- | --- |
//! | sharing | `&mut self`: wrap it in `Buffer` (a channel hop and a task per call) | `Clone`: clones share one endpoint set and picker, no hop |
//! | zero endpoints | `poll_ready` stays `Pending` forever | fails at once with [`NoEndpoints`](crate::NoEndpoints) (or waits a bounded time if asked) |
//! | discovery | read only when a request arrives | a background task publishes changes as they come |
//! | failures in the load estimate | an error looks like a fast response | a failure costs at least a penalty |
//! | pickers | P2C only | round robin (weighted), least connection (weighted), P2C |
//!
//! # How it works
//!
//! A background task owned by the balancer drains the discovery stream, applies every change
//! that is ready to an [`EndpointTable`], and publishes one immutable [`EndpointSet`] per batch.
//! A call reads the current set without a lock, picks an endpoint, increments its in-flight
//! count, clones the endpoint's service, waits for that service to be ready and calls it. The
//! in-flight count is released when the response future completes **or is dropped**.
//!
//! Endpoint services must be `Clone` (a hyper-util `Client`, a tonic `Channel`, anything behind
//! a `Buffer`); they are cloned once per call.
//!
//! # Backpressure
//!
//! `Balance::poll_ready` is always ready. Readiness of the chosen endpoint is awaited inside the
//! response future, so a timeout placed around the balancer bounds that wait too.

mod endpoint;
mod ewma;
mod future;
mod picker;
mod service;
mod set;
mod weighted;
mod worker;

pub use self::endpoint::Endpoint;

/// The balancer's shared state, for its other tasks (health checks).
pub(crate) mod service_shared {
    pub(crate) use super::service::Shared;
}
pub use self::future::ResponseFuture;
pub use self::picker::{
    LeastConn, Observation, P2c, Pick, PickContext, PickRng, Picker, PickerKind, PickerSchedule,
    RoundRobin, RoundRobinSchedule, UnknownPicker, weighted_order,
};
pub use self::service::{Balance, Builder, EjectionStats};
pub use self::set::{EndpointSet, EndpointTable};
pub use self::weighted::{Weight, Weighted};
