//! Checks on the merged configuration that types alone cannot express (at least one listener,
//! no two listeners on one socket, coherent limits, a log filter that parses). Pure: it must
//! never touch the file system or the network; binding is the runtime's job.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use figment::value::Value;
use figment::Figment;

use super::error::{ConfigError, Origin};
use super::load::{origin_of, render_key};
use super::schema::{check_hostname, Config, Listener};

/// Largest accepted `limits.max_message_size`. A TCP/TLS peer can make siprox buffer this
/// much per connection before framing fails, so a typo of a few zeros must not get through.
pub const MAX_MESSAGE_SIZE_CEILING: usize = 16 * 1024 * 1024;

/// Where the merged values came from, so that validation errors name a file.
pub(crate) struct Provenance<'a> {
    dir: &'a Path,
    figment: Option<&'a Figment>,
    merged: Option<Value>,
}

/// One step of a key path into the merged value.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

impl<'a> Provenance<'a> {
    /// `figment` is `None` for a configuration built in code: errors then name `dir`.
    pub(crate) fn new(dir: &'a Path, figment: Option<&'a Figment>) -> Self {
        // An empty path finds the root: the whole merged tree, every value still tagged
        // with the provider it came from.
        let merged = figment.and_then(|f| f.find_value("").ok());
        Provenance {
            dir,
            figment,
            merged,
        }
    }

    fn origin(&self, path: &[Seg<'_>]) -> Option<Origin> {
        let mut value = self.merged.as_ref()?;
        for seg in path {
            value = match (seg, value) {
                (Seg::Key(k), Value::Dict(_, dict)) => dict.get(*k)?,
                (Seg::Index(i), Value::Array(_, items)) => items.get(*i)?,
                _ => return None,
            };
        }
        let md = self.figment?.get_metadata(value.tag())?;
        origin_of(md)
    }

    /// The origin of the value at `path`, segments as strings (a list index as digits).
    pub(crate) fn origin_of_path(&self, path: &[&str]) -> Option<Origin> {
        let mut value = self.merged.as_ref()?;
        for seg in path {
            value = match value {
                Value::Dict(_, dict) => dict.get(*seg)?,
                Value::Array(_, items) => items.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        origin_of(self.figment?.get_metadata(value.tag())?)
    }

    /// The origin of the first of `paths` that some source set explicitly; the directory if
    /// none was (the value is a built-in default).
    fn origin_of_any(&self, paths: &[&[Seg<'_>]]) -> Origin {
        paths
            .iter()
            .find_map(|p| self.origin(p))
            .unwrap_or_else(|| Origin::Dir(self.dir.to_path_buf()))
    }
}

/// All validation errors of `config`, in a stable order.
pub(crate) fn validate(config: &Config, prov: &Provenance<'_>) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    check_listeners(config, prov, &mut errors);
    check_limits(config, prov, &mut errors);
    if let Err(message) = check_log_directives(&config.log.level) {
        let path = [Seg::Key("log"), Seg::Key("level")];
        errors.push(ConfigError::Invalid {
            origin: prov.origin_of_any(&[&path]),
            key: "log.level".to_owned(),
            message,
        });
    }
    check_domains(config, prov, &mut errors);
    check_tls_domains(config, prov, &mut errors);
    check_runtime_settings(config, prov, &mut errors);
    check_cluster(config, prov, &mut errors);
    check_cluster_keys(config, prov, &mut errors);
    check_cluster_auth(config, prov, &mut errors);
    errors
}

/// The merged `[cluster]` (each file or variable alone may set one key of it).
fn check_cluster(config: &Config, prov: &Provenance<'_>, errors: &mut Vec<ConfigError>) {
    if let Some(Err(message)) = config.cluster.as_ref().map(|c| c.check()) {
        errors.push(ConfigError::Invalid {
            origin: prov.origin_of_any(&[&[Seg::Key("cluster")]]),
            key: "cluster".to_owned(),
            message,
        });
    }
}

/// A cluster signs node tokens (`nf=`) with the flow keys: every node must read them from
/// a file (the same file on every node, so that one rotation covers the cluster), never
/// from a key drawn at random per process.
fn check_cluster_keys(config: &Config, prov: &Provenance<'_>, errors: &mut Vec<ConfigError>) {
    if config.cluster.is_some() && config.auth.flow_key_file.is_none() {
        let path = [Seg::Key("cluster")];
        errors.push(ConfigError::Invalid {
            origin: prov.origin_of_any(&[&path]),
            key: "auth.flow_key_file".to_owned(),
            message: "[cluster] needs [auth] flow_key_file, the same file on every node \
                      (node tokens are signed with it)"
                .to_owned(),
        });
    }
}

/// The nodes of a cluster must accept each other's digest nonces: they need the same nonce
/// secret, which comes from `[auth] secret_file` (deployed with the certificates), not from
/// Redis (a node must not start with a secret of its own because Redis was down, and the
/// secret must not be readable by whoever reads Redis).
fn check_cluster_auth(config: &Config, prov: &Provenance<'_>, errors: &mut Vec<ConfigError>) {
    if config.cluster.is_some() && config.auth.secret_file.is_none() {
        errors.push(ConfigError::Invalid {
            origin: prov.origin_of_any(&[&[Seg::Key("cluster")]]),
            key: "auth.secret_file".to_owned(),
            message: "[cluster] needs [auth] secret_file, the same file on every node, so \
                      that a digest challenge from one node is accepted by another"
                .to_owned(),
        });
    }
}

/// What the runtime would refuse at start or on reload, decided here so that `siprox check`
/// refuses it too, with the same words (the runtime keeps its own checks only for
/// configurations built in code).
fn check_runtime_settings(config: &Config, prov: &Provenance<'_>, errors: &mut Vec<ConfigError>) {
    let mut push = |section: &str, key: &str, message: String| {
        errors.push(ConfigError::Invalid {
            origin: prov
                .origin_of_any(&[&[Seg::Key(section), Seg::Key(key)], &[Seg::Key(section)]]),
            key: format!("{section}.{key}"),
            message,
        });
    };
    let max = super::RuntimeConfig::MAX_WORKERS;
    if config.runtime.workers > max {
        push(
            "runtime",
            "workers",
            format!("{} is more than {max}", config.runtime.workers),
        );
    }
    let c = &config.connections;
    for (key, d) in [
        ("handshake_timeout", c.handshake_timeout),
        ("send_timeout", c.send_timeout),
        ("connect_timeout", c.connect_timeout),
    ] {
        if d.get().is_zero() {
            push("connections", key, "must be greater than 0".to_owned());
        }
    }
    // One maximal message must fit in a queue, or a peer would be cut off for being sent
    // a single large (valid) message.
    if c.max_write_queue < config.limits.max_message_size {
        push(
            "connections",
            "max_write_queue",
            format!(
                "{} is less than limits.max_message_size ({})",
                c.max_write_queue, config.limits.max_message_size
            ),
        );
    }
    for (key, message) in config.transactions.check() {
        push("transactions", key, message);
    }
    for name in config.htables.keys() {
        if let Some(message) = crate::config::htable::check_name(name) {
            push("htables", name, message);
        }
    }
    for a in &config.auth.algorithms {
        if crate::auth::Algorithm::parse(a).is_none() {
            push(
                "auth",
                "algorithms",
                format!("`{a}` is not SHA-256, SHA-256-sess, MD5 or MD5-sess"),
            );
        }
    }
    if config.auth.algorithms.is_empty() {
        push("auth", "algorithms", "at least one is needed".to_owned());
    }
    let m = &config.management;
    if m.enabled {
        if let Err(e) = crate::rpc::AllowList::parse(&m.allow) {
            push("management", "allow", e.join("; "));
        }
        for (key, path) in [
            ("certificate", &m.certificate),
            ("private_key", &m.private_key),
            ("ca_file", &m.ca_file),
        ] {
            if path.as_os_str().is_empty() {
                push(
                    "management",
                    key,
                    "is needed when the management listener is enabled".to_owned(),
                );
            }
        }
    }
}

/// The TLS sides of the domains: names and listeners that can match, timeouts, and no two
/// domains claiming one name (the same tables the handshake will use, built here once so
/// that `siprox check` and a reload refuse the same configurations).
fn check_tls_domains(config: &Config, prov: &Provenance<'_>, errors: &mut Vec<ConfigError>) {
    use crate::config::Proto;
    use crate::tls::{ClientMatcher, ServerMatcher};
    let tls_listeners: Vec<SocketAddr> = config
        .listen
        .iter()
        .filter(|l| l.proto == Proto::Tls)
        .map(|l| l.addr)
        .collect();
    // Port 0 is chosen by the OS at bind time: no configured address can be checked against it.
    let listen_checkable = tls_listeners.iter().all(|a| a.port() != 0);
    let origin_of = |domain: &str, side: &str| {
        prov.origin_of_any(&[
            &[Seg::Key("domains"), Seg::Key(domain), Seg::Key(side)],
            &[Seg::Key("domains"), Seg::Key(domain)],
        ])
    };
    let mut specs = Vec::new();
    for (domain, d) in &config.domains {
        let Some(server) = &d.server else { continue };
        let origin = origin_of(domain, "server");
        let key = |k: &str| render_key(["domains", domain.as_str(), "server", k]);
        let spec = crate::tls::server_spec(domain, d, server, &origin.to_string());
        if spec.sni.is_empty() && spec.listen.is_empty() {
            errors.push(ConfigError::Invalid {
                origin: origin.clone(),
                key: key("sni"),
                message: "this server side matches no ClientHello: give the domain names, \
                          server.sni or server.listen"
                    .to_owned(),
            });
        }
        for l in &server.listen {
            if listen_checkable && !tls_listeners.contains(l) {
                errors.push(ConfigError::Invalid {
                    origin: origin.clone(),
                    key: key("listen"),
                    message: format!("{l} is not the address of any tls [[listen]]"),
                });
            }
        }
        for (k, v) in [
            ("handshake_timeout", server.handshake_timeout),
            ("send_timeout", server.send_timeout),
        ] {
            if v.is_some_and(|v| v.get().is_zero()) {
                errors.push(ConfigError::Invalid {
                    origin: origin.clone(),
                    key: key(k),
                    message: "must be greater than 0".to_owned(),
                });
            }
        }
        if server.min_version > server.max_version {
            errors.push(ConfigError::Invalid {
                origin: origin.clone(),
                key: key("min_version"),
                message: "greater than max_version".to_owned(),
            });
        }
        specs.push((origin, spec));
    }
    let only: Vec<_> = specs.iter().map(|(_, s)| s.clone()).collect();
    if let Err(es) = ServerMatcher::build(&only) {
        for e in es {
            let origin = match &e {
                crate::tls::MatchError::DuplicateName { second, .. }
                | crate::tls::MatchError::DuplicateListener { second, .. } => {
                    origin_of(second, "server")
                }
                crate::tls::MatchError::BadName { domain, .. } => origin_of(domain, "server"),
            };
            errors.push(ConfigError::Invalid {
                origin,
                key: "domains".to_owned(),
                message: e.to_string(),
            });
        }
    }
    let clients = crate::tls::client_specs(config);
    let (_, conflicts) = ClientMatcher::build(&clients);
    for c in conflicts {
        errors.push(ConfigError::Invalid {
            origin: Origin::Dir(prov.dir.to_path_buf()),
            key: "domains".to_owned(),
            message: c,
        });
    }
}

fn check_listeners(config: &Config, prov: &Provenance<'_>, errors: &mut Vec<ConfigError>) {
    if config.listen.is_empty() {
        errors.push(ConfigError::Invalid {
            origin: Origin::Dir(prov.dir.to_path_buf()),
            key: "listen".to_owned(),
            message: "no listener: add at least one [[listen]] table".to_owned(),
        });
        return;
    }
    // [[listen]] entries are appended in file order (load::COLLECTIONS), so a listener's index inside its own file is
    // the number of earlier listeners from that same file: that is the index to report.
    let mut located: Vec<(Origin, String)> = Vec::with_capacity(config.listen.len());
    for i in 0..config.listen.len() {
        let origin = prov.origin_of_any(&[&[Seg::Key("listen"), Seg::Index(i)]]);
        let local = located.iter().filter(|(o, _)| *o == origin).count();
        located.push((origin, format!("listen[{local}]")));
    }

    for (i, l) in config.listen.iter().enumerate() {
        // Port 0 asks the OS for a fresh port each time: never a clash.
        if l.addr.port() == 0 {
            continue;
        }
        let clash = config.listen[..i]
            .iter()
            .enumerate()
            .filter(|(_, other)| other.addr.port() != 0)
            .find_map(|(j, other)| clash(other, l).map(|why| (j, why)));
        if let Some((j, why)) = clash {
            let (origin, key) = located[i].clone();
            let (other_origin, other_key) = &located[j];
            errors.push(ConfigError::Invalid {
                origin,
                key,
                message: format!(
                    "listener {} {} {why} {} {} ({other_key} in {other_origin})",
                    l.proto, l.addr, config.listen[j].proto, config.listen[j].addr
                ),
            });
        }
    }
}

/// Why `b` cannot be bound next to `a`, if it cannot.
fn clash(a: &Listener, b: &Listener) -> Option<&'static str> {
    // tcp and tls both bind TCP sockets: they share one port space.
    if a.proto.is_stream() != b.proto.is_stream() {
        return None;
    }
    if a.addr == b.addr {
        return Some(if a.proto == b.proto {
            "is defined twice: same as"
        } else {
            "needs the same TCP socket as"
        });
    }
    if overlaps(a.addr, b.addr) {
        return Some("overlaps the wildcard address of");
    }
    None
}

/// A wildcard bind (`0.0.0.0:p`) takes port p on every address of its family, so a second
/// bind of p on a specific address of that family fails with "address in use".
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip().is_unspecified() != b.ip().is_unspecified())
}

fn check_limits(config: &Config, prov: &Provenance<'_>, errors: &mut Vec<ConfigError>) {
    let l = &config.limits;
    // `key` is the limit at fault; the error names the file that set it or, if it kept
    // its default, the file that set `other` (the limit it is compared with).
    let mut push = |key: &str, other: Option<&str>, message: String| {
        let path = [Seg::Key("limits"), Seg::Key(key)];
        let other_path = [Seg::Key("limits"), Seg::Key(other.unwrap_or(key))];
        errors.push(ConfigError::Invalid {
            origin: prov.origin_of_any(&[&path, &other_path]),
            key: format!("limits.{key}"),
            message,
        });
    };
    for (name, value) in [
        ("max_message_size", l.max_message_size),
        ("max_headers", l.max_headers),
        ("max_line_length", l.max_line_length),
        ("max_uri_length", l.max_uri_length),
    ] {
        if value == 0 {
            push(name, None, "must be greater than 0".to_owned());
        }
    }
    if l.max_message_size > MAX_MESSAGE_SIZE_CEILING {
        push(
            "max_message_size",
            None,
            format!(
                "{} is more than the {MAX_MESSAGE_SIZE_CEILING} bytes siprox accepts",
                l.max_message_size
            ),
        );
    }
    // A line is part of a message and a URI part of a line: a larger inner limit is dead
    // configuration, and almost always a units mistake.
    if l.max_line_length > l.max_message_size {
        push(
            "max_line_length",
            Some("max_message_size"),
            format!(
                "{} is larger than limits.max_message_size ({})",
                l.max_line_length, l.max_message_size
            ),
        );
    }
    if l.max_uri_length > l.max_line_length {
        push(
            "max_uri_length",
            Some("max_line_length"),
            format!(
                "{} is larger than limits.max_line_length ({})",
                l.max_uri_length, l.max_line_length
            ),
        );
    }
}

fn check_domains(config: &Config, prov: &Provenance<'_>, errors: &mut Vec<ConfigError>) {
    // Lowercased SIP domain name -> the domain that claimed it first.
    let mut claimed: BTreeMap<String, &str> = BTreeMap::new();
    for (domain, d) in &config.domains {
        let names_path = [Seg::Key("domains"), Seg::Key(domain), Seg::Key("names")];
        let domain_path = [Seg::Key("domains"), Seg::Key(domain)];
        let origin = || prov.origin_of_any(&[&names_path, &domain_path]);
        let key = render_key(["domains", domain.as_str(), "names"]);
        if domain.is_empty() {
            errors.push(ConfigError::Invalid {
                origin: origin(),
                key: "domains".to_owned(),
                message: "a domain needs a non-empty name".to_owned(),
            });
        }
        // A domain with names and no TLS side is a SIP-only domain; one with only a TLS side
        // is a certificate domain. One with neither is a typo.
        if d.names.is_empty() && d.server.is_none() && d.client.is_none() {
            errors.push(ConfigError::Invalid {
                origin: origin(),
                key: key.clone(),
                message: "a domain needs SIP domain names, a [server] or a [client] table"
                    .to_owned(),
            });
        }
        for name in &d.names {
            if let Err(e) = check_hostname(name) {
                errors.push(ConfigError::Invalid {
                    origin: origin(),
                    key: key.clone(),
                    message: e,
                });
                continue;
            }
            // Requests are routed to a domain by name: one name in two domains would make
            // the choice depend on map order.
            let lower = name.trim_end_matches('.').to_ascii_lowercase();
            match claimed.get(lower.as_str()) {
                Some(first) if *first != domain.as_str() => errors.push(ConfigError::Invalid {
                    origin: origin(),
                    key: key.clone(),
                    message: format!(
                        "SIP domain name `{name}` is already served by {}",
                        render_key(["domains", first])
                    ),
                }),
                Some(_) => {}
                None => {
                    claimed.insert(lower, domain.as_str());
                }
            }
        }
    }
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

fn is_level(s: &str) -> bool {
    LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s))
        || matches!(s, "0" | "1" | "2" | "3" | "4" | "5")
}

/// Checks a `tracing` EnvFilter directive string: comma-separated `level` or
/// `target[span{field=value}]=level` directives. The core does not depend on
/// tracing-subscriber, so this is a syntax check, stricter in two ways: no whitespace
/// (EnvFilter would read ` siprox` as a target with a space), and a directive without `=`
/// must be a level: EnvFilter would read `verbose` as "trace for target verbose, everything
/// else off", which is never what `level = "verbose"` meant.
pub fn check_log_directives(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("empty log level: use a level such as `info`".to_owned());
    }
    if s.chars().any(char::is_whitespace) || s.chars().any(char::is_control) {
        return Err(format!(
            "`{}`: no spaces or control characters in a log filter (e.g. `warn,siprox=debug`)",
            s.escape_debug()
        ));
    }
    let mut any = false;
    for d in split_top_level(s)? {
        // EnvFilter skips empty directives (`info,`), so they are tolerated here too.
        if d.is_empty() {
            continue;
        }
        any = true;
        check_directive(d)?;
    }
    if !any {
        return Err(format!("`{s}`: no directive"));
    }
    Ok(())
}

/// Splits at commas outside `[...]` and `{...}` (span field values may contain commas).
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("`{s}`: unbalanced `{c}`"))?;
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("`{s}`: unclosed `[` or `{{`"));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn check_directive(d: &str) -> Result<(), String> {
    // The level is after the last `=` outside brackets; `=` inside is a span field filter.
    let mut depth = 0usize;
    let mut eq = None;
    for (i, c) in d.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            '=' if depth == 0 => eq = Some(i),
            _ => {}
        }
    }
    let Some(eq) = eq else {
        return if is_level(d) {
            Ok(())
        } else {
            Err(format!(
                "`{d}` is not a log level (off, error, warn, info, debug, trace; \
                 for one target only, write `{d}=debug`)"
            ))
        };
    };
    let (selector, level) = (&d[..eq], &d[eq + 1..]);
    if !is_level(level) {
        return Err(format!(
            "`{d}`: `{level}` is not a log level (off, error, warn, info, debug, trace)"
        ));
    }
    let (target, span) = match selector.find('[') {
        Some(open) => (&selector[..open], Some(&selector[open..])),
        None => (selector, None),
    };
    if target.is_empty() && span.is_none() {
        return Err(format!("`{d}`: missing target before `=`"));
    }
    if !target
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-' | b'.'))
    {
        return Err(format!(
            "`{d}`: `{target}` is not a target (letters, digits, `_`, `-`, `.` and `::`)"
        ));
    }
    if let Some(span) = span {
        if !span.ends_with(']') {
            return Err(format!("`{d}`: a span filter `[...]` must end the target"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::Proto;
    use std::path::PathBuf;

    fn listener(proto: Proto, addr: &str) -> Listener {
        Listener {
            proto,
            addr: addr.parse().expect("test address"),
            advertise: None,
        }
    }

    fn errors_of(config: &Config) -> Vec<String> {
        let dir = PathBuf::from("test.d");
        validate(config, &Provenance::new(&dir, None))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn with_listeners(listen: Vec<Listener>) -> Config {
        Config {
            listen,
            ..Config::default()
        }
    }

    #[test]
    fn a_cluster_needs_a_flow_key_file() {
        let mut config = with_listeners(vec![listener(Proto::Udp, "127.0.0.1:5060")]);
        config.cluster = Some(crate::config::ClusterConfig {
            node: "a".into(),
            advertise: "sip:127.0.0.1:5060".into(),
            redis: vec!["redis://127.0.0.1".into()],
            key_prefix: "siprox".into(),
            heartbeat: crate::config::ConfigDuration::secs(2),
            node_timeout: crate::config::ConfigDuration::secs(6),
            tls: None,
            insecure_plaintext: true,
            ticket_rotation: crate::config::ConfigDuration::secs(3600),
            redis_tls: None,
        });
        config.auth.secret_file = Some("nonce.secret".into());
        let errors = errors_of(&config);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("auth.flow_key_file"), "{errors:?}");
        config.auth.flow_key_file = Some("flow.keys".into());
        assert_eq!(errors_of(&config), Vec::<String>::new());
    }

    #[test]
    fn default_with_one_listener_is_valid() {
        let config = with_listeners(vec![listener(Proto::Udp, "127.0.0.1:5060")]);
        assert_eq!(errors_of(&config), Vec::<String>::new());
    }

    #[test]
    fn what_the_runtime_refuses_is_refused_here() {
        let mut config = with_listeners(vec![listener(Proto::Udp, "127.0.0.1:5060")]);
        config.connections.send_timeout = crate::config::ConfigDuration(std::time::Duration::ZERO);
        config.connections.max_write_queue = 10;
        config.runtime.workers = 100_000;
        config.auth.algorithms = vec!["SHA-1".to_owned()];
        config.management.enabled = true;
        config.management.allow = vec!["sha256:12".to_owned()];
        config.management.certificate = PathBuf::new();
        let errors = errors_of(&config).join("\n");
        for want in [
            "must be greater than 0 at key \"connections.send_timeout\"",
            "at key \"connections.max_write_queue\"",
            "100000 is more than 1024 at key \"runtime.workers\"",
            "`SHA-1` is not SHA-256, SHA-256-sess, MD5 or MD5-sess at key \"auth.algorithms\"",
            "at key \"management.allow\"",
            "is needed when the management listener is enabled at key \"management.certificate\"",
        ] {
            assert!(errors.contains(want), "missing {want:?} in:\n{errors}");
        }
        config.auth.algorithms.clear();
        assert!(errors_of(&config)
            .iter()
            .any(|e| e.contains("at least one is needed")));
    }

    #[test]
    fn a_cluster_needs_the_shared_nonce_secret_file() {
        let mut config = with_listeners(vec![listener(Proto::Udp, "127.0.0.1:5060")]);
        config.cluster = Some(
            toml::from_str::<crate::config::ClusterConfig>(
                "node = \"a\"\nadvertise = \"sip:h\"\nredis = \"redis://h\"\n\
                 insecure_plaintext = true\n",
            )
            .expect("a cluster section"),
        );
        let errors = errors_of(&config).join("\n");
        assert!(
            errors.contains("[cluster] needs [auth] secret_file")
                && errors.contains("at key \"auth.secret_file\""),
            "{errors}"
        );
        config.auth.secret_file = Some(PathBuf::from("cluster.secret"));
        config.auth.flow_key_file = Some(PathBuf::from("flow.keys"));
        assert_eq!(errors_of(&config), Vec::<String>::new());
    }

    #[test]
    fn no_listener_is_an_error() {
        let errors = errors_of(&Config::default());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("no listener"), "{errors:?}");
        assert!(errors[0].contains("test.d"), "{errors:?}");
    }

    #[test]
    fn listener_clashes() {
        let cases = [
            (
                Proto::Udp,
                "127.0.0.1:5060",
                Proto::Udp,
                "127.0.0.1:5060",
                true,
            ),
            (
                Proto::Tcp,
                "127.0.0.1:5060",
                Proto::Tls,
                "127.0.0.1:5060",
                true,
            ),
            (
                Proto::Udp,
                "127.0.0.1:5060",
                Proto::Tcp,
                "127.0.0.1:5060",
                false,
            ),
            (
                Proto::Udp,
                "0.0.0.0:5060",
                Proto::Udp,
                "127.0.0.1:5060",
                true,
            ),
            (Proto::Udp, "[::]:5060", Proto::Udp, "127.0.0.1:5060", false),
            (Proto::Udp, "[::]:5060", Proto::Udp, "[::1]:5060", true),
            (
                Proto::Udp,
                "127.0.0.1:5060",
                Proto::Udp,
                "127.0.0.2:5060",
                false,
            ),
            (Proto::Tcp, "127.0.0.1:0", Proto::Tcp, "127.0.0.1:0", false),
            (Proto::Tcp, "0.0.0.0:0", Proto::Tcp, "127.0.0.1:0", false),
        ];
        for (pa, a, pb, b, bad) in cases {
            let errors = errors_of(&with_listeners(vec![listener(pa, a), listener(pb, b)]));
            assert_eq!(!errors.is_empty(), bad, "{pa} {a} / {pb} {b}: {errors:?}");
        }
    }

    #[test]
    fn limits_must_be_positive_and_nested() {
        let mut config = with_listeners(vec![listener(Proto::Udp, "127.0.0.1:5060")]);
        config.limits.max_headers = 0;
        config.limits.max_uri_length = 10_000;
        let errors = errors_of(&config);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("limits.max_headers"), "{errors:?}");
        assert!(errors[1].contains("limits.max_uri_length"), "{errors:?}");

        let mut config = with_listeners(vec![listener(Proto::Udp, "127.0.0.1:5060")]);
        config.limits.max_message_size = 100;
        let errors = errors_of(&config);
        assert!(errors[0].contains("limits.max_line_length"), "{errors:?}");

        config.limits.max_message_size = MAX_MESSAGE_SIZE_CEILING + 1;
        let errors = errors_of(&config);
        assert!(errors[0].contains("limits.max_message_size"), "{errors:?}");
    }

    #[test]
    fn domains_need_valid_distinct_names() {
        let mut config = with_listeners(vec![listener(Proto::Udp, "127.0.0.1:5060")]);
        let domain = |names: &[&str]| crate::config::DomainConfig {
            names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        config
            .domains
            .insert("a".into(), domain(&["a.example.com"]));
        assert!(errors_of(&config).is_empty());
        config
            .domains
            .insert("b".into(), domain(&["A.example.com."]));
        config.domains.insert("c".into(), domain(&[]));
        config.domains.insert("d".into(), domain(&["not a host"]));
        let errors = errors_of(&config);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].contains("already served by domains.a"),
            "{errors:?}"
        );
        assert!(errors[1].contains("domains.c.names"), "{errors:?}");
        assert!(errors[2].contains("domains.d.names"), "{errors:?}");
    }

    #[test]
    fn log_directives() {
        for ok in [
            "info",
            "INFO",
            "warn,siprox=debug",
            "siprox::sip=trace",
            "info,",
            "off",
            "3",
            "siprox[conn{peer=1.2.3.4,x=1}]=debug",
            "[conn]=trace",
        ] {
            assert_eq!(check_log_directives(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "  ",
            ",",
            "verbose",
            "inf",
            "siprox=loud",
            "=debug",
            "warn, siprox=debug",
            "siprox[conn=debug",
            "siprox]=debug",
            "a b=debug",
            "tab\tinfo",
            "sip rox=info",
            "siprox[x]y=info",
        ] {
            assert!(check_log_directives(bad).is_err(), "{bad:?} should fail");
        }
    }
}
