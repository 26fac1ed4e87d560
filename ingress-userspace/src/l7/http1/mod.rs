//! The one HTTP/1 codec. The in-task server and client (the fast path)
//! and the guard in front of hyper's server all frame messages with it,
//! so what a head means is decided in one place, strictly: a head one
//! reader could take two ways is refused by every reader.
//!
//! - `framing`: where a body ends (RFC 9112 §6.3), requests and responses;
//! - `request`: the checks every request head passes (Host, CONNECT, framing);
//! - `chunked`: the chunked decoder;
//! - `tokens`: list headers, `Connection` tokens, the hop-by-hop set;
//! - `head`: writing response, request and refusal heads.
pub mod chunked;
pub mod framing;
pub mod head;
pub mod request;
pub mod tokens;
