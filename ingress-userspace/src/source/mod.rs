//! Where the cluster's objects come from: manifest files, or the
//! Kubernetes API. Both keep a [`Snapshot`](crate::cluster::Snapshot) and say what changed.
mod bounded;
pub mod files;
pub mod kube;

use std::{collections::BTreeSet, future::Future, pin::Pin};

use crate::cluster::{ObjectKey, Snapshot};

/// What one load of a source changed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Services whose Service or EndpointSlices changed (the L4 model
    /// recomputes these only).
    pub touched: BTreeSet<ObjectKey>,
    /// Objects refused in this load, each naming its object and field.
    pub errors: Vec<String>,
    /// Objects refused now, whose last good version stays in force.
    pub invalid: usize,
}

/// Manifest files or the Kubernetes API, as the daemon's loop sees them.
pub trait Source: Send {
    fn snapshot(&self) -> &Snapshot;
    /// Something may have changed since the last load.
    fn changed(&self) -> bool;
    /// Applies what changed (everything, the first time).
    fn load(&mut self) -> Changes;
    /// The first list of every watched kind is in: the snapshot is the
    /// cluster's (files: at once).
    fn synced(&self) -> bool {
        true
    }
    /// Later syncs wait a moment: a watch just started for what a change
    /// needs (a new Ingress's Secret) has not listed yet.
    fn holds(&self) -> bool {
        false
    }
    /// Returns when something may have changed, within a second or two
    /// (the loop keeps turning: /healthz watches it).
    fn wait(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}
