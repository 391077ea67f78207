//! TLS at run time: building domains (`domains`, from material it is given: it reads no
//! certificate itself), picking one per connection (`dispatch`), the client session store
//! (`sessions`), a cluster's session-ticket key ring (`ticket_keys`), the facts of a connection (`facts`), why a handshake failed (`failure`),
//! development certificates (`devcerts`), and the one `unsafe` module (`ffi`). Knows no
//! sockets and no reload: it takes a snapshot's domains and an `Ssl`, and gives back
//! contexts, choices, facts and failure kinds.

mod devcerts;
mod dispatch;
mod domains;
pub(crate) use domains::{client_sources, server_sources};
mod facts;
pub mod failure;
pub mod sessions;
pub mod ticket_keys;
// The only module allowed `unsafe`: OpenSSL calls the `openssl` crate lacks.
#[allow(unsafe_code)]
pub mod ffi;

pub use devcerts::{
    dev_certs_plan, ensure_dev_certs, generate_dev_certs, resolve_path, DevCertPlan, DevCerts,
};
pub use dispatch::{chosen, dispatch_context, dispatch_context_with, server_ssl, Chosen};
pub use domains::{
    build_domains, build_domains_isolated, BuildOptions, DomainError, EnvLookup, ReadMaterial,
    TLS_HOOKS,
};
pub use facts::{facts, shared_facts};
pub use failure::{CertificateFailure, HandshakeFailure};
// The domain types live in the snapshot (`state`); they are re-exported here, where they
// were before, for the benches and tests that name them.
pub use crate::state::{unix_now, ClientDomain, ServerDomain, TlsDomains, DEFAULT_DOMAIN};
