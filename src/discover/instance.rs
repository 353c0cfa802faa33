use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// One running instance of a service, as a registry knows it.
///
/// # Examples
///
/// ```
/// use seawall::discover::Instance;
///
/// let instance = Instance::new("users-1", ([127, 0, 0, 1], 9001).into()).with_weight(5);
/// assert_eq!(instance.id(), "users-1");
/// assert_eq!(instance.weight(), 5);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Instance {
    id: Arc<str>,
    addr: SocketAddr,
    weight: u32,
}

impl Instance {
    /// An instance with weight 1.
    pub fn new(id: impl Into<Arc<str>>, addr: SocketAddr) -> Self {
        Self {
            id: id.into(),
            addr,
            weight: 1,
        }
    }

    /// Sets the balancing weight. Default is 1; a weight of 0 is read as 1.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }

    /// The instance's unique id within its service.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the instance listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The balancing weight (at least 1).
    pub fn weight(&self) -> u32 {
        self.weight
    }
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("id", &&*self.id)
            .field("addr", &self.addr)
            .field("weight", &self.weight)
            .finish()
    }
}

impl From<SocketAddr> for Instance {
    /// An instance whose id is its address.
    fn from(addr: SocketAddr) -> Self {
        Self::new(addr.to_string(), addr)
    }
}
