//! The test kit of `ingressd` (package `ingress-testkit`, not published):
//! what the tests, the benchmarks and the demo share, kept out of the
//! product crate.
//!
//! - `lab`: network namespaces on one machine (a client, two nodes, pods), root;
//! - `packet`: a small IPv4 packet builder and checker;
//! - `fakeapi`: a fake Kubernetes API server;
//! - `golden`: folders of input and expected text;
//! - `endpoints`: scripted endpoints and a raw client;
//! - `proxy`: a running `ingressd run --no-l4` on loopback;
//! - `wait`: bounded waits and small helpers.
pub mod endpoints;
pub mod fakeapi;
pub mod golden;
pub mod lab;
pub mod packet;
pub mod proxy;
pub mod wait;
