//! From the configuration to the matcher's view of each domain: which SNI names and
//! listeners a domain's server side answers on, and which destinations and names its client
//! side is used for. Shared by validation (`siprox check`) and the runtime's reload so both
//! see the same tables. Pure: never opens a file.

use super::matcher::{ClientSpec, ServerSpec};
use crate::config::{Config, DomainConfig, ServerTls, DOMAINS_DIR};

/// The matcher spec of a domain's server side: SNI = `server.sni`, else the domain's SIP
/// `names`. `source` names where the domain is defined, for conflict messages.
pub fn server_spec(name: &str, d: &DomainConfig, server: &ServerTls, source: &str) -> ServerSpec {
    ServerSpec {
        name: name.to_owned(),
        source: source.to_owned(),
        sni: if server.sni.is_empty() {
            d.names.clone()
        } else {
            server.sni.clone()
        },
        listen: server.listen.clone(),
    }
}

/// Client specs of every domain with a client side, in domain (name) order.
pub fn client_specs(config: &Config) -> Vec<ClientSpec> {
    config
        .domains
        .iter()
        .filter_map(|(name, d)| {
            let c = d.client.as_ref()?;
            Some(ClientSpec {
                name: name.clone(),
                destinations: c.destinations.clone(),
                server_names: c.server_names.clone(),
            })
        })
        .collect()
}

/// The file a domain most likely came from: `domains/<name>.toml` when that file was loaded,
/// else the configuration directory. For messages outside validation (which knows exactly).
pub fn domain_source(config: &Config, name: &str) -> String {
    let file = format!("{name}.toml");
    config
        .sources
        .iter()
        .find(|p| {
            p.file_name().is_some_and(|f| f.to_string_lossy() == file)
                && p.parent()
                    .and_then(|d| d.file_name())
                    .is_some_and(|d| d == DOMAINS_DIR)
        })
        .or_else(|| config.sources.first())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "configuration".to_owned())
}
