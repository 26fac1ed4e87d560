//! The kernel edge: loading and attaching the programs, pinning, and typed
//! access to the pinned maps. Nothing here decides anything.
mod attach;
mod cgroup;
mod conntrack;
mod interfaces;
mod link;
mod maps;
mod netlink;
mod pins;
mod sockdiag;

pub use attach::*;
pub use cgroup::default_cgroup;
pub use conntrack::{Conntrack, Sweep, Timeouts, monotonic_ns, spawn_sweeper};
pub use interfaces::*;
pub use maps::*;
pub use pins::*;
