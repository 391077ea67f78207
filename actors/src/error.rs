//! The runtime's error type: what can stop siprox from starting. Runtime failures after start
//! (a peer's bad bytes, a failed connect) are logged and counted, never returned from here;
//! must never carry key material in a message.

use std::io;

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A setting the runtime cannot use (checked at start, beyond what config validation does).
    #[error("configuration: {0}")]
    Config(String),
    /// Binding a listen socket failed.
    #[error("cannot listen on {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Reading or writing a file (certificates) failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// OpenSSL refused something (a certificate, a key, a setting).
    #[error("TLS: {what}: {source}")]
    Tls {
        what: String,
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// The actor system could not be started.
    #[error("cannot start the actor system: {0}")]
    System(String),
}
