//! TLS in the core: the domain model and how a connection picks its domain, and the facts
//! about a connection's certificates that route scripts read. No sockets, no runtime.

mod facts;
mod matcher;

pub use facts::{CertFacts, DnFacts, TlsFacts};
pub use matcher::{
    normalise_name, ClientMatcher, ClientSpec, MatchError, Selected, ServerMatcher, ServerSpec,
};
