//! The L7 data path: Ingress routing (pure) and the hyper proxy.
pub mod route;
