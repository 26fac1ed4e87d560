//! Where the cluster's objects come from: manifest files, or the
//! Kubernetes API. Both keep a [`Snapshot`](crate::cluster::Snapshot) and say what changed.
mod bounded;
pub mod files;
pub mod kube;
