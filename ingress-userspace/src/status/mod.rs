//! What the daemon writes back to the cluster: Ingress status, by the one
//! replica holding the Lease.
mod ingress;
mod lease;

pub use ingress::*;
pub use lease::*;
