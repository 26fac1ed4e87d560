//! `ingressd`: the node daemon's library, one folder per box of the design.
//!
//! source (files | kube) → cluster (the [`cluster::Snapshot`]) →
//! l4 (`model` and `diff`, pure; `apply` through the kernel's maps) and
//! l7 (route table, proxy) → status (written back). `daemon` runs the loop;
//! `kernel` is the BPF edge; `migrate` reports on Ingresses written for
//! ingress-nginx.
pub mod cluster;
pub mod daemon;
pub mod kernel;
pub mod l4;
pub mod l7;
pub mod migrate;
pub mod source;
pub mod status;
