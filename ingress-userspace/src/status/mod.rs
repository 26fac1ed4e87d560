//! What the daemon writes back to the cluster: Ingress and Gateway API
//! status and Events,
//! by the one replica holding the Lease.
pub mod events;
pub mod gateway;
mod ingress;
mod lease;

pub use ingress::*;
pub use lease::*;
