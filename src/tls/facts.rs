//! What siprox knows about a TLS connection and its certificates, as plain data: extracted
//! once per connection at handshake (by the runtime), read by the `@tls.*` selects and
//! `$tls_*` pseudo-variables. No OpenSSL types here; never holds key material.

use std::borrow::Cow;
use std::sync::Arc;

/// Facts about one TLS connection. Kept for the connection's life, so it shares what it
/// can: names OpenSSL holds statically, the domain's name, the cipher's description.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// Negotiated protocol, as OpenSSL names it: `TLSv1.2`, `TLSv1.3`.
    pub version: Cow<'static, str>,
    /// Cipher name, e.g. `TLS_AES_256_GCM_SHA384` or `ECDHE-RSA-AES256-GCM-SHA384`.
    pub cipher: Cow<'static, str>,
    /// Secret bits of the cipher.
    pub cipher_bits: u32,
    /// OpenSSL's description of the cipher (`@tls` / `@tls.desc`), verbatim as
    /// `SSL_CIPHER_description` writes it: name, version, key exchange, ..., and a trailing
    /// newline, as SER and Kamailio return it.
    pub desc: Arc<str>,
    /// SNI the client sent (server side) or that siprox sent (client side).
    pub server_name: Option<String>,
    /// The name of the TLS domain the connection belongs to.
    pub domain: Option<Arc<str>>,
    /// The peer's certificate, when it sent one.
    pub peer: Option<Arc<CertFacts>>,
    /// siprox's own certificate on this connection.
    pub my: Option<Arc<CertFacts>>,
    /// The peer's certificate chain verified against the domain's CAs (`@tls.peer.verified`).
    pub peer_verified: bool,
    /// The peer's certificate failed verification because a CRL lists it
    /// (`@tls.peer.revoked`). Where siprox verifies, such a handshake fails, so this is only
    /// ever true where it does not (a client connection with `verify_server = false`).
    pub peer_revoked: bool,
    /// The peer's certificate chain verified against the cluster CA (`[cluster.tls]`):
    /// the peer is another siprox node, whose node tokens (`nf=`) are honoured.
    pub cluster_peer: bool,
}

/// Facts about one X.509 certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertFacts {
    pub subject: DnFacts,
    pub issuer: DnFacts,
    /// X.509 version as SER's select returns it: the raw 0-based field (2 for a v3
    /// certificate).
    pub version: u32,
    /// Serial number, decimal.
    pub serial: String,
    /// `notBefore` in OpenSSL's print format: `Jun 17 15:03:20 2005 GMT`.
    pub not_before: String,
    /// `notAfter`, same format.
    pub not_after: String,
    /// `notAfter` as seconds since the Unix epoch (for expiry checks and metrics).
    pub not_after_unix: i64,
    /// `notBefore` as seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// subjectAltName entries by kind.
    pub san_email: Vec<String>,
    pub san_dns: Vec<String>,
    pub san_uri: Vec<String>,
    pub san_ip: Vec<String>,
    /// Subject and issuer are the same name (and the key verifies its own signature when
    /// the extractor could check it).
    pub self_signed: bool,
    /// SHA-256 fingerprint, lower-case hex without separators.
    pub fingerprint_sha256: String,
}

impl CertFacts {
    /// True when `now` (Unix seconds) is past `notAfter` or before `notBefore`.
    pub fn expired_at(&self, now: i64) -> bool {
        now > self.not_after_unix || now < self.not_before_unix
    }
}

/// A distinguished name: the whole one-line form and the common attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnFacts {
    /// One line, OpenSSL's oneline style: `/C=US/O=Example/CN=Bob`.
    pub line: String,
    /// The first CN.
    pub cn: Option<String>,
    /// How many CN entries the name holds (a name read from a certificate; 0 otherwise).
    /// With several, "the CN" is ambiguous: the management allow-list refuses CN entries.
    pub cn_count: usize,
    pub o: Option<String>,
    pub ou: Option<String>,
    pub c: Option<String>,
    pub st: Option<String>,
    pub l: Option<String>,
    pub uid: Option<String>,
    pub email: Option<String>,
}
