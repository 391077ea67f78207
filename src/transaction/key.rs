//! Transaction keys: how a request finds its server transaction (RFC 3261 §17.2.3, with the
//! RFC 2543 fallback for branches without the `z9hG4bK` cookie) and a response its client
//! transaction (§17.1.3). A key is generic over its string storage: the table keeps
//! `Key<Box<str>>` (allocated once, at insert), a lookup builds `Key<&str>` borrowing from
//! the message, so matching allocates nothing. Never panics on any message.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

use crate::sip::{Host, Message, Method};

use super::TxError;

/// The method part of a key: ACK keys like the INVITE it acknowledges; CANCEL is its own
/// transaction; every other method keys by its name (methods are case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodKey<S> {
    Invite,
    Cancel,
    Other(S),
}

impl<S: AsRef<str>> MethodKey<S> {
    fn of(name: S) -> MethodKey<S> {
        match Method::classify(name.as_ref().as_bytes()) {
            Method::Invite | Method::Ack => MethodKey::Invite,
            Method::Cancel => MethodKey::Cancel,
            _ => MethodKey::Other(name),
        }
    }

    fn hash_into<H: Hasher>(&self, h: &mut H) {
        match self {
            MethodKey::Invite => h.write_u8(1),
            MethodKey::Cancel => h.write_u8(2),
            MethodKey::Other(s) => {
                h.write_u8(3);
                h.write(s.as_ref().as_bytes());
            }
        }
    }

    fn same<T: AsRef<str>>(&self, o: &MethodKey<T>) -> bool {
        match (self, o) {
            (MethodKey::Invite, MethodKey::Invite) | (MethodKey::Cancel, MethodKey::Cancel) => true,
            (MethodKey::Other(a), MethodKey::Other(b)) => a.as_ref() == b.as_ref(),
            _ => false,
        }
    }

    fn to_owned_key(&self) -> MethodKey<Box<str>> {
        match self {
            MethodKey::Invite => MethodKey::Invite,
            MethodKey::Cancel => MethodKey::Cancel,
            MethodKey::Other(s) => MethodKey::Other(s.as_ref().into()),
        }
    }

    /// True for the INVITE class (INVITE and its ACK).
    pub fn is_invite(&self) -> bool {
        matches!(self, MethodKey::Invite)
    }
}

/// A Via sent-by host: names compare case-insensitively, addresses by value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentBy<S> {
    Name(S),
    Ip(IpAddr),
}

impl<S: AsRef<str>> SentBy<S> {
    fn hash_into<H: Hasher>(&self, h: &mut H) {
        match self {
            SentBy::Name(n) => {
                h.write_u8(1);
                for b in n.as_ref().bytes() {
                    h.write_u8(b.to_ascii_lowercase());
                }
            }
            SentBy::Ip(ip) => {
                h.write_u8(2);
                ip.hash(h);
            }
        }
    }

    fn same<T: AsRef<str>>(&self, o: &SentBy<T>) -> bool {
        match (self, o) {
            (SentBy::Name(a), SentBy::Name(b)) => a.as_ref().eq_ignore_ascii_case(b.as_ref()),
            (SentBy::Ip(a), SentBy::Ip(b)) => a == b,
            _ => false,
        }
    }
}

/// What identifies a server transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerKey<S = Box<str>> {
    /// RFC 3261 §17.2.3: branch (with the cookie), sent-by, method.
    Branch {
        branch: S,
        host: SentBy<S>,
        port: u16,
        method: MethodKey<S>,
    },
    /// RFC 2543 (no cookie): Request-URI, From tag, Call-ID, CSeq number, the top Via as
    /// written, method. The To tag is checked after the lookup (`to_tag`, not hashed),
    /// because an ACK carries the To tag of the response, not of the INVITE.
    Rfc2543 {
        ruri: S,
        from_tag: S,
        call_id: S,
        cseq: u32,
        top_via: S,
        method: MethodKey<S>,
        to_tag: S,
    },
}

impl<'m> ServerKey<&'m str> {
    /// The key of a request, borrowed from it.
    pub fn of_request(msg: &'m Message) -> Result<ServerKey<&'m str>, TxError> {
        let method = msg.method().ok_or(TxError::Unkeyable("not a request"))?;
        Self::build(msg, MethodKey::of(method))
    }

    /// The key of the INVITE that a CANCEL cancels (§9.2: matched like the INVITE).
    pub fn invite_of_cancel(msg: &'m Message) -> Result<ServerKey<&'m str>, TxError> {
        Self::build(msg, MethodKey::Invite)
    }

    fn build(msg: &'m Message, method: MethodKey<&'m str>) -> Result<ServerKey<&'m str>, TxError> {
        let via = msg.top_via().map_err(|_| TxError::Unkeyable("Via"))?;
        if via.has_rfc3261_branch() {
            let host = match via.host {
                Host::Name(n) => SentBy::Name(n),
                Host::V4(a) => SentBy::Ip(IpAddr::V4(a)),
                Host::V6(a) => SentBy::Ip(IpAddr::V6(a)),
            };
            return Ok(ServerKey::Branch {
                branch: via.branch().unwrap_or(""),
                host,
                port: via.port.unwrap_or(0),
                method,
            });
        }
        let top_via =
            crate::sip::CommaSplit::new(msg.header(crate::sip::HeaderName::Via).unwrap_or(""))
                .next()
                .and_then(Result::ok)
                .unwrap_or("");
        Ok(ServerKey::Rfc2543 {
            ruri: msg
                .request_uri_str()
                .ok_or(TxError::Unkeyable("Request-URI"))?,
            from_tag: msg.from().ok().and_then(|f| f.tag()).unwrap_or(""),
            call_id: msg.call_id().map_err(|_| TxError::Unkeyable("Call-ID"))?,
            cseq: msg.cseq().map_err(|_| TxError::Unkeyable("CSeq"))?.seq,
            top_via: top_via.trim(),
            method,
            to_tag: msg.to().ok().and_then(|t| t.tag()).unwrap_or(""),
        })
    }
}

impl<S: AsRef<str>> ServerKey<S> {
    /// The keyed 64-bit hash the table indexes by.
    pub fn hash_with<B: BuildHasher>(&self, b: &B) -> u64 {
        let mut h = b.build_hasher();
        match self {
            ServerKey::Branch {
                branch,
                host,
                port,
                method,
            } => {
                h.write_u8(1);
                h.write(branch.as_ref().as_bytes());
                host.hash_into(&mut h);
                h.write_u16(*port);
                method.hash_into(&mut h);
            }
            ServerKey::Rfc2543 {
                ruri,
                from_tag,
                call_id,
                cseq,
                top_via,
                method,
                to_tag: _,
            } => {
                h.write_u8(2);
                for s in [ruri, from_tag, call_id, top_via] {
                    h.write(s.as_ref().as_bytes());
                    h.write_u8(0xff);
                }
                h.write_u32(*cseq);
                method.hash_into(&mut h);
            }
        }
        h.finish()
    }

    /// Whether `probe` (a request's key) names this transaction; `ack` says the probe is an
    /// ACK, whose To tag is not compared in the RFC 2543 fallback (it carries the tag of
    /// the response).
    pub fn matches<T: AsRef<str>>(&self, probe: &ServerKey<T>, ack: bool) -> bool {
        match (self, probe) {
            (
                ServerKey::Branch {
                    branch: b1,
                    host: h1,
                    port: p1,
                    method: m1,
                },
                ServerKey::Branch {
                    branch: b2,
                    host: h2,
                    port: p2,
                    method: m2,
                },
            ) => b1.as_ref() == b2.as_ref() && p1 == p2 && h1.same(h2) && m1.same(m2),
            (
                ServerKey::Rfc2543 {
                    ruri: r1,
                    from_tag: f1,
                    call_id: c1,
                    cseq: s1,
                    top_via: v1,
                    method: m1,
                    to_tag: t1,
                },
                ServerKey::Rfc2543 {
                    ruri: r2,
                    from_tag: f2,
                    call_id: c2,
                    cseq: s2,
                    top_via: v2,
                    method: m2,
                    to_tag: t2,
                },
            ) => {
                r1.as_ref() == r2.as_ref()
                    && f1.as_ref() == f2.as_ref()
                    && c1.as_ref() == c2.as_ref()
                    && s1 == s2
                    && v1.as_ref() == v2.as_ref()
                    && m1.same(m2)
                    && (ack || t1.as_ref() == t2.as_ref())
            }
            _ => false,
        }
    }

    /// The stored form (one allocation per string, at insert only).
    pub fn to_owned_key(&self) -> ServerKey<Box<str>> {
        match self {
            ServerKey::Branch {
                branch,
                host,
                port,
                method,
            } => ServerKey::Branch {
                branch: branch.as_ref().into(),
                host: match host {
                    SentBy::Name(n) => SentBy::Name(n.as_ref().into()),
                    SentBy::Ip(a) => SentBy::Ip(*a),
                },
                port: *port,
                method: method.to_owned_key(),
            },
            ServerKey::Rfc2543 {
                ruri,
                from_tag,
                call_id,
                cseq,
                top_via,
                method,
                to_tag,
            } => ServerKey::Rfc2543 {
                ruri: ruri.as_ref().into(),
                from_tag: from_tag.as_ref().into(),
                call_id: call_id.as_ref().into(),
                cseq: *cseq,
                top_via: top_via.as_ref().into(),
                method: method.to_owned_key(),
                to_tag: to_tag.as_ref().into(),
            },
        }
    }

    /// Bytes held on the heap by this key (for [`super::Table::approx_size`]).
    pub fn heap_size(&self) -> usize {
        let m = |m: &MethodKey<S>| match m {
            MethodKey::Other(s) => s.as_ref().len(),
            _ => 0,
        };
        match self {
            ServerKey::Branch {
                branch,
                host,
                method,
                ..
            } => {
                branch.as_ref().len()
                    + match host {
                        SentBy::Name(n) => n.as_ref().len(),
                        SentBy::Ip(_) => 0,
                    }
                    + m(method)
            }
            ServerKey::Rfc2543 {
                ruri,
                from_tag,
                call_id,
                top_via,
                method,
                to_tag,
                ..
            } => [ruri, from_tag, call_id, top_via, to_tag]
                .iter()
                .map(|s| s.as_ref().len())
                .sum::<usize>()
                .saturating_add(m(method)),
        }
    }

    /// True for the INVITE class (an INVITE server transaction, or an ACK probing for one).
    pub fn is_invite(&self) -> bool {
        match self {
            ServerKey::Branch { method, .. } | ServerKey::Rfc2543 { method, .. } => {
                method.is_invite()
            }
        }
    }
}

/// What identifies a client transaction: the branch siprox generated and the CSeq method
/// (§17.1.3), so a CANCEL siprox sends with its INVITE's branch is its own transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey<S = Box<str>> {
    pub branch: S,
    pub method: MethodKey<S>,
}

impl<'m> ClientKey<&'m str> {
    /// The key of a response (or of the request siprox sends): top Via branch and CSeq
    /// method. ACK is not a key of its own (no response ever answers it).
    pub fn of_message(msg: &'m Message) -> Result<ClientKey<&'m str>, TxError> {
        let via = msg.top_via().map_err(|_| TxError::Unkeyable("Via"))?;
        let branch = via.branch().ok_or(TxError::Unkeyable("Via branch"))?;
        let cseq = msg.cseq().map_err(|_| TxError::Unkeyable("CSeq"))?;
        Ok(ClientKey {
            branch,
            method: MethodKey::of(cseq.method),
        })
    }
}

impl<S: AsRef<str>> ClientKey<S> {
    pub fn hash_with<B: BuildHasher>(&self, b: &B) -> u64 {
        let mut h = b.build_hasher();
        h.write(self.branch.as_ref().as_bytes());
        self.method.hash_into(&mut h);
        h.finish()
    }

    pub fn matches<T: AsRef<str>>(&self, probe: &ClientKey<T>) -> bool {
        self.branch.as_ref() == probe.branch.as_ref() && self.method.same(&probe.method)
    }

    pub fn to_owned_key(&self) -> ClientKey<Box<str>> {
        ClientKey {
            branch: self.branch.as_ref().into(),
            method: self.method.to_owned_key(),
        }
    }

    pub fn heap_size(&self) -> usize {
        self.branch.as_ref().len()
            + match &self.method {
                MethodKey::Other(s) => s.as_ref().len(),
                _ => 0,
            }
    }
}
