//! Digest authentication (RFC 3261 §22, RFC 7616, RFC 8760: MD5 and SHA-256, `qop=auth`),
//! sans-IO: challenges, credential checks, nonces bound to time, realm and a server secret,
//! nonce-count replay protection, and the users file. Never panics on any header.
//!
//! - [`Authenticator::challenge`]: `www_challenge` (401) / `proxy_challenge` (407), one
//!   header per algorithm, SHA-256 first.
//! - [`Authenticator::authorize`]: `www_authorize` / `proxy_authorize`; [`AuthResult::verdict`]
//!   says what to answer (go on, challenge, `stale=true`, 403, 400).
//! - [`consume_credentials`]: drop the credentials before forwarding.
//! - [`Users`]: the users file (`conf.d/users.toml`), HA1 per hash, never plain passwords.
//!
//! Replay protection is per process; in a cluster the runtime shares it through a
//! [`ReplaySink`] (accepted counts out) and `NonceManager::apply_remote` (other nodes' in).

mod authorize;
mod digest;
mod nonce;
mod params;
mod users;

pub use authorize::{
    consume_credentials, default_realm, AuthKind, AuthResult, AuthSettings, AuthUser,
    Authenticator, Challenge, InvalidReason, Verdict,
};
pub use digest::{ha1, response, Algorithm, CryptoError, HashAlg, ResponseInput};
pub use nonce::{NcCheck, NonceCheck, NonceId, NonceManager, ReplaySink};
pub use params::{AuthParams, Credentials, CredentialsError, ParamError};
pub use users::{UserDb, Users, UsersError};
