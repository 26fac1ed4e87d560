//! The L7 data path: Ingress routing and the proxy, in layers whose
//! dependencies point one way, from the socket to the wire codec:
//!
//! - `listen`: accept loops, socket options, connection caps;
//! - `server`: one client connection, by the fast HTTP/1 server (`server::fast`)
//!   or hyper's; HTTP/2 by preface or ALPN;
//! - `pipeline`: every request, whichever server read it: check → route →
//!   policy → rewrite and forwarding headers → upstream → respond → log;
//! - `upstream`: endpoint choice, one retry when a request never left, and
//!   the clients (the fast HTTP/1 client, hyper's HTTP/1 and HTTP/2);
//! - `http1`: the one HTTP/1 codec under both fast paths;
//! - `route`: the route table compiled from Ingresses (pure), read once per
//!   request.
//!
//! `differential` checks the fast path against hyper's (tests and the
//! fuzzer). Beside them: `error` (every failure and its status), `path` (the normal
//! form requests are routed by), `body`, `limits`,
//! `stats` (per-route counters), `tls` (certificates by SNI).
pub mod body;
#[doc(hidden)]
pub mod differential;
pub mod error;
pub mod http1;
mod io;
pub mod limits;
pub mod listen;
pub mod path;
pub mod pipeline;
pub mod route;
pub mod server;
pub mod stats;
pub mod tls;
pub mod upstream;

pub use limits::Limits;
pub use server::Proxy;
