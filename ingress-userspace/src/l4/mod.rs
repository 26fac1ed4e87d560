//! The L4 control plane: the snapshot turned into the state the packet path
//! needs (`model`, pure), the writes between two states (`diff`, pure), and
//! `apply`, the only writer of the maps (through [`LbMapWriter`]); `health`
//! (pure): what kube-proxy's health servers answer.
mod apply;
mod diff;
pub mod health;
pub mod maglev;
pub mod model;
pub mod render;

pub use apply::*;
pub use diff::*;
