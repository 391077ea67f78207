//! How a TLS connection picks its domain: server domains by SNI and listen address, client
//! domains by destination and server name. Pure lookup tables built once per snapshot and
//! read on every handshake; building reports conflicts, lookups never fail or panic.

use std::collections::HashMap;
use std::net::SocketAddr;

/// What the matcher needs to know about one server domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Domain name (the file's table name), for errors.
    pub name: String,
    /// Where the domain was defined, for errors.
    pub source: String,
    /// SNI names: exact (`sip.example.com`) or one-label wildcards (`*.example.com`).
    pub sni: Vec<String>,
    /// Listeners the domain is limited to; empty means every TLS listener.
    pub listen: Vec<SocketAddr>,
}

/// Why a set of domains cannot be served together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    #[error("TLS name `{name}` is claimed by domain `{first}` ({first_source}) and domain `{second}` ({second_source}) on the same listener")]
    DuplicateName {
        name: String,
        first: String,
        first_source: String,
        second: String,
        second_source: String,
    },
    #[error("listener {listen} is the address domain of both `{first}` ({first_source}) and `{second}` ({second_source}); give one of them SNI names")]
    DuplicateListener {
        listen: SocketAddr,
        first: String,
        first_source: String,
        second: String,
        second_source: String,
    },
    #[error("domain `{domain}` ({source_file}): `{name}` is not a valid TLS server name (a host name, or `*.` followed by one)")]
    BadName {
        domain: String,
        source_file: String,
        name: String,
    },
}

/// Which domain a ClientHello selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected {
    /// The domain at this index of the specs the matcher was built from.
    Domain(usize),
    /// No domain matched: the default server domain applies.
    Default,
}

/// Server-side lookup: exact SNI on the listener, wildcard SNI, the listener's own domain,
/// then the default domain.
#[derive(Debug, Clone, Default)]
pub struct ServerMatcher {
    /// Normalised name -> (listeners or empty for all, domain index).
    exact: HashMap<String, Vec<(Vec<SocketAddr>, usize)>>,
    /// Wildcard suffix (`example.com` for `*.example.com`) -> same.
    wildcard: HashMap<String, Vec<(Vec<SocketAddr>, usize)>>,
    /// A listener's own domain: a domain limited to that listener and without SNI names
    /// (the SER model, where a domain is its `ip:port`).
    by_listener: HashMap<SocketAddr, usize>,
}

/// Lower-case, without a trailing dot. SNI is ASCII (RFC 6066 §3); other bytes never match.
pub fn normalise_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn valid_host_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn overlaps(a: &[SocketAddr], b: &[SocketAddr]) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|x| b.contains(x))
}

fn serves(listen: &[SocketAddr], on: SocketAddr) -> bool {
    listen.is_empty() || listen.contains(&on)
}

impl ServerMatcher {
    /// Build the tables; every conflict is reported, not only the first.
    pub fn build(specs: &[ServerSpec]) -> Result<ServerMatcher, Vec<MatchError>> {
        let mut m = ServerMatcher::default();
        let mut errors = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            for raw in &spec.sni {
                let n = normalise_name(raw);
                let (table, key) = match n.strip_prefix("*.") {
                    Some(suffix) if valid_host_name(suffix) => (&mut m.wildcard, suffix.to_owned()),
                    None if valid_host_name(&n) => (&mut m.exact, n.clone()),
                    _ => {
                        errors.push(MatchError::BadName {
                            domain: spec.name.clone(),
                            source_file: spec.source.clone(),
                            name: raw.clone(),
                        });
                        continue;
                    }
                };
                let entries = table.entry(key).or_default();
                if let Some((_, j)) = entries
                    .iter()
                    .find(|(l, j)| *j != i && overlaps(l, &spec.listen))
                {
                    errors.push(MatchError::DuplicateName {
                        name: n.clone(),
                        first: specs[*j].name.clone(),
                        first_source: specs[*j].source.clone(),
                        second: spec.name.clone(),
                        second_source: spec.source.clone(),
                    });
                    continue;
                }
                if !entries.iter().any(|(_, j)| *j == i) {
                    entries.push((spec.listen.clone(), i));
                }
            }
            if spec.sni.is_empty() {
                for l in &spec.listen {
                    if let Some(&j) = m.by_listener.get(l) {
                        errors.push(MatchError::DuplicateListener {
                            listen: *l,
                            first: specs[j].name.clone(),
                            first_source: specs[j].source.clone(),
                            second: spec.name.clone(),
                            second_source: spec.source.clone(),
                        });
                    } else {
                        m.by_listener.insert(*l, i);
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(m)
        } else {
            Err(errors)
        }
    }

    /// The domain for a ClientHello that arrived on `listener` with `sni`.
    pub fn select(&self, listener: SocketAddr, sni: Option<&str>) -> Selected {
        if let Some(sni) = sni {
            let n = normalise_name(sni);
            if let Some(i) = Self::find(&self.exact, &n, listener) {
                return Selected::Domain(i);
            }
            if let Some((_, suffix)) = n.split_once('.') {
                if let Some(i) = Self::find(&self.wildcard, suffix, listener) {
                    return Selected::Domain(i);
                }
            }
        }
        match self.by_listener.get(&listener) {
            Some(&i) => Selected::Domain(i),
            None => Selected::Default,
        }
    }

    fn find(
        table: &HashMap<String, Vec<(Vec<SocketAddr>, usize)>>,
        key: &str,
        listener: SocketAddr,
    ) -> Option<usize> {
        table
            .get(key)?
            .iter()
            .find(|(l, _)| serves(l, listener))
            .map(|(_, i)| *i)
    }

    /// True when no domain is configured at all.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.by_listener.is_empty()
    }
}

/// What the matcher needs to know about one client domain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientSpec {
    pub name: String,
    /// Destinations (`ip:port`) this client domain is used for.
    pub destinations: Vec<SocketAddr>,
    /// Server names (exact or `*.` wildcard) this client domain is used for.
    pub server_names: Vec<String>,
}

/// Client-side lookup: destination `ip:port`, then exact server name, then wildcard server
/// name, then the default client domain.
#[derive(Debug, Clone, Default)]
pub struct ClientMatcher {
    by_dest: HashMap<SocketAddr, usize>,
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl ClientMatcher {
    /// Build the tables. A destination or name claimed twice keeps the first domain (in
    /// configuration order); conflicts are reported.
    pub fn build(specs: &[ClientSpec]) -> (ClientMatcher, Vec<String>) {
        let mut m = ClientMatcher::default();
        let mut conflicts = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            for d in &s.destinations {
                if let Some(&j) = m.by_dest.get(d) {
                    conflicts.push(format!(
                        "destination {d} is claimed by client domains `{}` and `{}`",
                        specs[j].name, s.name
                    ));
                } else {
                    m.by_dest.insert(*d, i);
                }
            }
            for raw in &s.server_names {
                let n = normalise_name(raw);
                let (table, key) = match n.strip_prefix("*.") {
                    Some(suffix) => (&mut m.wildcard, suffix.to_owned()),
                    None => (&mut m.exact, n.clone()),
                };
                if let Some(&j) = table.get(&key) {
                    conflicts.push(format!(
                        "server name `{n}` is claimed by client domains `{}` and `{}`",
                        specs[j].name, s.name
                    ));
                } else {
                    table.insert(key, i);
                }
            }
        }
        (m, conflicts)
    }

    pub fn select(&self, dest: SocketAddr, server_name: Option<&str>) -> Selected {
        if let Some(&i) = self.by_dest.get(&dest) {
            return Selected::Domain(i);
        }
        if let Some(name) = server_name {
            let n = normalise_name(name);
            if let Some(&i) = self.exact.get(&n) {
                return Selected::Domain(i);
            }
            if let Some((_, suffix)) = n.split_once('.') {
                if let Some(&i) = self.wildcard.get(suffix) {
                    return Selected::Domain(i);
                }
            }
        }
        Selected::Default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, sni: &[&str], listen: &[&str]) -> ServerSpec {
        ServerSpec {
            name: name.into(),
            source: format!("domains/{name}.toml"),
            sni: sni.iter().map(|s| s.to_string()).collect(),
            listen: listen.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    const L1: &str = "127.0.0.1:5061";
    const L2: &str = "127.0.0.1:5062";

    #[test]
    fn order_exact_wildcard_listener_default() {
        let specs = vec![
            spec("a", &["sip.a.example"], &[]),
            spec("wild", &["*.a.example"], &[]),
            spec("l2", &[], &[L2]),
        ];
        let m = ServerMatcher::build(&specs).unwrap();
        let l1 = L1.parse().unwrap();
        let l2 = L2.parse().unwrap();
        assert_eq!(m.select(l1, Some("SIP.A.example.")), Selected::Domain(0));
        assert_eq!(m.select(l1, Some("x.a.example")), Selected::Domain(1));
        assert_eq!(m.select(l1, Some("x.y.a.example")), Selected::Default);
        assert_eq!(m.select(l1, Some("a.example")), Selected::Default);
        assert_eq!(m.select(l2, Some("other.example")), Selected::Domain(2));
        assert_eq!(m.select(l2, None), Selected::Domain(2));
        assert_eq!(m.select(l1, None), Selected::Default);
        // Exact beats the listener's own domain.
        assert_eq!(m.select(l2, Some("sip.a.example")), Selected::Domain(0));
    }

    #[test]
    fn names_limited_to_a_listener() {
        let specs = vec![
            spec("one", &["x.example"], &[L1]),
            spec("two", &["x.example"], &[L2]),
        ];
        let m = ServerMatcher::build(&specs).unwrap();
        assert_eq!(
            m.select(L1.parse().unwrap(), Some("x.example")),
            Selected::Domain(0)
        );
        assert_eq!(
            m.select(L2.parse().unwrap(), Some("x.example")),
            Selected::Domain(1)
        );
    }

    #[test]
    fn conflicts_name_both_files() {
        let specs = vec![
            spec("one", &["x.example"], &[]),
            spec("two", &["X.example"], &[L1]),
        ];
        let e = ServerMatcher::build(&specs).unwrap_err();
        let msg = e[0].to_string();
        assert!(
            msg.contains("domains/one.toml") && msg.contains("domains/two.toml"),
            "{msg}"
        );
        let specs = vec![spec("one", &[], &[L1]), spec("two", &[], &[L1])];
        assert!(matches!(
            ServerMatcher::build(&specs).unwrap_err()[0],
            MatchError::DuplicateListener { .. }
        ));
        let specs = vec![spec("bad", &["*.*.example"], &[])];
        assert!(matches!(
            ServerMatcher::build(&specs).unwrap_err()[0],
            MatchError::BadName { .. }
        ));
    }

    #[test]
    fn client_matching() {
        let specs = vec![
            ClientSpec {
                name: "carrier".into(),
                destinations: vec!["192.0.2.1:5061".parse().unwrap()],
                server_names: vec![],
            },
            ClientSpec {
                name: "wild".into(),
                destinations: vec![],
                server_names: vec!["*.carrier.example".into()],
            },
        ];
        let (m, conflicts) = ClientMatcher::build(&specs);
        assert!(conflicts.is_empty());
        assert_eq!(
            m.select("192.0.2.1:5061".parse().unwrap(), None),
            Selected::Domain(0)
        );
        assert_eq!(
            m.select(
                "192.0.2.2:5061".parse().unwrap(),
                Some("pop1.carrier.example")
            ),
            Selected::Domain(1)
        );
        assert_eq!(
            m.select("192.0.2.2:5061".parse().unwrap(), None),
            Selected::Default
        );
    }
}
