//! Gateway API (gateway.networking.k8s.io): Gateways of our GatewayClasses
//! and the HTTPRoutes attached to their listeners, for the same route
//! table and proxy as Ingresses.
pub mod attach;
pub mod hostnames;
pub mod matches;
pub mod render;
pub mod rules;
pub mod table;
