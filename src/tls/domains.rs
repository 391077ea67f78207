//! From the configuration to the matcher's view of each domain: which SNI names and
//! listeners a domain's server side answers on, and which destinations and names its client
//! side is used for. Shared by validation (`siprox check`) and the runtime's reload so both
//! see the same tables. Pure: never opens a file.

use super::matcher::{ClientSpec, ServerSpec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

/// The file each domain of a configuration most likely came from: `domains/<name>.toml`
/// when that file was loaded, else the first configuration file. For messages outside
/// validation (which knows exactly). The loaded files are indexed by domain name once (a
/// build of a thousand tenants' domains otherwise scans the thousand files for each).
pub struct DomainSources<'a> {
    by_name: HashMap<String, &'a Path>,
    fallback: Option<&'a Path>,
}

impl<'a> DomainSources<'a> {
    pub fn new(config: &'a Config) -> DomainSources<'a> {
        let mut by_name = HashMap::new();
        for p in &config.sources {
            let in_domains = p
                .parent()
                .and_then(|d| d.file_name())
                .is_some_and(|d| d == DOMAINS_DIR);
            let name = p
                .file_name()
                .and_then(|f| f.to_string_lossy().strip_suffix(".toml").map(str::to_owned));
            if let (true, Some(name)) = (in_domains, name) {
                // The first loaded file of a name, as the scan this replaces found it.
                by_name.entry(name).or_insert(p.as_path());
            }
        }
        DomainSources {
            by_name,
            fallback: config.sources.first().map(PathBuf::as_path),
        }
    }

    pub fn get(&self, name: &str) -> String {
        self.by_name
            .get(name)
            .copied()
            .or(self.fallback)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "configuration".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_is_named_by_its_file_in_domains_else_by_the_first_file() {
        let mut c = Config::default();
        assert_eq!(DomainSources::new(&c).get("a"), "configuration");
        c.sources = [
            "conf.d/00-core.toml",
            "conf.d/a.toml",
            "conf.d/domains/a.toml",
            "other/domains/a.toml",
            "conf.d/domains/b.toml.bak",
            "conf.d/domains/c.toml",
        ]
        .map(PathBuf::from)
        .to_vec();
        let s = DomainSources::new(&c);
        assert_eq!(s.get("a"), "conf.d/domains/a.toml", "the first loaded");
        assert_eq!(s.get("c"), "conf.d/domains/c.toml");
        assert_eq!(s.get("b"), "conf.d/00-core.toml", "not a .toml file");
        assert_eq!(s.get("z"), "conf.d/00-core.toml");
    }
}
