//! The L7 data path: Ingress routing (pure) and the hyper proxy.
pub mod annotations;
pub mod balance;
mod forwarding;
mod idle;
mod inline_client;
mod inline_server;
pub mod proxy;
pub mod route;
pub mod stats;
pub mod tls;
