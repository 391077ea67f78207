//! TLS in the core: the domain model and how a connection picks its domain, the contexts
//! built from TLS material as bytes, and the facts about a connection's certificates that
//! route scripts read. No sockets, no runtime, no files (the runtime reads the material).

mod context;
mod domains;
mod facts;
mod matcher;
mod sni;
#[cfg(test)]
pub(crate) mod testutil;
mod x509;

pub use context::{
    build_client, build_server, client_digest, is_ca_dir_entry, server_digest, AddCrl, BuildHooks,
    CaDir, ClientContext, ClientSessionCache, FileBytes, KeyPassword, ServerContext, SslPolicy,
    TlsError, TlsMaterial,
};
pub use domains::{client_specs, server_spec, DomainSources};
pub use facts::{CertFacts, DnFacts, TlsFacts};
pub use matcher::{
    normalise_name, ClientMatcher, ClientSpec, MatchError, Selected, ServerMatcher, ServerSpec,
};
pub use sni::{parse_server_name, SniError};
pub use x509::{cert_facts, dn_facts, unix_time};
