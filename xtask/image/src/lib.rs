//! The `ingressd` container image, written without a container engine or
//! a base image to pull: the file tree a run needs (the binary, the shared
//! libraries it links, CA certificates, a non-root user), as one layer, in
//! an OCI image layout packed into a tar archive that `podman load`,
//! `docker load`, `ctr images import` and `kind load image-archive` accept.
//!
//! Reproducible: every timestamp is the commit's (or `SOURCE_DATE_EPOCH`),
//! owners are numeric, entries sorted, JSON keys in one order and gzip
//! without a name or time, so one commit gives one digest.
//!
//! `cargo xtask image` builds it; `deploy/Dockerfile` writes the same tree
//! (`write_rootfs`) and copies it into an empty image, so both agree.
mod archive;
mod tree;
mod unpack;

pub use archive::{Meta, Written, write_archive};
pub use tree::{Entry, Tree};
pub use unpack::{ImageConfig, unpack};
