//! Digest arithmetic (RFC 7616 §3.4, RFC 2617 §3.2.2, RFC 8760): algorithms, HA1, the
//! expected response. Hashing goes through openssl (already the TLS dependency); nothing
//! here panics, a library failure is a [`CryptoError`].

use std::fmt;

use openssl::hash::{Hasher, MessageDigest};

/// openssl failed (it does not for these digests in practice; never unwrapped anyway).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("crypto library error: {0}")]
pub struct CryptoError(pub String);

impl From<openssl::error::ErrorStack> for CryptoError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        CryptoError(e.to_string())
    }
}

/// The hash function behind an algorithm: what a users file stores one HA1 for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Md5,
    Sha256,
}

impl HashAlg {
    fn md(self) -> MessageDigest {
        match self {
            HashAlg::Md5 => MessageDigest::md5(),
            HashAlg::Sha256 => MessageDigest::sha256(),
        }
    }

    /// Length of a digest in lower-case hex.
    pub fn hex_len(self) -> usize {
        match self {
            HashAlg::Md5 => 32,
            HashAlg::Sha256 => 64,
        }
    }
}

/// A digest algorithm (RFC 7616 §6.1 registry; SHA-512-256 is not offered by SIP UAs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    /// The token as written in challenges.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    /// Parse the `algorithm` parameter (any case).
    pub fn parse(s: &str) -> Option<Algorithm> {
        [
            Algorithm::Md5,
            Algorithm::Md5Sess,
            Algorithm::Sha256,
            Algorithm::Sha256Sess,
        ]
        .into_iter()
        .find(|a| a.as_str().eq_ignore_ascii_case(s))
    }

    pub fn hash(self) -> HashAlg {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => HashAlg::Md5,
            Algorithm::Sha256 | Algorithm::Sha256Sess => HashAlg::Sha256,
        }
    }

    pub fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `H(p1 ":" p2 ":" ...)` in lower-case hex.
pub(crate) fn h(hash: HashAlg, parts: &[&[u8]]) -> Result<String, CryptoError> {
    let mut hs = Hasher::new(hash.md())?;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            hs.update(b":")?;
        }
        hs.update(p)?;
    }
    Ok(hex(&hs.finish()?))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// HA1 = H(username ":" realm ":" password) for the hash of `alg`, lower-case hex. This is
/// what the users file stores; the `-sess` variants derive their session HA1 from it at
/// check time.
pub fn ha1(user: &str, realm: &str, password: &str, alg: Algorithm) -> Result<String, CryptoError> {
    h(
        alg.hash(),
        &[user.as_bytes(), realm.as_bytes(), password.as_bytes()],
    )
}

/// The inputs of a digest response besides HA1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseInput<'a> {
    pub algorithm: Algorithm,
    pub nonce: &'a str,
    pub cnonce: Option<&'a str>,
    /// The nonce count exactly as sent (8 hex digits): it is hashed as text.
    pub nc: Option<&'a str>,
    /// `auth`, or `None` for the RFC 2069 form.
    pub qop: Option<&'a str>,
    pub method: &'a str,
    pub uri: &'a str,
}

/// The expected `response` (RFC 7616 §3.4.1), lower-case hex, from the stored base HA1.
pub fn response(ha1_hex: &str, i: &ResponseInput<'_>) -> Result<String, CryptoError> {
    let hash = i.algorithm.hash();
    let sess;
    let ha1 = if i.algorithm.is_sess() {
        // RFC 7616 §3.4.2: H(H(user:realm:pass) ":" nonce ":" cnonce).
        sess = h(
            hash,
            &[
                ha1_hex.as_bytes(),
                i.nonce.as_bytes(),
                i.cnonce.unwrap_or("").as_bytes(),
            ],
        )?;
        sess.as_str()
    } else {
        ha1_hex
    };
    let ha2 = h(hash, &[i.method.as_bytes(), i.uri.as_bytes()])?;
    match i.qop {
        Some(qop) => h(
            hash,
            &[
                ha1.as_bytes(),
                i.nonce.as_bytes(),
                i.nc.unwrap_or("").as_bytes(),
                i.cnonce.unwrap_or("").as_bytes(),
                qop.as_bytes(),
                ha2.as_bytes(),
            ],
        ),
        None => h(hash, &[ha1.as_bytes(), i.nonce.as_bytes(), ha2.as_bytes()]),
    }
}
