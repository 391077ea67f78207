//! Management plane: the `[management]` HTTPS listener (`listener`), the `Rpc` actor on the
//! control arbiter (`rpc`), the methods it runs (`methods`), Prometheus `/metrics`
//! (`metrics`), the pure parts of `siproxctl` (`ctl`) and siprox.conf(5) (`docs`). Talks to the parts below by message and by
//! reading shared state; must never be imported by them.

pub mod ctl;
pub mod docs;
mod listener;
mod methods;
mod metrics;
pub mod rpc;
