//! Reading an X.509 certificate into [`CertFacts`]: subject, issuer, validity, SANs,
//! fingerprint. Used for peer certificates at handshake and for domain certificates at
//! load. Never fails on an odd certificate: what cannot be read stays empty.

use std::cmp::Ordering;
use std::net::IpAddr;

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::x509::{X509NameRef, X509Ref};

use super::facts::{CertFacts, DnFacts};

/// Extract the facts of a certificate.
pub fn cert_facts(cert: &X509Ref) -> CertFacts {
    let mut f = CertFacts {
        subject: dn_facts(cert.subject_name()),
        issuer: dn_facts(cert.issuer_name()),
        version: u32::try_from(cert.version()).unwrap_or(0),
        serial: cert
            .serial_number()
            .to_bn()
            .ok()
            .and_then(|bn| bn.to_dec_str().ok())
            .map(|s| s.to_string())
            .unwrap_or_default(),
        not_before: cert.not_before().to_string(),
        not_after: cert.not_after().to_string(),
        not_before_unix: unix_time(cert.not_before()).unwrap_or(i64::MIN),
        not_after_unix: unix_time(cert.not_after()).unwrap_or(i64::MIN),
        ..CertFacts::default()
    };
    if let Some(sans) = cert.subject_alt_names() {
        for n in &sans {
            if let Some(e) = n.email() {
                f.san_email.push(e.to_owned());
            } else if let Some(d) = n.dnsname() {
                f.san_dns.push(d.to_owned());
            } else if let Some(u) = n.uri() {
                f.san_uri.push(u.to_owned());
            } else if let Some(ip) = n.ipaddress() {
                if let Some(ip) = ip_from_bytes(ip) {
                    f.san_ip.push(ip.to_string());
                }
            }
        }
    }
    f.self_signed = cert
        .subject_name()
        .try_cmp(cert.issuer_name())
        .map(|o| o == Ordering::Equal)
        .unwrap_or(false)
        && cert
            .public_key()
            .and_then(|k| cert.verify(&k))
            .unwrap_or(false);
    if let Ok(d) = cert.digest(MessageDigest::sha256()) {
        f.fingerprint_sha256 = d.iter().map(|b| format!("{b:02x}")).collect();
    }
    f
}

/// A distinguished name as SER's selects read it.
pub fn dn_facts(name: &X509NameRef) -> DnFacts {
    let get = |nid: Nid| {
        name.entries_by_nid(nid)
            .next()
            .and_then(|e| e.data().to_string().ok())
    };
    let mut line = String::new();
    for e in name.entries() {
        let key = e.object().nid().short_name().unwrap_or("?");
        let value = e.data().to_string().unwrap_or_default();
        line.push('/');
        line.push_str(key);
        line.push('=');
        line.push_str(&value);
    }
    DnFacts {
        line,
        cn: get(Nid::COMMONNAME),
        cn_count: name.entries_by_nid(Nid::COMMONNAME).count(),
        o: get(Nid::ORGANIZATIONNAME),
        ou: get(Nid::ORGANIZATIONALUNITNAME),
        c: get(Nid::COUNTRYNAME),
        st: get(Nid::STATEORPROVINCENAME),
        l: get(Nid::LOCALITYNAME),
        uid: get(Nid::USERID),
        email: get(Nid::PKCS9_EMAILADDRESS),
    }
}

/// Seconds since the Unix epoch of an ASN.1 time.
pub fn unix_time(t: &Asn1TimeRef) -> Option<i64> {
    let epoch = Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(t).ok()?;
    Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::Asn1Integer;
    use openssl::bn::BigNum;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509Builder, X509NameBuilder};

    #[test]
    fn facts_of_a_self_signed_certificate() {
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COUNTRYNAME, "US").unwrap();
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Example")
            .unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, "Bob").unwrap();
        name.append_entry_by_nid(Nid::STATEORPROVINCENAME, "CA")
            .unwrap();
        name.append_entry_by_nid(Nid::LOCALITYNAME, "Palo Alto")
            .unwrap();
        name.append_entry_by_nid(Nid::ORGANIZATIONALUNITNAME, "Voice")
            .unwrap();
        name.append_entry_by_nid(Nid::USERID, "u-bob").unwrap();
        name.append_entry_by_nid(Nid::PKCS9_EMAILADDRESS, "bob@dn.example.com")
            .unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&Asn1Integer::from_bn(&BigNum::from_u32(4242).unwrap()).unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(1_118_000_000).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .email("bob@example.com")
            .dns("bob.example.com")
            .uri("sip:bob@example.com")
            .ip("192.0.2.1")
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = b.build();
        let f = cert_facts(&cert);
        assert_eq!(f.subject.cn.as_deref(), Some("Bob"));
        assert_eq!(f.subject.o.as_deref(), Some("Example"));
        assert_eq!(
            f.subject.line,
            "/C=US/O=Example/CN=Bob/ST=CA/L=Palo Alto/OU=Voice/UID=u-bob/emailAddress=bob@dn.example.com"
        );
        assert_eq!(f.subject.st.as_deref(), Some("CA"));
        assert_eq!(f.subject.l.as_deref(), Some("Palo Alto"));
        assert_eq!(f.subject.ou.as_deref(), Some("Voice"));
        assert_eq!(f.subject.uid.as_deref(), Some("u-bob"));
        assert_eq!(f.subject.email.as_deref(), Some("bob@dn.example.com"));
        assert_eq!(f.issuer, f.subject);
        assert_eq!(f.version, 2, "raw X509 version of a v3 certificate");
        assert_eq!(f.serial, "4242");
        assert_eq!(f.not_before, "Jun  5 19:33:20 2005 GMT");
        assert_eq!(f.not_before_unix, 1_118_000_000);
        assert_eq!(f.san_email, ["bob@example.com"]);
        assert_eq!(f.san_dns, ["bob.example.com"]);
        assert_eq!(f.san_uri, ["sip:bob@example.com"]);
        assert_eq!(f.san_ip, ["192.0.2.1"]);
        assert!(f.self_signed);
        assert_eq!(f.fingerprint_sha256.len(), 64);
        assert!(!f.expired_at(1_200_000_000));
    }

    /// The one-line DN writes values as they are, `/` and `=` included (as OpenSSL's
    /// X509_NAME_oneline): a value can look like more attributes in the line, never in the
    /// single-attribute facts (docs/script.md says to match those).
    #[test]
    fn a_value_that_holds_a_slash_shows_in_the_line_and_stays_one_attribute() {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Mallory/O=Bank")
            .unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, "alice").unwrap();
        let f = dn_facts(&name.build());
        assert_eq!(f.line, "/O=Mallory/O=Bank/CN=alice");
        assert_eq!(f.o.as_deref(), Some("Mallory/O=Bank"));
        assert_eq!(f.cn.as_deref(), Some("alice"));
    }
}
