//! The runtime's own sections of conf.d: `[runtime]` (workers, shutdown), `[connections]`
//! (TCP/TLS timeouts, write queues, limits) and `[tls]` (the default server and client TLS
//! settings). Typed and checked when read, so a bad value names its file; must never open a
//! file, a socket or a thread: the paths here are only names, the runtime reads them.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A duration written as `"250ms"`, `"5s"`, `"2m"`, `"1h"`, or a bare integer of seconds.
///
/// Human units because operators read these files; a bare number means seconds because that
/// is what an environment override like `SIPROX_CONNECTIONS__SEND_TIMEOUT=5` most likely means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "DurationRepr", into = "String")]
pub struct ConfigDuration(pub Duration);

/// What a duration may be written as in TOML or the environment.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Seconds(u64),
    Text(String),
}

impl ConfigDuration {
    /// Longest accepted duration: a day. Anything longer is a typo, not a timeout.
    pub const MAX: Duration = Duration::from_secs(86_400);

    /// `n` seconds.
    pub const fn secs(n: u64) -> ConfigDuration {
        ConfigDuration(Duration::from_secs(n))
    }

    /// `n` milliseconds.
    pub const fn millis(n: u64) -> ConfigDuration {
        ConfigDuration(Duration::from_millis(n))
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// Parses `250ms`, `5s`, `2m`, `1h` or a bare number of seconds.
    pub fn parse(s: &str) -> Result<ConfigDuration, String> {
        let t = s.trim();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        let (num, unit) = t.split_at(digits);
        let n: u64 = num.parse().map_err(|_| {
            format!("`{s}` is not a duration (write e.g. \"250ms\", \"5s\", \"2m\", \"1h\")")
        })?;
        let d = match unit.trim() {
            "ms" => Duration::from_millis(n),
            "" | "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            other => return Err(format!("`{s}`: unknown unit `{other}` (use ms, s, m or h)")),
        };
        if d > Self::MAX {
            return Err(format!("`{s}` is longer than a day"));
        }
        Ok(ConfigDuration(d))
    }
}

impl TryFrom<DurationRepr> for ConfigDuration {
    type Error = String;
    fn try_from(r: DurationRepr) -> Result<Self, String> {
        match r {
            DurationRepr::Seconds(n) => ConfigDuration::parse(&n.to_string()),
            DurationRepr::Text(s) => ConfigDuration::parse(&s),
        }
    }
}

impl From<ConfigDuration> for String {
    fn from(d: ConfigDuration) -> String {
        d.to_string()
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

/// `[runtime]`: the actor system itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads (arbiters) that own sockets and connections; 0 = one per CPU core.
    pub workers: usize,
    /// How long SIGTERM/SIGINT waits for queued writes to drain before exiting anyway.
    pub shutdown_grace: ConfigDuration,
    /// Once this many fewer TCP/TLS connections are open than at the last high point (a
    /// flood of handshakes gone), or this many more than at the last low point with no new
    /// connection for a second (what their handshakes freed), freed heap memory is
    /// returned to the OS; 0 = never.
    pub trim_memory_after: usize,
    /// Refuse to start when any tenant domain (`[domains.*]`) cannot be built. false: such
    /// a tenant is left out with an error naming it, and every other tenant starts.
    pub strict_start: bool,
}

impl RuntimeConfig {
    /// More workers than this is a typo: each one is a thread with its own sockets.
    pub const MAX_WORKERS: usize = 1024;
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 0,
            shutdown_grace: ConfigDuration::secs(5),
            trim_memory_after: 1024,
            strict_start: false,
        }
    }
}

/// `[connections]`: TCP and TLS connections, incoming and outgoing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Most open TCP/TLS connections; further accepts are closed at once.
    pub max_connections: usize,
    /// Most open TCP/TLS connections from one source IP address; 0 = no per-IP limit.
    pub max_connections_per_ip: usize,
    /// A TLS handshake that takes longer is abandoned.
    pub handshake_timeout: ConfigDuration,
    /// A connection that carries nothing for this long is closed; 0 = never.
    pub idle_timeout: ConfigDuration,
    /// From the first byte of a message (or HTTP request) on a stream to its last: a peer
    /// that takes longer is disconnected, however it trickles its bytes; 0 = never.
    pub message_timeout: ConfigDuration,
    /// Most bytes of unfinished messages buffered for the streams of one source IP; the
    /// stream whose read goes over it is closed. 0 = no bound.
    pub max_partial_bytes_per_ip: usize,
    /// A peer that accepts none of its queued bytes for this long loses its connection.
    pub send_timeout: ConfigDuration,
    /// An outgoing TCP connect that takes longer fails (the TLS handshake then has its own).
    pub connect_timeout: ConfigDuration,
    /// Most bytes queued for one connection; a peer that lets more pile up is disconnected.
    /// At least `limits.max_message_size` (checked when the runtime starts).
    pub max_write_queue: usize,
    /// Listen backlog of each TCP/TLS socket: handshake storms need a deep one.
    pub listen_backlog: u32,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max_connections: 32_768,
            max_connections_per_ip: 4_096,
            handshake_timeout: ConfigDuration::secs(5),
            idle_timeout: ConfigDuration::secs(600),
            message_timeout: ConfigDuration::secs(5),
            max_partial_bytes_per_ip: 16 * 1024 * 1024,
            send_timeout: ConfigDuration::secs(5),
            connect_timeout: ConfigDuration::secs(5),
            max_write_queue: 1024 * 1024,
            listen_backlog: 4096,
        }
    }
}

/// `verify_client`: whether TLS clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyClient {
    /// Do not ask for a client certificate.
    #[default]
    Off,
    /// Ask; accept clients without one, refuse an invalid one.
    Optional,
    /// Refuse clients without a valid certificate.
    Require,
}

impl VerifyClient {
    /// Lowercase name, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyClient::Off => "off",
            VerifyClient::Optional => "optional",
            VerifyClient::Require => "require",
        }
    }
}

/// A TLS protocol version siprox can be limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    Tls13,
}

/// `[tls]`: the default server domain (every TLS listener, for ClientHellos that match no
/// `[domains.*.server]`) and the default client domain (outgoing TLS that matches no
/// `[domains.*.client]`), plus how TLS material is reloaded. Relative paths are relative to
/// the parent directory of the configuration directory (`conf.d/../certs/...`), whatever
/// the working directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain of the server, leaf first.
    pub certificate: PathBuf,
    /// PEM private key of `certificate`, optionally encrypted.
    pub private_key: PathBuf,
    /// File whose first line is the private key's password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key_password_file: Option<PathBuf>,
    /// Environment variable holding the private key's password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key_password_env: Option<String>,
    /// PEM CA certificates: verify client certificates and, on outgoing connections, the
    /// servers' certificates. Absent = the system's default CA store for outgoing connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Directory of hashed CA certificates (`c_rehash` layout), both directions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_dir: Option<PathBuf>,
    /// PEM CRL(s) checked for client certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crl_file: Option<PathBuf>,
    /// Whether TLS clients must present a certificate signed by `ca_file`.
    pub verify_client: VerifyClient,
    /// Longest certificate chain accepted (both directions).
    pub verify_depth: u32,
    /// Verify the certificate (and host name or IP) of servers siprox connects to. Turning
    /// this off makes outgoing TLS open to interception: only for labs.
    pub verify_server: bool,
    /// Lowest TLS version accepted and offered.
    pub min_version: TlsVersion,
    /// Highest TLS version accepted and offered.
    pub max_version: TlsVersion,
    /// TLS 1.2 cipher list (OpenSSL syntax). Empty: OpenSSL's secure default.
    pub ciphers: String,
    /// TLS 1.3 ciphersuites. Empty: OpenSSL's default.
    pub ciphersuites: String,
    /// Key-exchange groups accepted and offered (OpenSSL names, `:`-separated). Default:
    /// [`crate::config::DEFAULT_GROUPS`], no finite-field groups.
    pub groups: String,
    /// Allow session resumption (tickets and session ids).
    pub session_resumption: bool,
    /// PEM certificate chain siprox presents when a server asks for one (outgoing TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<PathBuf>,
    /// PEM private key of `client_certificate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_private_key: Option<PathBuf>,
    /// When none of `certificate`, `private_key`, `ca_file` and its key exist: generate a
    /// development CA and a certificate for localhost/127.0.0.1/::1 there (with a loud
    /// warning). When only some exist, the start refuses: existing files are never replaced.
    pub generate_dev_certs: bool,
    /// Serve this certificate to ClientHellos that match no domain. false: such a
    /// ClientHello is refused with the `unrecognized_name` alert (strict SNI hosting).
    pub default_server: bool,
    /// Warn (at every reload and once a day) about certificates expiring within this many days.
    pub expiry_warning_days: u32,
    /// Watch the configuration and certificate directories and reload on change.
    pub watch: bool,
    /// Quiet time after the last file event before reloading: a burst is one reload.
    pub reload_debounce: ConfigDuration,
    /// Re-read and hash everything this often, for file systems that miss events; 0 = never.
    pub reload_check_interval: ConfigDuration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            certificate: PathBuf::from("certs/server.pem"),
            private_key: PathBuf::from("certs/server.key"),
            private_key_password_file: None,
            private_key_password_env: None,
            ca_file: Some(PathBuf::from("certs/ca.pem")),
            ca_dir: None,
            crl_file: None,
            verify_client: VerifyClient::Off,
            verify_depth: 9,
            verify_server: true,
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            ciphers: String::new(),
            ciphersuites: String::new(),
            groups: crate::config::DEFAULT_GROUPS.to_owned(),
            session_resumption: true,
            client_certificate: None,
            client_private_key: None,
            generate_dev_certs: false,
            default_server: true,
            expiry_warning_days: 14,
            watch: true,
            reload_debounce: ConfigDuration::millis(200),
            reload_check_interval: ConfigDuration::secs(60),
        }
    }
}

impl TlsConfig {
    /// The default server domain's settings, in the shape of a domain's `server` table.
    pub fn server_tls(&self) -> crate::config::ServerTls {
        crate::config::ServerTls {
            sni: Vec::new(),
            listen: Vec::new(),
            certificate: self.certificate.clone(),
            private_key: self.private_key.clone(),
            private_key_password_file: self.private_key_password_file.clone(),
            private_key_password_env: self.private_key_password_env.clone(),
            ca_file: self.ca_file.clone(),
            ca_dir: self.ca_dir.clone(),
            crl_file: self.crl_file.clone(),
            verify_client: self.verify_client,
            verify_depth: self.verify_depth,
            min_version: self.min_version,
            max_version: self.max_version,
            ciphers: self.ciphers.clone(),
            ciphersuites: self.ciphersuites.clone(),
            groups: self.groups.clone(),
            session_resumption: self.session_resumption,
            handshake_timeout: None,
            send_timeout: None,
            max_connections: 0,
        }
    }

    /// The default client domain's settings, in the shape of a domain's `client` table.
    pub fn client_tls(&self) -> crate::config::ClientTls {
        crate::config::ClientTls {
            certificate: self.client_certificate.clone(),
            private_key: self.client_private_key.clone(),
            ca_file: self.ca_file.clone(),
            ca_dir: self.ca_dir.clone(),
            verify_server: self.verify_server,
            verify_hostname: self.verify_server,
            verify_depth: self.verify_depth,
            min_version: self.min_version,
            max_version: self.max_version,
            ciphers: self.ciphers.clone(),
            ciphersuites: self.ciphersuites.clone(),
            groups: self.groups.clone(),
            session_resumption: self.session_resumption,
            ..crate::config::ClientTls::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_units_and_bare_seconds() {
        assert_eq!(
            ConfigDuration::parse("250ms"),
            Ok(ConfigDuration::millis(250))
        );
        assert_eq!(ConfigDuration::parse("5s"), Ok(ConfigDuration::secs(5)));
        assert_eq!(ConfigDuration::parse("5"), Ok(ConfigDuration::secs(5)));
        assert_eq!(ConfigDuration::parse("2m"), Ok(ConfigDuration::secs(120)));
        assert_eq!(ConfigDuration::parse("1h"), Ok(ConfigDuration::secs(3600)));
        for bad in [
            "",
            "s",
            "5x",
            "-1s",
            "1.5s",
            "2d",
            "25h",
            "99999999999999999999",
        ] {
            assert!(
                ConfigDuration::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!(ConfigDuration::millis(1500).to_string(), "1500ms");
        assert_eq!(ConfigDuration::secs(3).to_string(), "3s");
    }

    #[test]
    fn sections_deserialize_from_toml_and_refuse_unknown_keys() {
        use figment::providers::{Format, Toml};
        #[derive(Deserialize)]
        struct Doc {
            runtime: RuntimeConfig,
            connections: ConnectionsConfig,
            tls: TlsConfig,
        }
        let doc: Doc = figment::Figment::from(Toml::string(
            r#"
            [runtime]
            workers = 3
            shutdown_grace = "2s"
            [connections]
            send_timeout = "750ms"
            idle_timeout = 30
            [tls]
            verify_client = "require"
            min_version = "1.3"
            generate_dev_certs = true
            "#,
        ))
        .extract()
        .expect("valid");
        assert_eq!(doc.runtime.workers, 3);
        assert_eq!(doc.runtime.shutdown_grace, ConfigDuration::secs(2));
        assert_eq!(doc.connections.send_timeout, ConfigDuration::millis(750));
        assert_eq!(doc.connections.idle_timeout, ConfigDuration::secs(30));
        assert_eq!(doc.connections.listen_backlog, 4096);
        assert_eq!(doc.tls.verify_client, VerifyClient::Require);
        assert_eq!(doc.tls.min_version, TlsVersion::Tls13);
        assert!(doc.tls.generate_dev_certs);

        let bad: Result<TlsConfig, _> =
            figment::Figment::from(Toml::string("certficate = \"x.pem\"")).extract();
        assert!(bad.is_err());
        let bad: Result<ConnectionsConfig, _> =
            figment::Figment::from(Toml::string("send_timeout = \"5 parsecs\"")).extract();
        assert!(bad.is_err());
    }
}
