//! The management allow-list: which verified client certificates may call. Entries are a
//! SHA-256 fingerprint, a one-line subject (`/O=Example/CN=admin`) or a subject CN. Pure
//! data; must never accept a certificate because an entry failed to parse (a bad entry is a
//! configuration error, reported by [`AllowList::parse`]).

use crate::tls::CertFacts;

/// One allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// SHA-256 of the DER certificate, lower-case hex without separators.
    Fingerprint(String),
    /// The whole subject in OpenSSL's one-line form.
    Subject(String),
    /// The subject's common name.
    Cn(String),
}

/// Parsed `[management] allow`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<AllowEntry>,
}

impl AllowEntry {
    /// `sha256:AB:CD...` / 64 hex digits -> fingerprint; `/...=...` -> subject; else a CN.
    pub fn parse(s: &str) -> Result<AllowEntry, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty allow entry".to_owned());
        }
        let (explicit, hex) = match t.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("sha256:") => (true, &t[7..]),
            _ => (false, t),
        };
        let digits: String = hex.chars().filter(|c| *c != ':').collect();
        if digits.len() == 64 && digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(AllowEntry::Fingerprint(digits.to_ascii_lowercase()));
        }
        if explicit {
            return Err(format!(
                "`{s}`: a sha256: fingerprint is 64 hex digits (colons allowed)"
            ));
        }
        if t.starts_with('/') {
            if !t.contains('=') {
                return Err(format!("`{s}`: a subject is written /C=../O=../CN=.."));
            }
            return Ok(AllowEntry::Subject(t.to_owned()));
        }
        let cn = t
            .strip_prefix("CN=")
            .or_else(|| t.strip_prefix("cn="))
            .unwrap_or(t);
        Ok(AllowEntry::Cn(cn.to_owned()))
    }

    /// Whether a certificate with these facts matches.
    pub fn matches(&self, cert: &CertFacts) -> bool {
        match self {
            AllowEntry::Fingerprint(f) => cert.fingerprint_sha256.eq_ignore_ascii_case(f),
            AllowEntry::Subject(s) => cert.subject.line == *s,
            // A subject with several CNs has no one CN to match: an entry for the first
            // would admit `/CN=admin/CN=mallory` (and OpenSSL-based tools differ on which
            // CN they show). Such a certificate can still be named by subject or digest.
            AllowEntry::Cn(cn) => {
                cert.subject.cn_count <= 1 && cert.subject.cn.as_deref() == Some(cn.as_str())
            }
        }
    }
}

impl AllowList {
    /// Parses every entry; all errors at once.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, Vec<String>> {
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        for e in entries {
            match AllowEntry::parse(e.as_ref()) {
                Ok(a) => ok.push(a),
                Err(m) => errors.push(m),
            }
        }
        if errors.is_empty() {
            Ok(AllowList { entries: ok })
        } else {
            Err(errors)
        }
    }

    /// Whether the (already verified) client certificate may call. No certificate, or an
    /// empty list: no.
    pub fn permits(&self, cert: Option<&CertFacts>) -> bool {
        cert.is_some_and(|c| self.entries.iter().any(|e| e.matches(c)))
    }

    pub fn entries(&self) -> &[AllowEntry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::DnFacts;

    fn cert(cn: &str, line: &str, fp: &str) -> CertFacts {
        CertFacts {
            subject: DnFacts {
                line: line.to_owned(),
                cn: Some(cn.to_owned()),
                ..DnFacts::default()
            },
            fingerprint_sha256: fp.to_owned(),
            ..CertFacts::default()
        }
    }

    #[test]
    fn entries_by_form() {
        let fp = "ab".repeat(32);
        let colons: Vec<String> = (0..32).map(|_| "AB".to_owned()).collect();
        assert_eq!(
            AllowEntry::parse(&colons.join(":")),
            Ok(AllowEntry::Fingerprint(fp.clone()))
        );
        assert_eq!(
            AllowEntry::parse(&format!("sha256:{fp}")),
            Ok(AllowEntry::Fingerprint(fp.clone()))
        );
        assert!(AllowEntry::parse("sha256:abc").is_err());
        assert_eq!(
            AllowEntry::parse("/O=Ex/CN=admin"),
            Ok(AllowEntry::Subject("/O=Ex/CN=admin".into()))
        );
        assert_eq!(
            AllowEntry::parse("CN=admin"),
            Ok(AllowEntry::Cn("admin".into()))
        );
        assert_eq!(
            AllowEntry::parse("admin"),
            Ok(AllowEntry::Cn("admin".into()))
        );
        assert!(AllowEntry::parse(" ").is_err());
        assert!(AllowEntry::parse("/nope").is_err());
    }

    #[test]
    fn permits_only_matching_certificates() {
        let fp = "0f".repeat(32);
        let l = AllowList::parse(&["admin", "/O=Ops/CN=bob", &fp]).expect("valid");
        assert!(l.permits(Some(&cert("admin", "/CN=admin", "00"))));
        assert!(l.permits(Some(&cert("bob", "/O=Ops/CN=bob", "00"))));
        assert!(!l.permits(Some(&cert("bob", "/O=Dev/CN=bob", "00"))));
        assert!(l.permits(Some(&cert("eve", "/CN=eve", &fp.to_uppercase()))));
        assert!(!l.permits(Some(&cert("eve", "/CN=eve", "00"))));
        assert!(!l.permits(None));
        assert!(!AllowList::default().permits(Some(&cert("admin", "/CN=admin", "00"))));
        let mut two = cert("admin", "/CN=admin/CN=mallory", "00");
        two.subject.cn_count = 2;
        assert!(!l.permits(Some(&two)), "several CNs never match a CN entry");
        let by_subject = AllowList::parse(&["/CN=admin/CN=mallory"]).expect("valid");
        assert!(by_subject.permits(Some(&two)));
    }

    #[test]
    fn a_name_with_two_cns_is_counted() {
        let mut b = openssl::x509::X509NameBuilder::new().expect("builder");
        b.append_entry_by_text("CN", "admin").expect("cn");
        b.append_entry_by_text("CN", "mallory").expect("cn");
        let name = b.build();
        let f = crate::tls::dn_facts(&name);
        assert_eq!((f.cn.as_deref(), f.cn_count), (Some("admin"), 2));
        let c = CertFacts {
            subject: f,
            ..CertFacts::default()
        };
        assert!(!AllowList::parse(&["admin"])
            .expect("valid")
            .permits(Some(&c)));
    }
}
