//! `www_authorize`/`proxy_authorize` and `www_challenge`/`proxy_challenge` (RFC 3261 §22,
//! RFC 7616, RFC 8760): check the credentials of a request against the users, issue
//! challenges. Sans-IO (`now` passed in) and panic-free on any header content.

use std::borrow::Cow;
use std::fmt::Write as _;

use bytes::Bytes;

use super::digest::{response, Algorithm, CryptoError, ResponseInput};
use super::nonce::{NcCheck, NonceCheck, NonceManager};
use super::params::{Credentials, CredentialsError};
use super::users::UserDb;
use crate::proxy::{build_reply, Inbound};
use crate::sip::{Editor, HeaderName, Message, Uri};

/// Which side of RFC 3261 §22 is asking: a registrar/UAS (401) or a proxy (407).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthKind {
    /// 401, `WWW-Authenticate` / `Authorization`.
    Www,
    /// 407, `Proxy-Authenticate` / `Proxy-Authorization`.
    Proxy,
}

impl AuthKind {
    /// The header the client's credentials are in.
    pub fn credentials_header(self) -> HeaderName {
        match self {
            AuthKind::Www => HeaderName::Authorization,
            AuthKind::Proxy => HeaderName::ProxyAuthorization,
        }
    }

    /// The header a challenge goes in.
    pub fn challenge_header(self) -> &'static str {
        match self {
            AuthKind::Www => "WWW-Authenticate",
            AuthKind::Proxy => "Proxy-Authenticate",
        }
    }

    /// The challenge status and reason.
    pub fn challenge_status(self) -> (u16, &'static str) {
        match self {
            AuthKind::Www => (401, "Unauthorized"),
            AuthKind::Proxy => (407, "Proxy Authentication Required"),
        }
    }
}

/// Digest settings (`[auth]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// Nonce lifetime, seconds; older nonces get `stale=true`.
    pub nonce_ttl: u32,
    /// Algorithms offered, one challenge each, in order of preference (RFC 8760 §2.4:
    /// SHA-256 before MD5).
    pub algorithms: Vec<Algorithm>,
    /// Refuse credentials without `qop` (RFC 2069 style): they carry no nonce count, so
    /// replays could not be detected.
    pub require_qop: bool,
    /// The digest `uri` must be the Request-URI (RFC 7616 §3.4.6).
    pub check_uri: bool,
    /// Bound on the nonce-count table.
    pub max_tracked_nonces: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            nonce_ttl: 300,
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            require_qop: true,
            check_uri: true,
            max_tracked_nonces: 100_000,
        }
    }
}

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub username: String,
    pub realm: String,
    pub algorithm: Algorithm,
}

/// Why the digest did not match: both answer 403, the difference is for logs only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    UnknownUser,
    /// No HA1 stored for the algorithm the client chose.
    NoHa1ForAlgorithm,
    WrongPassword,
}

/// The outcome of `www_authorize` / `proxy_authorize`. See [`AuthResult::verdict`] for the
/// answer each one calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    Ok(AuthUser),
    /// No Digest credentials for this realm: challenge.
    NoCredentials,
    /// Right digest on an expired (or forgotten) nonce: challenge with `stale=true`.
    Stale,
    /// The nonce is not one of ours (forged, other realm, previous secret): challenge.
    UnknownNonce,
    /// Wrong password or unknown user: 403.
    Invalid(InvalidReason),
    /// A nonce count seen before: 403.
    Replay,
    /// Credentials that do not parse or break the rules: 400 with this reason.
    BadRequest(CredentialsError),
    /// The digest `uri` is not the Request-URI: 400.
    UriMismatch,
    /// The crypto library failed: 500.
    Internal(CryptoError),
}

/// What to answer after an [`AuthResult`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated: go on.
    Proceed,
    /// Send a challenge ([`Authenticator::challenge`]) with this `stale` flag.
    Challenge { stale: bool },
    /// Answer with this status.
    Reject {
        code: u16,
        reason: Cow<'static, str>,
    },
}

impl AuthResult {
    pub fn verdict(&self) -> Verdict {
        let reject = |code, reason: &'static str| Verdict::Reject {
            code,
            reason: Cow::Borrowed(reason),
        };
        match self {
            AuthResult::Ok(_) => Verdict::Proceed,
            AuthResult::NoCredentials | AuthResult::UnknownNonce => {
                Verdict::Challenge { stale: false }
            }
            AuthResult::Stale => Verdict::Challenge { stale: true },
            AuthResult::Invalid(_) => reject(403, "Forbidden"),
            AuthResult::Replay => reject(403, "Replayed Nonce"),
            AuthResult::BadRequest(e) => Verdict::Reject {
                code: 400,
                reason: Cow::Owned(e.to_string()),
            },
            AuthResult::UriMismatch => reject(400, "Digest URI Mismatch"),
            AuthResult::Internal(_) => reject(500, "Server Internal Error"),
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, AuthResult::Ok(_))
    }
}

/// A challenge response: 401 or 407 with one `*-Authenticate` line per algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub code: u16,
    pub reason: &'static str,
    /// Header lines, each ending in CRLF, for `build_reply` / `Proxy::reply`.
    pub headers: String,
}

impl Challenge {
    /// The response bytes to `msg`.
    pub fn build(&self, msg: &Message, rx: &Inbound, to_tag: &str, server: &str) -> Bytes {
        build_reply(
            msg,
            rx,
            self.code,
            self.reason,
            to_tag,
            server,
            &self.headers,
        )
    }
}

/// Checks credentials and issues challenges; one per process, shared by every worker.
#[derive(Debug)]
pub struct Authenticator {
    /// Shared with the authenticator a reload builds from this one: its replay table must
    /// outlive a change of algorithms, or a captured request could be replayed once.
    nonces: std::sync::Arc<NonceManager>,
    settings: AuthSettings,
}

/// Write `s` as the content of a quoted-string (RFC 3261 §25.1), dropping control bytes.
fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Authenticator {
    /// With a configured secret (shared across a cluster).
    pub fn new(secret: &[u8], settings: AuthSettings) -> Result<Authenticator, CryptoError> {
        Ok(Authenticator {
            nonces: std::sync::Arc::new(NonceManager::new(
                secret,
                settings.nonce_ttl,
                settings.max_tracked_nonces,
            )?),
            settings,
        })
    }

    /// With a random secret (single node).
    pub fn with_random_secret(settings: AuthSettings) -> Result<Authenticator, CryptoError> {
        Ok(Authenticator {
            nonces: std::sync::Arc::new(NonceManager::random(
                settings.nonce_ttl,
                settings.max_tracked_nonces,
            )?),
            settings,
        })
    }

    /// The same secret and nonce replay table with new `settings` (a reload that changed
    /// `[auth] algorithms` or `nonce_ttl`): nonces issued before stay valid, and stay
    /// single-use.
    pub fn reconfigured(&self, settings: AuthSettings) -> Authenticator {
        self.nonces.set_ttl(settings.nonce_ttl);
        Authenticator {
            nonces: self.nonces.clone(),
            settings,
        }
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    pub fn nonces(&self) -> &NonceManager {
        &self.nonces
    }

    /// A 401 (`Www`) or 407 (`Proxy`) challenge for `realm`: one header per configured
    /// algorithm, sharing one fresh nonce, `qop="auth"`, and `stale=true` when asked.
    pub fn challenge(
        &self,
        kind: AuthKind,
        realm: &str,
        stale: bool,
        now: i64,
    ) -> Result<Challenge, CryptoError> {
        let nonce = self.nonces.issue(realm, now)?;
        let (code, reason) = kind.challenge_status();
        let mut headers = String::with_capacity(160 * self.settings.algorithms.len());
        for alg in &self.settings.algorithms {
            let _ = write!(headers, "{}: Digest realm=", kind.challenge_header());
            push_quoted(&mut headers, realm);
            let _ = write!(
                headers,
                ", nonce=\"{nonce}\", algorithm={alg}, qop=\"auth\""
            );
            if stale {
                headers.push_str(", stale=true");
            }
            headers.push_str("\r\n");
        }
        Ok(Challenge {
            code,
            reason,
            headers,
        })
    }

    /// `www_authorize(realm)` / `proxy_authorize(realm)`: check the request's credentials
    /// for `realm` (the first Digest credentials with that realm; others are for other
    /// hops and are ignored).
    pub fn authorize(
        &self,
        msg: &Message,
        kind: AuthKind,
        realm: &str,
        users: &dyn UserDb,
        now: i64,
    ) -> AuthResult {
        let mut creds = None;
        for v in msg.header_values(kind.credentials_header()) {
            match Credentials::parse(v) {
                Ok(Some(c)) if c.realm == realm => {
                    creds = Some(c);
                    break;
                }
                Ok(_) => {}
                Err(e) => return AuthResult::BadRequest(e),
            }
        }
        let Some(c) = creds else {
            return AuthResult::NoCredentials;
        };
        self.check(msg, &c, users, now)
    }

    fn check(
        &self,
        msg: &Message,
        c: &Credentials<'_>,
        users: &dyn UserDb,
        now: i64,
    ) -> AuthResult {
        if !c.qop_auth && self.settings.require_qop {
            return AuthResult::BadRequest(CredentialsError::Qop);
        }
        if !self.settings.algorithms.contains(&c.algorithm) {
            return AuthResult::BadRequest(CredentialsError::Algorithm);
        }
        let method = msg.method().unwrap_or("");
        if self.settings.check_uri {
            let ruri = msg.request_uri_str().unwrap_or("");
            if !same_uri(&c.uri, ruri) {
                return AuthResult::UriMismatch;
            }
        }
        let id = match self.nonces.check(&c.nonce, &c.realm, now) {
            NonceCheck::Invalid => return AuthResult::UnknownNonce,
            NonceCheck::Fresh(id) => Some(id),
            NonceCheck::Expired(_) => None,
        };
        let Some(stored) = users.ha1(&c.username, &c.realm, c.algorithm.hash()) else {
            // Same answer for both; the reason is for logs.
            let none_at_all = users
                .ha1(&c.username, &c.realm, super::HashAlg::Md5)
                .or_else(|| users.ha1(&c.username, &c.realm, super::HashAlg::Sha256))
                .is_none();
            return AuthResult::Invalid(if none_at_all {
                InvalidReason::UnknownUser
            } else {
                InvalidReason::NoHa1ForAlgorithm
            });
        };
        let expected = match response(
            &stored,
            &ResponseInput {
                algorithm: c.algorithm,
                nonce: &c.nonce,
                cnonce: c.cnonce.as_deref(),
                nc: c.nc.as_ref().map(|(s, _)| s.as_str()),
                qop: c.qop_auth.then_some("auth"),
                method,
                uri: &c.uri,
            },
        ) {
            Ok(r) => r,
            Err(e) => return AuthResult::Internal(e),
        };
        // Both are lower-case hex of the same length here; compare in constant time.
        if expected.len() != c.response.len()
            || !openssl::memcmp::eq(expected.as_bytes(), c.response.as_bytes())
        {
            return AuthResult::Invalid(InvalidReason::WrongPassword);
        }
        let Some(id) = id else {
            return AuthResult::Stale;
        };
        if let Some((_, nc)) = &c.nc {
            match self.nonces.use_nc(id, *nc, now) {
                NcCheck::Ok => {}
                NcCheck::Replay => return AuthResult::Replay,
                NcCheck::Forgotten => return AuthResult::Stale,
            }
        }
        AuthResult::Ok(AuthUser {
            username: c.username.clone(),
            realm: c.realm.clone(),
            algorithm: c.algorithm,
        })
    }
}

/// The digest `uri` and the Request-URI name the same resource: equal text, or equal SIP
/// URIs (RFC 3261 §19.1.4), which tolerates a proxy re-writing case or parameter order.
fn same_uri(digest_uri: &str, ruri: &str) -> bool {
    if digest_uri == ruri {
        return true;
    }
    matches!(
        (Uri::parse(digest_uri), Uri::parse(ruri)),
        (Ok(Uri::Sip(_)), Ok(Uri::Sip(_)))
    ) && crate::registrar::uri_eq(digest_uri, ruri)
}

/// `consume_credentials()`: remove the credentials of `kind` from a request being
/// forwarded, so that they do not travel further. Returns how many lines went.
pub fn consume_credentials(ed: &mut Editor<'_>, kind: AuthKind) -> usize {
    ed.remove_headers(kind.credentials_header())
}

/// The realm to use when the script gives none (Kamailio's rule): the To host for a
/// REGISTER or a `Www` check, else the From host.
pub fn default_realm(msg: &Message, kind: AuthKind) -> Option<String> {
    let use_to = kind == AuthKind::Www || msg.method_kind() == Some(crate::sip::Method::Register);
    let na = if use_to { msg.to() } else { msg.from() }.ok()?;
    let uri = na.uri().ok()?;
    let sip = uri.as_sip()?;
    Some(match sip.host {
        crate::sip::Host::Name(n) => n.to_ascii_lowercase(),
        h => h.to_string(),
    })
}
