//! What the daemon writes back to the cluster: Ingress status and Events,
//! by the one replica holding the Lease.
pub mod events;
mod ingress;
mod lease;

pub use ingress::*;
pub use lease::*;
