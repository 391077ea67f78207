//! Certificates of the core's unit tests, made by the test kit's one PKI builder
//! (`siprox_testkit::pki`); never written outside a temp dir. Test-only.
//!
//! Only an adapter: `context.rs`'s tests call `cert(cn, key, issuer, ca, from, to)`, and
//! that file belongs to another change; they could import the kit directly, and this file
//! goes when they do.

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use siprox_testkit::pki::{sign, Issued, Spec};

pub use siprox_testkit::pki::{key, now};

/// A certificate for `cn` (a CA when `ca`, else a leaf with `cn` as its DNS SAN) for `key`,
/// signed by `issuer` (or self-signed), valid from `from` to `to` (Unix seconds).
pub fn cert(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
    from: i64,
    to: i64,
) -> X509 {
    let spec = if ca { Spec::ca(cn) } else { Spec::leaf(cn) }.valid_unix(from, to);
    let issuer = issuer.map(|(cert, key)| Issued {
        cert: cert.clone(),
        key: key.clone(),
    });
    sign(&spec, key, issuer.as_ref())
}
