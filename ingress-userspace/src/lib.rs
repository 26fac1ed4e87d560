//! `ingressd`: the node daemon's library.
//!
//! source (manifest files) → `model::desired_state` (pure) → `sync::diff`
//! (pure) → `sync::apply` (the only map writer, through `bpf::LbMaps`).
pub mod bpf;
pub mod kube_source;
pub mod l7;
pub mod maglev;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod publish;
pub mod render;
pub mod run;
pub mod sync;
