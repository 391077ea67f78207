//! `[management]`: the management listener (JSON-RPC / XML-RPC over HTTPS, Prometheus
//! `/metrics`), its TLS material and the allow-list of client certificates. Names and values
//! only: must never open a file or a socket (the runtime does).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::runtime::{ConfigDuration, TlsVersion, VerifyClient};
use super::tls::ServerTls;

/// `[management]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagementConfig {
    /// Start the management listener. Off unless configured: an open management port is a
    /// decision, not a default.
    pub enabled: bool,
    /// `ip:port` of the HTTPS listener.
    pub listen: SocketAddr,
    /// PEM certificate chain the listener presents.
    pub certificate: PathBuf,
    /// Its unencrypted PEM private key.
    pub private_key: PathBuf,
    /// PEM CA certificates that client certificates must chain to. A client without a
    /// valid certificate never completes the handshake.
    pub ca_file: PathBuf,
    /// Who may call, once verified: certificate subject CNs (`"admin"`), one-line subjects
    /// (`"/O=Example/CN=admin"`) or SHA-256 fingerprints (64 hex digits, `:` allowed,
    /// optionally prefixed `sha256:`). Empty: nobody (every call is answered "forbidden").
    pub allow: Vec<String>,
    /// Largest request body accepted (413 beyond).
    pub max_request_size: usize,
    /// A request (head and body) must arrive within this once it started.
    pub request_timeout: ConfigDuration,
    /// A keep-alive connection with no new request for this long is closed.
    pub idle_timeout: ConfigDuration,
    /// A client that has not finished its TLS handshake within this is disconnected.
    pub handshake_timeout: ConfigDuration,
    /// Most authenticated management connections open at once (more are closed at
    /// accept), and apart from them most connections still in their TLS handshake: when
    /// those are full, the oldest is dropped for the newcomer, so that idle connections
    /// cannot lock operators out.
    pub max_connections: usize,
    /// Minimum interval between two reloads started by `tls.reload` / `cfg.reload`; calls
    /// in between are coalesced into the one pending reload.
    pub reload_min_interval: ConfigDuration,
}

impl Default for ManagementConfig {
    fn default() -> Self {
        ManagementConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 5062)),
            certificate: PathBuf::from("certs/server.pem"),
            private_key: PathBuf::from("certs/server.key"),
            ca_file: PathBuf::from("certs/ca.pem"),
            allow: Vec::new(),
            max_request_size: 1024 * 1024,
            request_timeout: ConfigDuration::secs(10),
            idle_timeout: ConfigDuration::secs(60),
            handshake_timeout: ConfigDuration::secs(5),
            max_connections: 64,
            reload_min_interval: ConfigDuration::secs(1),
        }
    }
}

impl ManagementConfig {
    /// The server TLS settings of the listener: the configured identity, and a client
    /// certificate required and verified against `ca_file`.
    pub fn server_tls(&self) -> ServerTls {
        ServerTls {
            certificate: self.certificate.clone(),
            private_key: self.private_key.clone(),
            ca_file: Some(self.ca_file.clone()),
            verify_client: VerifyClient::Require,
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            ..ServerTls::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_on_loopback_and_require_a_client_certificate() {
        let m = ManagementConfig::default();
        assert!(!m.enabled);
        assert_eq!(m.listen.to_string(), "127.0.0.1:5062");
        let s = m.server_tls();
        assert_eq!(s.verify_client, VerifyClient::Require);
        assert_eq!(
            s.ca_file.as_deref(),
            Some(std::path::Path::new("certs/ca.pem"))
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        use figment::providers::Format as _;
        let r: Result<ManagementConfig, _> = figment::Figment::new()
            .merge(figment::providers::Serialized::defaults(
                ManagementConfig::default(),
            ))
            .merge(figment::providers::Toml::string("nope = 1"))
            .extract();
        assert!(r.is_err());
    }
}
