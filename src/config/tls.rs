//! TLS settings of a domain: `[domains.<name>.server]` (picked by SNI or listen address) and
//! `[domains.<name>.client]` (picked by destination or server name). The default domains
//! are `[tls]` and `[tls.client]`. Only names and values here: never opens a file.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::runtime::{ConfigDuration, TlsVersion, VerifyClient};

/// The key-exchange groups siprox accepts and offers unless a domain says otherwise:
/// OpenSSL 3.0's default list without its finite-field groups (ffdhe2048..8192). A client
/// may pick any group both sides list, and with ffdhe8192 one ClientHello costs the server
/// about 190 ms of CPU against 0.5 ms for X25519 (measured): a handshake flood that cheap
/// for the client would take a core with a few ClientHellos a second.
pub const DEFAULT_GROUPS: &str = "X25519:P-256:X448:P-521:P-384";

/// The server side of a TLS domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTls {
    /// SNI names this domain answers to: exact or `*.example.com` (one label). Empty: the
    /// domain's `names`.
    pub sni: Vec<String>,
    /// `ip:port` of TLS listeners this domain is limited to. Empty: every TLS listener. A
    /// domain with listeners and no names at all is that listener's domain for clients
    /// that send no (or an unknown) SNI.
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key, optionally encrypted (then give a password file or variable).
    pub private_key: PathBuf,
    /// File whose first line is the private key's password.
    pub private_key_password_file: Option<PathBuf>,
    /// Environment variable holding the private key's password.
    pub private_key_password_env: Option<String>,
    /// PEM CA certificates that verify client certificates (and are sent as the list of
    /// acceptable CAs).
    pub ca_file: Option<PathBuf>,
    /// Directory of hashed CA certificates (`c_rehash` layout).
    pub ca_dir: Option<PathBuf>,
    /// PEM certificate revocation list(s) checked for client certificates.
    pub crl_file: Option<PathBuf>,
    /// Whether clients must present a certificate.
    pub verify_client: VerifyClient,
    /// Longest client certificate chain accepted.
    pub verify_depth: u32,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// OpenSSL cipher list for TLS 1.2 (`ECDHE+AESGCM:...`). Empty: OpenSSL's secure default.
    pub ciphers: String,
    /// TLS 1.3 ciphersuites (`TLS_AES_256_GCM_SHA384:...`). Empty: OpenSSL's default.
    pub ciphersuites: String,
    /// Key-exchange groups (TLS 1.3 key shares, TLS 1.2 ECDHE curves), OpenSSL names
    /// separated by `:`. Default: [`DEFAULT_GROUPS`].
    pub groups: String,
    /// Allow session resumption (tickets and session ids).
    pub session_resumption: bool,
    /// Overrides `[connections] handshake_timeout` for this domain.
    pub handshake_timeout: Option<ConfigDuration>,
    /// Overrides `[connections] send_timeout` for this domain.
    pub send_timeout: Option<ConfigDuration>,
    /// Most live connections of this domain; 0 = only the global limit.
    pub max_connections: usize,
}

impl Default for ServerTls {
    fn default() -> Self {
        ServerTls {
            sni: Vec::new(),
            listen: Vec::new(),
            certificate: PathBuf::new(),
            private_key: PathBuf::new(),
            private_key_password_file: None,
            private_key_password_env: None,
            ca_file: None,
            ca_dir: None,
            crl_file: None,
            verify_client: VerifyClient::Off,
            verify_depth: 9,
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            ciphers: String::new(),
            ciphersuites: String::new(),
            groups: DEFAULT_GROUPS.to_owned(),
            session_resumption: true,
            handshake_timeout: None,
            send_timeout: None,
            max_connections: 0,
        }
    }
}

/// The client side of a TLS domain: what siprox presents and checks when it connects out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTls {
    /// `ip:port` destinations this client domain is used for.
    pub destinations: Vec<SocketAddr>,
    /// Server names (exact or `*.` wildcard) this client domain is used for.
    pub server_names: Vec<String>,
    /// PEM certificate chain siprox presents when the server asks for one.
    pub certificate: Option<PathBuf>,
    /// Its private key.
    pub private_key: Option<PathBuf>,
    pub private_key_password_file: Option<PathBuf>,
    pub private_key_password_env: Option<String>,
    /// CAs that verify the server. None: the system's default store.
    pub ca_file: Option<PathBuf>,
    pub ca_dir: Option<PathBuf>,
    pub crl_file: Option<PathBuf>,
    /// Verify the server's certificate chain.
    pub verify_server: bool,
    /// Check that the certificate names the host (DNS SAN) or address (IP SAN) connected to.
    pub verify_hostname: bool,
    /// SNI to send (and name to verify) instead of the destination's host name.
    pub server_name: Option<String>,
    pub verify_depth: u32,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    pub ciphers: String,
    pub ciphersuites: String,
    /// Key-exchange groups offered and accepted. Default: [`DEFAULT_GROUPS`].
    pub groups: String,
    pub session_resumption: bool,
    pub handshake_timeout: Option<ConfigDuration>,
    pub send_timeout: Option<ConfigDuration>,
    /// The server may send siprox new requests (outside a dialog siprox is on) over the
    /// connection siprox opened to it, once its certificate verified (RFC 5923 connection
    /// reuse: a carrier's INVITE to a phone behind siprox). Off: such requests get 403;
    /// in-dialog requests (a BYE) always pass.
    pub accept_requests: bool,
}

impl Default for ClientTls {
    fn default() -> Self {
        ClientTls {
            destinations: Vec::new(),
            server_names: Vec::new(),
            certificate: None,
            private_key: None,
            private_key_password_file: None,
            private_key_password_env: None,
            ca_file: None,
            ca_dir: None,
            crl_file: None,
            verify_server: true,
            verify_hostname: true,
            server_name: None,
            verify_depth: 9,
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            ciphers: String::new(),
            ciphersuites: String::new(),
            groups: DEFAULT_GROUPS.to_owned(),
            session_resumption: true,
            handshake_timeout: None,
            send_timeout: None,
            accept_requests: false,
        }
    }
}
