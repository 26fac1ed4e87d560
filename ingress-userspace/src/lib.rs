//! `ingressd`: the node daemon's library, one folder per box of the design.
//!
//! source (files | kube) → cluster (the [`cluster::Snapshot`]) →
//! l4 (`model` and `diff`, pure; `apply` through the kernel's maps) and
//! l7 (route table, proxy) → status (written back). `daemon` runs the loop;
//! `kernel` is the BPF edge.
pub mod cluster;
pub mod daemon;
pub mod kernel;
pub mod l4;
pub mod l7;
pub mod source;
pub mod status;

/// The version this was built as.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this was built from (`unknown` outside a git checkout
/// without `INGRESSD_COMMIT`).
pub const COMMIT: &str = env!("INGRESSD_COMMIT");
/// `ingressd --version`'s line after the name.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("INGRESSD_COMMIT"),
    ")"
);
