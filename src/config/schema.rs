//! The typed configuration that conf.d/ deserializes into, and its human summary.
//! Must never accept a key it does not know (`deny_unknown_fields` on every table): a typo in
//! a config file is an error, not a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::runtime::{ConnectionsConfig, RuntimeConfig, TlsConfig};
use crate::sip::Limits;

/// The whole configuration, merged from every conf.d/ file and the environment.
///
/// Every table has a default so that each file can be checked on its own (a drop-in file
/// holds only what it changes); what must be present overall (a listener) is checked by
/// validation. `Config::default()` is therefore not a valid configuration by itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[[listen]]`: the sockets siprox binds. Files append to this list (a file with
    /// `listen_replace = true` replaces it; see `load::COLLECTIONS`).
    #[serde(default)]
    pub listen: Vec<Listener>,
    /// `[limits]`: what the parser and the stream framer accept.
    #[serde(default)]
    pub limits: Limits,
    /// `[log]`: level and format of the logs.
    #[serde(default)]
    pub log: LogConfig,
    /// `[registrar]`: REGISTER handling (expiry bounds, contacts, Path).
    #[serde(default)]
    pub registrar: crate::registrar::Settings,
    /// `[location]`: the embedded location store's snapshot file.
    #[serde(default)]
    pub location: crate::config::LocationConfig,
    /// `[auth]`: digest authentication.
    #[serde(default)]
    pub auth: crate::config::AuthConfig,
    /// `[script]`: the default route script.
    #[serde(default)]
    pub script: crate::config::ScriptConfig,
    /// `[domains.<name>]`: tenant domains, usually one file each in `conf.d/domains/`.
    #[serde(default)]
    pub domains: BTreeMap<String, DomainConfig>,
    /// `[runtime]`: worker threads and graceful shutdown.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// `[connections]`: TCP/TLS timeouts, write queues and connection limits.
    #[serde(default)]
    pub connections: ConnectionsConfig,
    /// `[tls]`: the default server and client TLS settings.
    #[serde(default)]
    pub tls: TlsConfig,
    /// `[management]`: the JSON-RPC/XML-RPC and metrics listener.
    #[serde(default)]
    pub management: crate::config::ManagementConfig,
    /// `[cluster]`: this node in a cluster sharing registrations through Redis. Absent: one
    /// node, nothing shared, no Redis needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::config::ClusterConfig>,
    /// `[transactions]`: timers and limits of `t_relay()`'s transactions.
    #[serde(default)]
    pub transactions: crate::config::TransactionsConfig,
    /// `[htables.<name>]`: the scripts' `$sht` hash tables.
    #[serde(default)]
    pub htables: BTreeMap<String, crate::config::HtableConfig>,
    /// The files this configuration was merged from, in merge order. Not a config key.
    #[serde(skip)]
    pub sources: Vec<PathBuf>,
    /// The `SIPROX_...` environment variables that overrode file values, sorted. Not a config key.
    #[serde(skip)]
    pub env_overrides: Vec<String>,
}

/// One `[[listen]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Transport.
    pub proto: Proto,
    /// Address to bind. Port 0 asks the OS for a free port (tests).
    pub addr: SocketAddr,
    /// Host (and port) written into Via and Record-Route instead of `addr`: needed behind
    /// NAT or when binding a wildcard address, where `addr` is not what peers can reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<HostPort>,
}

/// SIP transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// SIP over UDP.
    Udp,
    /// SIP over TCP.
    Tcp,
    /// SIP over TLS (over TCP).
    Tls,
}

impl Proto {
    /// Lowercase name, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
            Proto::Tls => "tls",
        }
    }

    /// True when the listener binds a TCP socket: tcp and tls compete for the same ports.
    pub fn is_stream(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Tls)
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `host[:port]`, as written in `advertise`: a DNS name, an IPv4 address or a bracketed IPv6
/// address, with an optional non-zero port. Checked when read so the error names the file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    /// Host name or address, without brackets.
    pub host: String,
    /// Port, if given; otherwise the listener's own port applies.
    pub port: Option<u16>,
}

impl HostPort {
    /// Parses `host[:port]`.
    pub fn parse(s: &str) -> Result<HostPort, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let Some((v6, after)) = rest.split_once(']') else {
                return Err(format!("`{s}`: missing `]` after IPv6 address"));
            };
            if v6.parse::<Ipv6Addr>().is_err() {
                return Err(format!("`{s}`: `{v6}` is not an IPv6 address"));
            }
            let port = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return Err(format!("`{s}`: expected `:port` after `]`")),
                },
            };
            (v6, port)
        } else {
            match s.split_once(':') {
                // A second colon means an IPv6 address without brackets: which part is the
                // port would be a guess.
                Some((_, p)) if p.contains(':') => {
                    return Err(format!(
                        "`{s}`: write IPv6 addresses in brackets, e.g. `[::1]:5060`"
                    ))
                }
                Some((h, p)) => {
                    check_hostname(h).map_err(|e| format!("`{s}`: {e}"))?;
                    (h, Some(p))
                }
                None => {
                    check_hostname(s).map_err(|e| format!("`{s}`: {e}"))?;
                    (s, None)
                }
            }
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("`{s}`: `{p}` is not a port (1-65535)")),
                Ok(n) => Some(n),
            },
        };
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

/// Checks a DNS host name or IPv4 address: letters, digits, `-` and `.`, labels of 1 to 63
/// bytes, at most 253 bytes in all (RFC 1035), optional trailing dot.
pub(crate) fn check_hostname(h: &str) -> Result<(), String> {
    let name = h.strip_suffix('.').unwrap_or(h);
    if name.is_empty() {
        return Err("empty host name".to_owned());
    }
    if name.len() > 253 {
        return Err("host name longer than 253 bytes".to_owned());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "`{h}` is not a valid host name (empty or too long label)"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "`{h}` is not a valid host name (only letters, digits, `-` and `.`)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "`{h}` is not a valid host name (label starts or ends with `-`)"
            ));
        }
    }
    Ok(())
}

impl TryFrom<String> for HostPort {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        HostPort::parse(&s)
    }
}

impl From<HostPort> for String {
    fn from(hp: HostPort) -> String {
        hp.to_string()
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` EnvFilter directive string, e.g. `info` or `warn,siprox=debug`.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// Lowercase name, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `[domains.<name>]`: one tenant domain. Certificates and route scripts arrive with their
/// own issues; for now a domain is the set of SIP domain names it answers for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    /// SIP domain names (the host part of request URIs) this domain serves. Its TLS server
    /// side answers to these names in SNI unless `server.sni` says otherwise.
    #[serde(default)]
    pub names: Vec<String>,
    /// `[domains.<name>.server]`: the TLS server side (certificate, client verification...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<crate::config::ServerTls>,
    /// `[domains.<name>.client]`: the TLS client side used when connecting to its peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<crate::config::ClientTls>,
    /// The domain's route script (relative to the configuration directory's parent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<PathBuf>,
}

impl Config {
    /// A short human summary: what `siprox check` prints when the configuration is valid.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let plural = |n: usize, one: &str, many: &str| {
            if n == 1 {
                format!("{n} {one}")
            } else {
                format!("{n} {many}")
            }
        };
        // Writing to a String cannot fail; the results are ignored on purpose.
        let _ = writeln!(
            s,
            "configuration OK: {} loaded, {}",
            plural(self.sources.len(), "file", "files"),
            plural(
                self.env_overrides.len(),
                "environment override",
                "environment overrides"
            ),
        );
        for path in &self.sources {
            let _ = writeln!(s, "  file {}", path.display());
        }
        for name in &self.env_overrides {
            let _ = writeln!(s, "  env  {name}");
        }
        let listeners: Vec<String> = self
            .listen
            .iter()
            .map(|l| match &l.advertise {
                Some(a) => format!("{} {} (advertised as {a})", l.proto, l.addr),
                None => format!("{} {}", l.proto, l.addr),
            })
            .collect();
        let _ = writeln!(s, "listen: {}", listeners.join(", "));
        let l = &self.limits;
        let _ = writeln!(
            s,
            "limits: max_message_size={} max_headers={} max_line_length={} max_uri_length={}",
            l.max_message_size, l.max_headers, l.max_line_length, l.max_uri_length
        );
        let _ = writeln!(
            s,
            "log: level={:?} format={}",
            self.log.level,
            self.log.format.as_str()
        );
        let names: usize = self.domains.values().map(|d| d.names.len()).sum();
        let _ = write!(
            s,
            "domains: {} ({})",
            self.domains.len(),
            plural(names, "SIP domain name", "SIP domain names")
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts_names_ipv4_and_bracketed_ipv6() {
        let hp = HostPort::parse("sip.example.com:5061").expect("valid");
        assert_eq!((hp.host.as_str(), hp.port), ("sip.example.com", Some(5061)));
        let hp = HostPort::parse("192.0.2.1").expect("valid");
        assert_eq!((hp.host.as_str(), hp.port), ("192.0.2.1", None));
        let hp = HostPort::parse("[2001:db8::1]:5060").expect("valid");
        assert_eq!((hp.host.as_str(), hp.port), ("2001:db8::1", Some(5060)));
        assert_eq!(hp.to_string(), "[2001:db8::1]:5060");
        assert_eq!(
            HostPort::parse("[::1]").map(|h| h.to_string()),
            Ok("[::1]".into())
        );
    }

    #[test]
    fn host_port_rejects_garbage() {
        for bad in [
            "",
            ":5060",
            "a:0",
            "a:70000",
            "a:b",
            "::1",
            "[::1",
            "[nope]:1",
            "[::1]5060",
            "bad host",
            "-a.example",
            "a..b",
        ] {
            assert!(HostPort::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn summary_mentions_listeners_limits_log_and_counts() {
        let config = Config {
            listen: vec![Listener {
                proto: Proto::Tls,
                addr: SocketAddr::from(([127, 0, 0, 1], 5061)),
                advertise: HostPort::parse("sip.example.com").ok(),
            }],
            sources: vec![PathBuf::from("conf.d/00-core.toml")],
            ..Config::default()
        };
        let s = config.summary();
        assert!(s.contains("1 file loaded"), "{s}");
        assert!(s.contains("conf.d/00-core.toml"), "{s}");
        assert!(
            s.contains("tls 127.0.0.1:5061 (advertised as sip.example.com)"),
            "{s}"
        );
        assert!(s.contains("max_message_size=65535"), "{s}");
        assert!(s.contains("level=\"info\" format=text"), "{s}");
        assert!(s.contains("domains: 0"), "{s}");
    }
}
