//! Sockets: the `Listener` actor (accept loops and UDP receive) and the `Connection` actor
//! (one TCP/TLS stream). Hands every message to the worker; must never import the control
//! plane (`reload`, `mgmt`).

pub mod connection;
pub mod fdlimit;
pub mod listener;
