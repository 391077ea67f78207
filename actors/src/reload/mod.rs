//! Control plane: the `DomainRegistry` actor, the one writer of the live snapshot, and
//! what it reloads. Runs on the control arbiter; the data plane never imports it and never
//! waits for it.

pub mod registry;
