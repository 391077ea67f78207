//! Pseudo-variables (`$ru`, `$hdr(Name)`, `$tls_peer_subject_cn`, `$var(x)`, ...): their
//! names resolved at compile time to selects or slots, and the splitting of strings that
//! embed them (`"$rm from $si"`) into literal and variable parts. An unknown name is a
//! compile error, never an empty string at run time.

use crate::select::{
    CertPart, DnAttr, DnWhich, HeaderRef, NaPart, SanKind, Select, Side, SipSelect, TlsSelect,
    UriPart,
};
use crate::sip::HeaderName;

use super::ast::{Part, Pv};

/// Where `$var(name)` slots are allocated.
pub(crate) trait Vars {
    fn slot(&mut self, name: &str) -> usize;
}

fn na(h: HeaderName, p: NaPart) -> Pv {
    Pv::Of(Select::Sip(SipSelect::Single(h, p)))
}

fn sip(s: SipSelect) -> Pv {
    Pv::Of(Select::Sip(s))
}

fn tls(t: TlsSelect) -> Pv {
    Pv::Of(Select::Tls(t))
}

fn dn_attr(s: &str) -> Option<DnAttr> {
    Some(match s {
        "cn" => DnAttr::Cn,
        "locality" => DnAttr::L,
        "country" => DnAttr::C,
        "state" => DnAttr::St,
        "organization" => DnAttr::O,
        "unit" => DnAttr::Ou,
        "uid" => DnAttr::Uid,
        "email" => DnAttr::Email,
        _ => return None,
    })
}

/// The `$tls_*` family, Kamailio's names.
fn tls_pv(rest: &str) -> Option<Pv> {
    let simple = match rest {
        "version" => Some(TlsSelect::Version),
        "description" => Some(TlsSelect::Desc),
        "cipher_info" => Some(TlsSelect::Cipher),
        "cipher_bits" => Some(TlsSelect::CipherBits),
        "peer_server_name" => Some(TlsSelect::ServerName),
        "domain" => Some(TlsSelect::Domain),
        "peer_verified" => Some(TlsSelect::Cert(Side::Peer, CertPart::Verified)),
        "peer_revoked" => Some(TlsSelect::Cert(Side::Peer, CertPart::Revoked)),
        "peer_expired" => Some(TlsSelect::Cert(Side::Peer, CertPart::Expired)),
        "my_expired" => Some(TlsSelect::Cert(Side::My, CertPart::Expired)),
        "peer_selfsigned" => Some(TlsSelect::Cert(Side::Peer, CertPart::SelfSigned)),
        "my_selfsigned" => Some(TlsSelect::Cert(Side::My, CertPart::SelfSigned)),
        "peer_notBefore" => Some(TlsSelect::Cert(Side::Peer, CertPart::NotBefore)),
        "peer_notAfter" => Some(TlsSelect::Cert(Side::Peer, CertPart::NotAfter)),
        "my_notBefore" => Some(TlsSelect::Cert(Side::My, CertPart::NotBefore)),
        "my_notAfter" => Some(TlsSelect::Cert(Side::My, CertPart::NotAfter)),
        "peer_fingerprint" => Some(TlsSelect::Cert(Side::Peer, CertPart::Fingerprint)),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(tls(s));
    }
    let (side, rest) = if let Some(r) = rest.strip_prefix("peer_") {
        (Side::Peer, r)
    } else if let Some(r) = rest.strip_prefix("my_") {
        (Side::My, r)
    } else {
        return None;
    };
    let part = match rest {
        "version" => CertPart::Version,
        "serial" => CertPart::Serial,
        "san_email" => CertPart::San(SanKind::Email),
        "san_hostname" => CertPart::San(SanKind::Dns),
        "san_uri" => CertPart::San(SanKind::Uri),
        "san_ip" => CertPart::San(SanKind::Ip),
        "subject" => CertPart::Dn(DnWhich::Subject, None),
        "issuer" => CertPart::Dn(DnWhich::Issuer, None),
        _ => {
            let (which, attr) = if let Some(a) = rest.strip_prefix("subject_") {
                (DnWhich::Subject, a)
            } else if let Some(a) = rest.strip_prefix("issuer_") {
                (DnWhich::Issuer, a)
            } else {
                return None;
            };
            CertPart::Dn(which, Some(dn_attr(attr)?))
        }
    };
    Some(tls(TlsSelect::Cert(side, part)))
}

/// The slot name of `$avp(name)` (`$avp(s:name)` too): in the variables' table under a
/// prefix no `$var` name can have. Kamailio's integer AVP names are refused.
pub(crate) fn avp_slot(arg: &str) -> Result<String, String> {
    let name = arg.strip_prefix("s:").unwrap_or(arg);
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "bad AVP name `{arg}` (siprox has string names only)"
        ));
    }
    Ok(format!("{AVP_PREFIX}{name}"))
}

/// `table=>key` of `$sht(...)`: the table name and the key, a template (`$si`, `$fU@$fd`).
pub(crate) fn sht_arg(arg: &str, vars: &mut dyn Vars) -> Result<(String, Vec<Part>), String> {
    let Some((table, key)) = arg.split_once("=>") else {
        return Err(format!("`$sht({arg})`: expected `$sht(table=>key)`"));
    };
    let table = table.trim();
    if table.is_empty()
        || !table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!("bad htable name `{table}`"));
    }
    let key = template(key.trim(), vars).map_err(|(_, e)| e)?;
    Ok((table.to_owned(), key))
}

/// Where `$avp` names live among the variables.
pub(crate) const AVP_PREFIX: &str = "avp:";

/// Resolve `$name` / `$name(arg)`.
pub(crate) fn resolve(name: &str, arg: Option<&str>, vars: &mut dyn Vars) -> Result<Pv, String> {
    let needs_arg = matches!(name, "var" | "hdr" | "avp" | "sht");
    match (needs_arg, arg) {
        (true, None) => return Err(format!("`${name}` needs a name: `${name}(...)`")),
        (false, Some(_)) => return Err(format!("`${name}` takes no argument")),
        _ => {}
    }
    let arg = arg.unwrap_or("");
    let pv = match name {
        "var" => {
            if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("bad variable name `{arg}`"));
            }
            Pv::Var(vars.slot(arg))
        }
        "avp" => Pv::Avp(vars.slot(&avp_slot(arg)?)),
        "null" => Pv::Null,
        "sht" => {
            let (table, key) = sht_arg(arg, vars)?;
            Pv::Sht(table, key)
        }
        "rc" | "retcode" => Pv::RetCode,
        "hdr" => {
            if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(format!("bad header name `{arg}`"));
            }
            sip(SipSelect::Header(HeaderRef::new(arg)))
        }
        "ru" => sip(SipSelect::Ruri(UriPart::Whole)),
        "rU" => sip(SipSelect::Ruri(UriPart::User)),
        "rd" => sip(SipSelect::Ruri(UriPart::Host)),
        "rp" => sip(SipSelect::Ruri(UriPart::PortOrDefault)),
        "rz" => sip(SipSelect::Ruri(UriPart::Scheme)),
        "fu" => na(HeaderName::From, NaPart::Uri(UriPart::Whole)),
        "fU" => na(HeaderName::From, NaPart::Uri(UriPart::User)),
        "fd" => na(HeaderName::From, NaPart::Uri(UriPart::Host)),
        "ft" => na(HeaderName::From, NaPart::Tag),
        "fn" => na(HeaderName::From, NaPart::Name),
        "tu" => na(HeaderName::To, NaPart::Uri(UriPart::Whole)),
        "tU" => na(HeaderName::To, NaPart::Uri(UriPart::User)),
        "td" => na(HeaderName::To, NaPart::Uri(UriPart::Host)),
        "tt" => na(HeaderName::To, NaPart::Tag),
        "tn" => na(HeaderName::To, NaPart::Name),
        "ci" => sip(SipSelect::CallId),
        "cs" => sip(SipSelect::CSeqNum),
        "rm" => sip(SipSelect::Method),
        "rs" => sip(SipSelect::Status),
        "rr" => sip(SipSelect::Reason),
        "si" => sip(SipSelect::SrcIp),
        "sp" => sip(SipSelect::SrcPort),
        "Ri" => sip(SipSelect::DstIp),
        "Rp" => sip(SipSelect::DstPort),
        "pr" | "proto" => Pv::Proto,
        "ua" => sip(SipSelect::Header(HeaderRef::new("User-Agent"))),
        "ct" => sip(SipSelect::Header(HeaderRef::new("Contact"))),
        "mb" => sip(SipSelect::MsgWhole),
        "ml" => sip(SipSelect::MsgLen),
        // No body: "" in Kamailio, not null.
        "rb" => Pv::Sel(Select::Sip(SipSelect::MsgBody)),
        "Ts" => Pv::Time,
        "du" => Pv::Duri,
        "fs" => Pv::Fs,
        "bf" => Pv::Bflags,
        "T_reply_code" => Pv::TReplyCode,
        "T_branch_idx" => Pv::TBranchIdx,
        _ => match name.strip_prefix("tls_").and_then(tls_pv) {
            Some(pv) => pv,
            None => return Err(format!("unknown pseudo-variable `${name}`")),
        },
    };
    Ok(pv)
}

/// Resolve `$(name(arg){tr}...)`: a pseudo-variable, through its transformations if any.
pub(crate) fn resolve_tr(
    name: &str,
    arg: Option<&str>,
    tr: &str,
    vars: &mut dyn Vars,
) -> Result<Pv, String> {
    let pv = resolve(name, arg, vars)?;
    if tr.is_empty() {
        return Ok(pv);
    }
    Ok(Pv::Tr(Box::new(pv), super::tr::parse(tr)?))
}

/// The delimited form, from just after `$(`: `name`, `name(arg)`, then any `{tr}` groups,
/// then `)`, all on one line. Returns the name, the argument, the transformation text and
/// how many bytes were read (the closing `)` included).
pub(crate) fn delimited(s: &str) -> Result<(&str, Option<&str>, &str, usize), String> {
    let b = s.as_bytes();
    let mut e = 0;
    while e < b.len() && is_name(b[e]) {
        e += 1;
    }
    let name = &s[..e];
    if name.is_empty() {
        return Err("expected `$(name)`".into());
    }
    let mut arg = None;
    if b.get(e) == Some(&b'(') {
        let k = s[e + 1..]
            .find([')', '\n'])
            .filter(|&k| b[e + 1 + k] == b')')
            .ok_or("missing `)` after pseudo-variable argument")?;
        arg = Some(s[e + 1..e + 1 + k].trim());
        e += 1 + k + 1;
    }
    let ts = e;
    while b.get(e) == Some(&b'{') {
        let k = s[e..]
            .find(['}', '\n'])
            .filter(|&k| b[e + k] == b'}')
            .ok_or("missing `}` after transformation")?;
        e += k + 1;
    }
    if b.get(e) != Some(&b')') {
        return Err("missing `)` after `$(`".into());
    }
    Ok((name, arg, &s[ts..e], e + 1))
}

fn is_name(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Split a string into literal text and pseudo-variables. `$name`, `$name(arg)`,
/// `$(name)` and `$(name(arg))` are variables; `$$` is a literal `$`, and a `$` not followed
/// by a letter is literal too. Errors carry the byte offset of the bad `$` in `s`.
pub(crate) fn template(s: &str, vars: &mut dyn Vars) -> Result<Vec<Part>, (usize, String)> {
    let b = s.as_bytes();
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < b.len() {
        let Some(d) = s[i..].find('$').map(|d| i + d) else {
            lit.push_str(&s[i..]);
            break;
        };
        lit.push_str(&s[i..d]);
        i = d + 1;
        match b.get(i) {
            Some(b'$') => {
                lit.push('$');
                i += 1;
                continue;
            }
            Some(b'(') => {
                // $(name), $(name(arg)), each with optional {transformations}
                let (name, arg, tr, n) = delimited(&s[i + 1..]).map_err(|e| (d, e))?;
                let pv = resolve_tr(name, arg, tr, vars).map_err(|e| (d, e))?;
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Pv(pv));
                i += 1 + n;
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let ns = i;
                while i < b.len() && is_name(b[i]) {
                    i += 1;
                }
                let name = &s[ns..i];
                let mut arg = None;
                if matches!(name, "var" | "hdr" | "avp" | "sht") && b.get(i) == Some(&b'(') {
                    // The matching `)`: a `$sht` key may hold `$var(x)`.
                    let mut depth = 0usize;
                    let close = s[i..].char_indices().find(|&(_, ch)| {
                        match ch {
                            '(' => depth += 1,
                            ')' => depth = depth.saturating_sub(1),
                            _ => {}
                        }
                        ch == ')' && depth == 0
                    });
                    let Some((c, _)) = close else {
                        return Err((d, format!("missing `)` after `${name}(`")));
                    };
                    arg = Some(s[i + 1..i + c].trim());
                    i += c + 1;
                }
                let pv = resolve(name, arg, vars).map_err(|e| (d, e))?;
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Pv(pv));
            }
            _ => lit.push('$'),
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct V(Vec<String>);
    impl Vars for V {
        fn slot(&mut self, name: &str) -> usize {
            match self.0.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    self.0.push(name.to_owned());
                    self.0.len() - 1
                }
            }
        }
    }

    #[test]
    fn templates() {
        let mut v = V(vec![]);
        let t = template("a $ru b $var(x)$(si)c $$ $5 $", &mut v).unwrap();
        assert_eq!(t.len(), 6, "{t:?}");
        assert_eq!(t[0], Part::Lit("a ".into()));
        assert_eq!(t[5], Part::Lit("c $ $5 $".into()));
        assert!(template("$nope", &mut v).is_err());
        assert!(template("$var", &mut v).is_err());
        assert!(template("$var(x", &mut v).is_err());
        assert!(template("$(ru", &mut v).is_err());
        assert!(template("$(hdr(X-A))", &mut v).is_ok());
        assert!(template("$ru(x)", &mut v).is_ok_and(|t| t.len() == 2));
    }

    #[test]
    fn tls_names() {
        let mut v = V(vec![]);
        for n in [
            "tls_version",
            "tls_description",
            "tls_cipher_info",
            "tls_cipher_bits",
            "tls_peer_version",
            "tls_my_version",
            "tls_peer_serial",
            "tls_my_serial",
            "tls_peer_subject",
            "tls_peer_issuer",
            "tls_my_subject",
            "tls_my_issuer",
            "tls_peer_subject_cn",
            "tls_peer_issuer_cn",
            "tls_my_subject_cn",
            "tls_my_issuer_cn",
            "tls_peer_subject_locality",
            "tls_peer_issuer_country",
            "tls_my_subject_state",
            "tls_my_issuer_organization",
            "tls_peer_subject_unit",
            "tls_peer_subject_uid",
            "tls_peer_san_email",
            "tls_my_san_email",
            "tls_peer_san_hostname",
            "tls_peer_san_uri",
            "tls_peer_san_ip",
            "tls_peer_verified",
            "tls_peer_revoked",
            "tls_peer_expired",
            "tls_peer_selfsigned",
            "tls_peer_notBefore",
            "tls_peer_notAfter",
            "tls_peer_server_name",
        ] {
            assert!(resolve(n, None, &mut v).is_ok(), "{n}");
        }
        assert!(resolve("tls_peer_nope", None, &mut v).is_err());
        assert!(resolve("tls_", None, &mut v).is_err());
    }
}
