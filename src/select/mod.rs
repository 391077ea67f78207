//! The SER "select framework": `@a.b[2].c` paths that read a piece of the SIP message, the
//! transport or the TLS connection. A path is parsed and validated once, when a script is
//! compiled, into a small [`Select`] tree; evaluating it against an [`Env`] is a match and a
//! lazy header parse, never a string lookup by name. Absent things are empty strings, never
//! errors; nothing here panics on any path or message.
//!
//! Paths are written without the leading `@` when passed to [`Select::parse`]. Indices are
//! 1-based as in SER; `-1` is the last element, `-2` the one before.

mod rpc;
mod sip;
mod tls;
mod value;

use std::fmt;

use crate::proxy::Inbound;
use crate::sip::Message;
use crate::tls::TlsFacts;

pub use rpc::RpcSelect;
pub use sip::{HeaderRef, Idx, NaPart, SipSelect, UriPart, ViaPart};
pub use tls::{CertPart, DnAttr, DnWhich, SanKind, Side, TlsSelect};
pub use value::Value;

/// What a select reads. Copy it freely: it is a handful of references.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    /// The SIP message; `None` in event routes (e.g. a TLS connection event).
    pub msg: Option<&'a Message>,
    /// How the message (or the connection) arrived.
    pub rx: &'a Inbound,
    /// TLS facts of the connection; `None` when it is not TLS.
    pub tls: Option<&'a TlsFacts>,
    /// Seconds since the Unix epoch, for `@tls.peer.expired`. Only read by selects whose
    /// [`Select::needs_clock`] is true, so a caller may leave it 0 otherwise.
    pub now_unix: i64,
}

/// A compiled select path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    Sip(SipSelect),
    Tls(TlsSelect),
    /// `@rpc.method` / `@xmlrpc.method`: the method of an RPC call carried over HTTP.
    Rpc(RpcSelect),
}

/// Why a select path was refused; `offset` is a byte offset into the path text (the text
/// after `@`), so that a script compiler can point at the bad segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct SelectError {
    pub offset: usize,
    pub msg: String,
}

impl SelectError {
    pub(crate) fn at(offset: usize, msg: impl Into<String>) -> SelectError {
        SelectError {
            offset,
            msg: msg.into(),
        }
    }
}

/// An index written in brackets: `[2]`, `[-1]` or `["X-Foo"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawIdx<'p> {
    Int(i64),
    Str(&'p str),
}

/// One `name[idx]...` segment of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seg<'p> {
    pub(crate) name: &'p str,
    pub(crate) idx: Vec<RawIdx<'p>>,
    /// Byte offset of the name in the path text.
    pub(crate) at: usize,
}

impl Seg<'_> {
    /// Case-insensitive name test against a list of aliases.
    pub(crate) fn is(&self, names: &[&str]) -> bool {
        names.iter().any(|n| self.name.eq_ignore_ascii_case(n))
    }

    pub(crate) fn no_index(&self) -> Result<(), SelectError> {
        if self.idx.is_empty() {
            Ok(())
        } else {
            Err(SelectError::at(
                self.at,
                format!("`{}` takes no index", self.name),
            ))
        }
    }
}

/// The longest path accepted; real paths are a few dozen bytes.
const MAX_PATH: usize = 512;

/// Split a path into segments: `name ('[' idx ']')* ('.' name ('[' idx ']')*)*`.
pub(crate) fn split(path: &str) -> Result<Vec<Seg<'_>>, SelectError> {
    if path.len() > MAX_PATH {
        return Err(SelectError::at(0, "select path too long"));
    }
    let b = path.as_bytes();
    let mut segs = Vec::new();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let name = &path[start..i];
        let mut idx = Vec::new();
        while i < b.len() && b[i] == b'[' {
            let open = i;
            i += 1;
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                let s = i + 1;
                let e = path[s..]
                    .find(q as char)
                    .map(|n| s + n)
                    .ok_or_else(|| SelectError::at(open, "unterminated string index"))?;
                idx.push(RawIdx::Str(&path[s..e]));
                i = e + 1;
            } else {
                let s = i;
                if i < b.len() && b[i] == b'-' {
                    i += 1;
                }
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let n: i64 = path[s..i].parse().map_err(|_| {
                    SelectError::at(open, "an index is an integer or a quoted name")
                })?;
                idx.push(RawIdx::Int(n));
            }
            if i >= b.len() || b[i] != b']' {
                return Err(SelectError::at(open, "missing `]`"));
            }
            i += 1;
        }
        if name.is_empty() && (idx.is_empty() || segs.is_empty()) {
            return Err(SelectError::at(start, "empty select segment"));
        }
        segs.push(Seg {
            name,
            idx,
            at: start,
        });
        if i >= b.len() {
            break;
        }
        if b[i] != b'.' {
            return Err(SelectError::at(i, "unexpected character in select"));
        }
        i += 1;
    }
    Ok(segs)
}

impl Select {
    /// Parse and validate a path (without the `@`).
    pub fn parse(path: &str) -> Result<Select, SelectError> {
        let segs = split(path)?;
        let Some(first) = segs.first() else {
            return Err(SelectError::at(0, "empty select"));
        };
        if first.is(&["tls"]) {
            return tls::build(&segs).map(Select::Tls);
        }
        if first.is(&["rpc", "xmlrpc"]) {
            return rpc::build(&segs).map(Select::Rpc);
        }
        sip::build(&segs).map(Select::Sip)
    }

    /// Evaluate against a message context. Absent things are the empty string.
    pub fn eval<'a>(&self, env: &Env<'a>) -> Value<'a> {
        match self {
            Select::Sip(s) => s.eval(env),
            Select::Tls(t) => t.eval(env.tls, env.now_unix),
            Select::Rpc(r) => r.eval(env),
        }
    }

    /// True when evaluation reads [`Env::now_unix`].
    pub fn needs_clock(&self) -> bool {
        matches!(self, Select::Tls(t) if t.needs_clock())
    }

    /// The part of the Request-URI this select reads, if it reads the Request-URI (a script
    /// that rewrote the Request-URI evaluates it against the new one with [`UriPart::eval`]).
    pub fn ruri_part(&self) -> Option<&UriPart> {
        match self {
            Select::Sip(SipSelect::Ruri(p)) => Some(p),
            _ => None,
        }
    }
}

impl fmt::Display for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_paths() {
        let s = split("contact[2].uri.params.transport").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].idx, vec![RawIdx::Int(2)]);
        let s = split("hf_value[\"X-Foo\"]").unwrap();
        assert_eq!(s[0].idx, vec![RawIdx::Str("X-Foo")]);
        let s = split("via[-1].branch").unwrap();
        assert_eq!(s[0].idx, vec![RawIdx::Int(-1)]);
        assert!(split("a..b").is_err());
        assert!(split("a[").is_err());
        assert!(split("a[x]").is_err());
        assert!(split("a[\"x]").is_err());
        assert!(split("").is_err());
        assert!(split("a.b$").is_err());
    }

    #[test]
    fn unknown_paths_are_errors() {
        for p in [
            "nope",
            "ruri.nope",
            "tls.nope",
            "tls.peer.subject.nope",
            "from[2]",
            "via[0]",
            "cseq.x",
            "msg.header",
            "msg.header[1]",
            "msg.header[\"X\"].uri",
            "hf_value[\"X\"].param",
            "from.param.tag",
        ] {
            assert!(Select::parse(p).is_err(), "{p}");
        }
    }

    /// What Kamailio 5.6 accepts at load, siprox accepts, with SER's meaning.
    #[test]
    fn kamailio_paths_parse_with_ser_meaning() {
        use crate::sip::HeaderName;
        let tls = |p: &str| match Select::parse(p) {
            Ok(Select::Tls(t)) => t,
            other => panic!("{p}: {other:?}"),
        };
        let sip = |p: &str| match Select::parse(p) {
            Ok(Select::Sip(s)) => s,
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(
            tls("tls.peer.revoked"),
            TlsSelect::Cert(Side::Peer, CertPart::Revoked)
        );
        assert_eq!(
            tls("tls.my.verified"),
            TlsSelect::Cert(Side::My, CertPart::Verified)
        );
        for (p, side, which) in [
            ("tls.peer.subject", Side::Peer, DnWhich::Subject),
            ("tls.peer.subj", Side::Peer, DnWhich::Subject),
            ("tls.my.issuer", Side::My, DnWhich::Issuer),
        ] {
            assert_eq!(
                tls(p),
                TlsSelect::Cert(side, CertPart::Dn(which, Some(DnAttr::Cn))),
                "{p}"
            );
        }
        assert_eq!(
            sip("msg.header[\"X-Foo\"]"),
            SipSelect::Header(HeaderRef::new("X-Foo"))
        );
        assert_eq!(
            sip("hf_value[\"X-Foo\"]"),
            SipSelect::HeaderAll(HeaderRef::new("X-Foo"))
        );
        for p in ["hf_value[\"X-P\"].param.A", "hf_value.x_p[2].p.a"] {
            assert!(
                matches!(sip(p), SipSelect::Element(_, _, NaPart::Param(ref n)) if n == "a"),
                "{p}"
            );
        }
        assert_eq!(
            sip("contact.uri"),
            SipSelect::SerContact(NaPart::Uri(UriPart::Whole))
        );
        assert!(matches!(sip("contact[1].uri"), SipSelect::Element(..)));
        assert_eq!(
            sip("from.name"),
            SipSelect::Single(HeaderName::From, NaPart::Name)
        );
        assert!(matches!(
            sip("hf_value.contact[2].name"),
            SipSelect::Element(_, _, NaPart::NameUnquoted)
        ));
    }
}
