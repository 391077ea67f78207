//! The `Connection` actor, one TCP or TLS stream.

mod actor;

pub use actor::*;
