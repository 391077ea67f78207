//! State shared by every part of the runtime: the snapshot, the connection table,
//! counters, admission, the location store. The leaf of the runtime: imports no other
//! part of it.

pub mod location;
mod shared;
pub mod table;

pub use shared::*;
