//! TLS selects with the SER TLS module's names and Kamailio's aliases (`@tls.peer.subject.cn`,
//! `@tls.my.issuer.organization`, `@tls.peer.not_after`, ...). They read the [`TlsFacts`]
//! extracted once per connection; on a connection that is not TLS every one is "", and on a
//! TLS connection without a peer certificate the peer's fields are "" (and its checks 0).
//! A DN without a component (`@tls.peer.subject`) is its CN, as SER's `sel_comp` reads it;
//! [`CertPart::Dn`] with no attribute (the whole one-line DN) is reached only from the
//! `$tls_{peer,my}_{subject,issuer}` pseudo-variables, which are the whole DN in Kamailio.

use super::{Seg, SelectError, Value};
use crate::tls::{CertFacts, DnFacts, TlsFacts};

/// Whose certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Peer,
    My,
}

/// Subject or issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnWhich {
    Subject,
    Issuer,
}

/// One attribute of a distinguished name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnAttr {
    Cn,
    O,
    Ou,
    C,
    St,
    L,
    Uid,
    Email,
}

/// A subjectAltName kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    Email,
    Dns,
    Uri,
    Ip,
}

/// A field of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertPart {
    /// The whole one-line DN (`None`) or one attribute of it.
    Dn(DnWhich, Option<DnAttr>),
    Verified,
    /// The peer's chain failed verification because a CRL lists it (Kamailio's `revoked`).
    Revoked,
    Expired,
    SelfSigned,
    Version,
    Serial,
    NotBefore,
    NotAfter,
    San(SanKind),
    Fingerprint,
}

/// A compiled TLS select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSelect {
    Desc,
    Version,
    Cipher,
    CipherBits,
    ServerName,
    Domain,
    Cert(Side, CertPart),
}

fn dn_attr(s: &Seg<'_>) -> Option<DnAttr> {
    let table: &[(&[&str], DnAttr)] = &[
        (&["cn", "commonName", "common_name", "name"], DnAttr::Cn),
        (
            &["l", "localityName", "locality_name", "locality"],
            DnAttr::L,
        ),
        (&["c", "countryName", "country_name", "country"], DnAttr::C),
        (
            &[
                "st",
                "stateOrProvinceName",
                "state_or_province_name",
                "state",
            ],
            DnAttr::St,
        ),
        (
            &["o", "organizationName", "organization_name", "organization"],
            DnAttr::O,
        ),
        (
            &[
                "ou",
                "organizationalUnitName",
                "organizational_unit_name",
                "unit",
            ],
            DnAttr::Ou,
        ),
        (
            &["uid", "uniqueIdentifier", "unique_identifier", "userid"],
            DnAttr::Uid,
        ),
        (&["email", "emailAddress", "email_address"], DnAttr::Email),
    ];
    table.iter().find(|(n, _)| s.is(n)).map(|(_, a)| *a)
}

fn cert(rest: &[Seg<'_>]) -> Result<CertPart, SelectError> {
    let Some(s) = rest.first() else {
        // SER: @tls.peer / @tls.me alone is the subject's common name.
        return Ok(CertPart::Dn(DnWhich::Subject, Some(DnAttr::Cn)));
    };
    s.no_index()?;
    let which = if s.is(&["subject", "subj"]) {
        Some(DnWhich::Subject)
    } else if s.is(&["issuer"]) {
        Some(DnWhich::Issuer)
    } else {
        None
    };
    if let Some(which) = which {
        let Some(a) = rest.get(1) else {
            // SER's sel_comp: a name without a component is its common name.
            return Ok(CertPart::Dn(which, Some(DnAttr::Cn)));
        };
        a.no_index()?;
        let attr = dn_attr(a).ok_or_else(|| {
            SelectError::at(
                a.at,
                format!("unknown name attribute `{}` (expected cn, o, ou, c, st, l, uid, email or their long names)", a.name),
            )
        })?;
        if let Some(x) = rest.get(2) {
            return Err(SelectError::at(
                x.at,
                format!("nothing follows `{}`", a.name),
            ));
        }
        return Ok(CertPart::Dn(which, Some(attr)));
    }
    let table: &[(&[&str], CertPart)] = &[
        (&["verified"], CertPart::Verified),
        (&["revoked"], CertPart::Revoked),
        (&["expired"], CertPart::Expired),
        (&["self_signed", "selfsigned"], CertPart::SelfSigned),
        (&["version"], CertPart::Version),
        (
            &["sn", "serialNumber", "serial_number", "serial"],
            CertPart::Serial,
        ),
        (&["not_before", "notBefore"], CertPart::NotBefore),
        (&["not_after", "notAfter"], CertPart::NotAfter),
        (
            &["email", "emailAddress", "email_address"],
            CertPart::San(SanKind::Email),
        ),
        (&["host", "hostname", "dns"], CertPart::San(SanKind::Dns)),
        (&["uri", "url", "urn"], CertPart::San(SanKind::Uri)),
        (
            &["ip", "IPAddress", "ip_address"],
            CertPart::San(SanKind::Ip),
        ),
        (&["fingerprint"], CertPart::Fingerprint),
    ];
    let Some((_, part)) = table.iter().find(|(n, _)| s.is(n)) else {
        return Err(SelectError::at(
            s.at,
            format!(
                "unknown certificate field `{}` (expected subject, issuer, verified, revoked, expired, self_signed, version, sn, not_before, not_after, email, host, uri, ip, fingerprint)",
                s.name
            ),
        ));
    };
    if let Some(x) = rest.get(1) {
        return Err(SelectError::at(
            x.at,
            format!("nothing follows `{}`", s.name),
        ));
    }
    Ok(*part)
}

/// Build from segments whose first is `tls`.
pub(super) fn build(segs: &[Seg<'_>]) -> Result<TlsSelect, SelectError> {
    segs[0].no_index()?;
    let rest = &segs[1..];
    let Some(s) = rest.first() else {
        return Ok(TlsSelect::Desc);
    };
    s.no_index()?;
    let leaf = |sel: TlsSelect| match rest.get(1) {
        None => Ok(sel),
        Some(x) => Err(SelectError::at(
            x.at,
            format!("nothing follows `{}`", s.name),
        )),
    };
    if s.is(&["desc", "description"]) {
        leaf(TlsSelect::Desc)
    } else if s.is(&["version"]) {
        leaf(TlsSelect::Version)
    } else if s.is(&["server_name", "serverName"]) {
        leaf(TlsSelect::ServerName)
    } else if s.is(&["domain"]) {
        leaf(TlsSelect::Domain)
    } else if s.is(&["cipher"]) {
        match rest.get(1) {
            None => Ok(TlsSelect::Cipher),
            Some(b) if b.is(&["bits"]) && b.idx.is_empty() && rest.len() == 2 => {
                Ok(TlsSelect::CipherBits)
            }
            Some(b) => Err(SelectError::at(b.at, "expected `bits`")),
        }
    } else if s.is(&["peer"]) {
        cert(&rest[1..]).map(|p| TlsSelect::Cert(Side::Peer, p))
    } else if s.is(&["my", "me", "myself"]) {
        cert(&rest[1..]).map(|p| TlsSelect::Cert(Side::My, p))
    } else {
        Err(SelectError::at(
            s.at,
            format!(
                "unknown TLS select `{}` (expected desc, version, cipher, server_name, peer, my)",
                s.name
            ),
        ))
    }
}

fn dn<'a>(d: &'a DnFacts, attr: Option<DnAttr>) -> Value<'a> {
    let v = match attr {
        None => return Value::str(&d.line),
        Some(DnAttr::Cn) => &d.cn,
        Some(DnAttr::O) => &d.o,
        Some(DnAttr::Ou) => &d.ou,
        Some(DnAttr::C) => &d.c,
        Some(DnAttr::St) => &d.st,
        Some(DnAttr::L) => &d.l,
        Some(DnAttr::Uid) => &d.uid,
        Some(DnAttr::Email) => &d.email,
    };
    Value::opt(v.as_deref())
}

fn first(v: &[String]) -> Value<'_> {
    Value::opt(v.first().map(String::as_str))
}

impl TlsSelect {
    /// True when evaluation reads the clock.
    pub fn needs_clock(&self) -> bool {
        matches!(self, TlsSelect::Cert(_, CertPart::Expired))
    }

    /// Evaluate; "" when `tls` is `None` (not a TLS connection).
    pub fn eval<'a>(&self, tls: Option<&'a TlsFacts>, now_unix: i64) -> Value<'a> {
        let Some(t) = tls else {
            return Value::EMPTY;
        };
        match *self {
            TlsSelect::Desc => Value::str(&t.desc),
            TlsSelect::Version => Value::str(&t.version),
            TlsSelect::Cipher => Value::str(&t.cipher),
            TlsSelect::CipherBits => Value::Int(i64::from(t.cipher_bits)),
            TlsSelect::ServerName => Value::opt(t.server_name.as_deref()),
            TlsSelect::Domain => Value::opt(t.domain.as_deref()),
            TlsSelect::Cert(side, part) => {
                let c: Option<&'a CertFacts> = match side {
                    Side::Peer => t.peer.as_deref(),
                    Side::My => t.my.as_deref(),
                };
                let flag = |b: bool| Value::Int(i64::from(b));
                match (part, c) {
                    // Kamailio does not verify its own certificate: these fail there, "".
                    (CertPart::Verified | CertPart::Revoked, _) if side == Side::My => Value::EMPTY,
                    (CertPart::Verified, c) => flag(c.is_some() && t.peer_verified),
                    (CertPart::Revoked, c) => flag(c.is_some() && t.peer_revoked),
                    (CertPart::Expired, c) => flag(c.is_some_and(|c| c.expired_at(now_unix))),
                    (CertPart::SelfSigned, c) => flag(c.is_some_and(|c| c.self_signed)),
                    (_, None) => Value::EMPTY,
                    (CertPart::Dn(DnWhich::Subject, a), Some(c)) => dn(&c.subject, a),
                    (CertPart::Dn(DnWhich::Issuer, a), Some(c)) => dn(&c.issuer, a),
                    (CertPart::Version, Some(c)) => Value::Int(i64::from(c.version)),
                    (CertPart::Serial, Some(c)) => Value::str(&c.serial),
                    (CertPart::NotBefore, Some(c)) => Value::str(&c.not_before),
                    (CertPart::NotAfter, Some(c)) => Value::str(&c.not_after),
                    (CertPart::San(SanKind::Email), Some(c)) => first(&c.san_email),
                    (CertPart::San(SanKind::Dns), Some(c)) => first(&c.san_dns),
                    (CertPart::San(SanKind::Uri), Some(c)) => first(&c.san_uri),
                    (CertPart::San(SanKind::Ip), Some(c)) => first(&c.san_ip),
                    (CertPart::Fingerprint, Some(c)) => Value::str(&c.fingerprint_sha256),
                }
            }
        }
    }
}
