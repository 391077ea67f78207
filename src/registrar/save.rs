//! `save("location")`: RFC 3261 §10.3 for one REGISTER, with Path (RFC 3327) and flows
//! (RFC 5626). Split in two pure halves so that any store can use them: [`Register::parse`]
//! reads and checks the request, [`Register::apply`] computes an AoR's new bindings from its
//! current ones. [`save`] runs both against a [`LocationStore`]. Never panics on any input.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use super::binding::{aor_of, uri_eq, AorError, Binding, Flow};
use super::store::{LocationStore, StoreError};
use super::{http_date, PathMode, Reply, Settings};
use crate::proxy::Inbound;
use crate::sip::{Contacts, HeaderName, Message, Method, NameAddr, Where};

/// Longest User-Agent kept in a binding: it is for `ul.dump`, not worth unbounded memory.
const MAX_USER_AGENT: usize = 128;

/// Why a REGISTER was refused. [`SaveError::reply`] gives the response to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaveError {
    #[error("not a REGISTER request")]
    NotRegister,
    /// 400, with the reason phrase (printable: it came from a `ParseError` or a literal).
    #[error("bad request: {0}")]
    BadRequest(Cow<'static, str>),
    /// 404: the To URI cannot be an address-of-record here.
    #[error("bad address-of-record: {0}")]
    BadAor(AorError),
    /// 423 with `Min-Expires`.
    #[error("registration interval too brief (minimum {min} s)")]
    IntervalTooBrief { min: u32 },
    /// 420 with `Unsupported: path` (RFC 3327 §5.3, strict mode).
    #[error("Path used but the UA does not support it")]
    PathNotSupported,
    /// 500: same Call-ID and a CSeq not above the stored one (RFC 3261 §10.3 steps 6-7).
    #[error("out-of-order REGISTER (CSeq {cseq} <= stored {stored})")]
    OutOfOrder { cseq: u32, stored: u32 },
    /// 503: the AoR would exceed `max_contacts` (Kamailio's answer).
    #[error("too many contacts (limit {max})")]
    TooManyContacts { max: usize },
    /// 500: the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SaveError {
    /// The response for this error.
    pub fn reply(&self) -> Reply {
        let (code, reason, headers): (u16, Cow<'static, str>, String) = match self {
            SaveError::NotRegister => (400, "Not a REGISTER".into(), String::new()),
            SaveError::BadRequest(r) => (400, r.clone(), String::new()),
            SaveError::BadAor(_) => (404, "Not Found".into(), String::new()),
            SaveError::IntervalTooBrief { min } => (
                423,
                "Interval Too Brief".into(),
                format!("Min-Expires: {min}\r\n"),
            ),
            SaveError::PathNotSupported => (
                420,
                "Bad Extension".into(),
                "Unsupported: path\r\n".to_owned(),
            ),
            SaveError::OutOfOrder { .. } => (500, "Out Of Order CSeq".into(), String::new()),
            SaveError::TooManyContacts { .. } => {
                (503, "Too Many Registered Contacts".into(), String::new())
            }
            SaveError::Store(_) => (500, "Location Store Unavailable".into(), String::new()),
        };
        Reply {
            code,
            reason,
            headers,
        }
    }
}

fn bad(reason: &'static str) -> SaveError {
    SaveError::BadRequest(Cow::Borrowed(reason))
}

fn bad_parse(e: crate::sip::ParseError) -> SaveError {
    SaveError::BadRequest(Cow::Owned(e.to_string()))
}

/// One Contact of a REGISTER, checked, with its effective expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactUpdate<'m> {
    /// The URI without `<>`.
    pub uri: &'m str,
    /// Seconds, after `default_expires`, `min_expires` and `max_expires` (0 removes).
    pub expires: u32,
    pub q: Option<u16>,
    /// `+sip.instance` as written.
    pub instance: Option<&'m str>,
    /// `reg-id`, only when honoured (an instance is present and the UA supports outbound).
    pub reg_id: Option<u32>,
}

/// A REGISTER request, read and checked: everything [`Register::apply`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register<'m> {
    /// The canonical AoR of To.
    pub aor: String,
    pub call_id: &'m str,
    pub cseq: u32,
    /// `Contact: *` (with `Expires: 0`): remove every binding.
    pub star: bool,
    /// The contacts, in request order; empty for a query (or for `*`).
    pub contacts: Vec<ContactUpdate<'m>>,
    /// Path values to store (empty when `path_mode` is off), top first.
    pub path: Vec<&'m str>,
    /// Path values to echo in the 200 OK.
    pub path_echo: bool,
    /// A reg-id was honoured: the 200 OK carries `Require: outbound` (RFC 5626 §6).
    pub outbound: bool,
    pub user_agent: Option<&'m str>,
}

fn has_option_tag(msg: &Message, tag: &str) -> bool {
    msg.supported()
        .any(|t| t.is_ok_and(|t| t.eq_ignore_ascii_case(tag)))
}

impl<'m> Register<'m> {
    /// Read a REGISTER (RFC 3261 §10.3 steps 5-6 and the request-level checks of step 7).
    /// Domain checks (step 3) and authentication (step 4) are the script's, before `save`.
    pub fn parse(msg: &'m Message, settings: &Settings) -> Result<Register<'m>, SaveError> {
        if msg.method_kind() != Some(Method::Register) {
            return Err(SaveError::NotRegister);
        }
        let to = msg.to().map_err(bad_parse)?;
        let to_uri = to.uri().map_err(bad_parse)?;
        let aor = aor_of(&to_uri).map_err(SaveError::BadAor)?;
        let call_id = msg.call_id().map_err(bad_parse)?;
        let cseq = msg.cseq().map_err(bad_parse)?;
        if !cseq.method.eq_ignore_ascii_case("REGISTER") {
            return Err(bad("CSeq method is not REGISTER"));
        }
        let header_expires = msg.expires().map_err(bad_parse)?;
        let contacts = msg.contacts().map_err(bad_parse)?;
        let outbound_ok = has_option_tag(msg, "outbound");
        let path_supported = has_option_tag(msg, "path");

        let mut path = Vec::new();
        if settings.path_mode != PathMode::Off {
            for v in msg.list_values(HeaderName::Path) {
                let v = v.map_err(bad_parse)?;
                let na = NameAddr::parse(v, Where::Header("Path")).map_err(bad_parse)?;
                na.validate().map_err(bad_parse)?;
                path.push(v.trim());
            }
            if !path.is_empty() && !path_supported && settings.path_mode == PathMode::Strict {
                return Err(SaveError::PathNotSupported);
            }
        }
        let path_echo = !path.is_empty() && path_supported;

        let user_agent = msg.header(HeaderName::UserAgent).map(|ua| {
            let mut end = ua.len().min(MAX_USER_AGENT);
            while !ua.is_char_boundary(end) {
                end -= 1;
            }
            &ua[..end]
        });

        let mut reg = Register {
            aor,
            call_id,
            cseq: cseq.seq,
            star: false,
            contacts: Vec::new(),
            path,
            path_echo,
            outbound: false,
            user_agent,
        };
        match contacts {
            Contacts::Star => {
                // RFC 3261 §10.3 step 6: `*` only alone and only with Expires: 0.
                if msg.list_values(HeaderName::Contact).count() != 1 {
                    return Err(bad("Contact '*' must be the only Contact"));
                }
                if header_expires != Some(0) {
                    return Err(bad("Contact '*' requires Expires: 0"));
                }
                reg.star = true;
            }
            Contacts::List(list) => {
                for c in &list {
                    reg.contacts
                        .push(contact_update(c, header_expires, settings, outbound_ok)?);
                }
            }
        }
        reg.outbound = reg.contacts.iter().any(|c| c.reg_id.is_some());
        if reg.outbound && reg.contacts.len() > 1 {
            // RFC 5626 §6: a flow is registered alone.
            return Err(bad("reg-id with more than one Contact"));
        }
        Ok(reg)
    }

    /// The new bindings of the AoR given its `current` ones (RFC 3261 §10.3 steps 6-8):
    /// expired bindings are dropped, `*` removes all, each contact adds, refreshes or (with
    /// expiry 0) removes its binding. The whole request fails when one binding is out of
    /// order. Pure: a compare-and-set store may call it again on newer `current`.
    pub fn apply(
        &self,
        current: &[Binding],
        flow: &Flow,
        now: i64,
        settings: &Settings,
    ) -> Result<Vec<Binding>, SaveError> {
        let ordered = |b: &Binding| -> Result<(), SaveError> {
            if b.call_id == self.call_id && self.cseq <= b.cseq {
                return Err(SaveError::OutOfOrder {
                    cseq: self.cseq,
                    stored: b.cseq,
                });
            }
            Ok(())
        };
        let live = current.iter().filter(|b| b.expires > now);
        if self.star {
            for b in live {
                ordered(b)?;
            }
            return Ok(Vec::new());
        }
        struct Slot {
            b: Binding,
            /// Written by this request: a second Contact for the same binding in one
            /// REGISTER overrides the first instead of failing the CSeq check.
            touched: bool,
            removed: bool,
        }
        let mut slots: Vec<Slot> = live
            .map(|b| Slot {
                b: b.clone(),
                touched: false,
                removed: false,
            })
            .collect();
        let before = slots.len();
        for c in &self.contacts {
            match slots.iter().position(|s| same_binding(&s.b, c)) {
                Some(i) => {
                    let s = &mut slots[i];
                    if !s.touched {
                        ordered(&s.b)?;
                    }
                    s.touched = true;
                    s.removed = c.expires == 0;
                    if c.expires > 0 {
                        s.b = self.binding(c, flow, now);
                    }
                }
                None if c.expires > 0 => slots.push(Slot {
                    b: self.binding(c, flow, now),
                    touched: true,
                    removed: false,
                }),
                None => {}
            }
        }
        let out: Vec<Binding> = slots
            .into_iter()
            .filter(|s| !s.removed)
            .map(|s| s.b)
            .collect();
        // Only a request that grows the set is refused: lowering the limit must not stop
        // phones that are already over it from refreshing.
        if settings.max_contacts > 0 && out.len() > settings.max_contacts && out.len() > before {
            return Err(SaveError::TooManyContacts {
                max: settings.max_contacts,
            });
        }
        Ok(out)
    }

    fn binding(&self, c: &ContactUpdate<'_>, flow: &Flow, now: i64) -> Binding {
        Binding {
            contact: c.uri.to_owned(),
            expires: now.saturating_add(i64::from(c.expires)),
            q: c.q,
            call_id: self.call_id.to_owned(),
            cseq: self.cseq,
            path: self.path.iter().map(|p| (*p).to_owned()).collect(),
            flow: flow.clone(),
            instance: c.instance.map(str::to_owned),
            reg_id: c.reg_id,
            user_agent: self.user_agent.map(str::to_owned),
            updated: now,
        }
    }
}

/// RFC 5626 §6: with `+sip.instance` the instance (and reg-id) is the binding's key, not
/// the URI; a contact without one matches by URI (§19.1.4), so a UA can still remove a
/// flow binding with a bare `Contact: <uri>;expires=0`.
fn same_binding(b: &Binding, c: &ContactUpdate<'_>) -> bool {
    match (c.instance, b.instance.as_deref()) {
        (Some(ci), Some(bi)) => ci == bi && c.reg_id == b.reg_id,
        _ => uri_eq(&b.contact, c.uri),
    }
}

fn contact_update<'m>(
    c: &NameAddr<'m>,
    header_expires: Option<u32>,
    settings: &Settings,
    outbound_ok: bool,
) -> Result<ContactUpdate<'m>, SaveError> {
    // Stored URIs are written back inside <> in replies and Request-URIs: they must not
    // be able to close the brackets or break a line.
    if c.uri_str
        .bytes()
        .any(|b| matches!(b, b'<' | b'>' | b'"') || b <= b' ' || b == 0x7f)
    {
        return Err(bad("bad Contact URI"));
    }
    // A non-numeric expires param (an RFC 2543 date) counts as absent, as RFC 3261 §10.3
    // lets the registrar choose; a bad q is an error because it changes routing.
    let requested = c
        .expires()
        .or(header_expires)
        .unwrap_or(settings.default_expires);
    if requested != 0 && requested < settings.min_expires {
        return Err(SaveError::IntervalTooBrief {
            min: settings.min_expires,
        });
    }
    let expires = requested.min(settings.max_expires);
    let q = match c.params.get("q") {
        None => None,
        Some(_) => Some(c.q().ok_or(bad("bad Contact q value"))?),
    };
    let instance = match c.params.get("+sip.instance") {
        None => None,
        Some(Some(v)) if !v.is_empty() => Some(v),
        Some(_) => return Err(bad("empty +sip.instance")),
    };
    let reg_id = match (instance, c.params.get("reg-id")) {
        (Some(_), Some(Some(v))) if outbound_ok => match v.parse::<u32>() {
            Ok(n) if (1..1 << 31).contains(&n) => Some(n),
            _ => return Err(bad("bad reg-id")),
        },
        // RFC 5626 §6: without an instance, or from a UA that does not support outbound,
        // reg-id is ignored and the contact is an ordinary RFC 3261 binding.
        _ => None,
    };
    Ok(ContactUpdate {
        uri: c.uri_str,
        expires,
        q,
        instance,
        reg_id,
    })
}

/// What `save` stored: the AoR's bindings after the request, for the 200 OK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub aor: String,
    /// Every current binding of the AoR after this request.
    pub bindings: Vec<Binding>,
    /// Path values to echo (RFC 3327 §5.3), top first.
    pub path_echo: Vec<String>,
    /// `Require: outbound` goes in the response (RFC 5626 §6).
    pub outbound: bool,
}

impl Saved {
    /// The 200 OK: one `Contact` per current binding with its remaining expiry, the Path
    /// echo, `Require: outbound` for a flow registration, and `Date` (RFC 3261 §10.3 step 8).
    pub fn reply(&self, now: i64) -> Reply {
        let mut h = String::with_capacity(64 + self.bindings.len() * 96);
        for b in &self.bindings {
            let _ = write!(h, "Contact: <{}>;expires={}", b.contact, b.remaining(now));
            if let Some(q) = b.q {
                h.push_str(";q=");
                push_q(&mut h, q);
            }
            if let Some(i) = &b.instance {
                let _ = write!(h, ";+sip.instance={i}");
            }
            if let Some(r) = b.reg_id {
                let _ = write!(h, ";reg-id={r}");
            }
            h.push_str("\r\n");
        }
        for p in &self.path_echo {
            let _ = write!(h, "Path: {p}\r\n");
        }
        if self.outbound {
            h.push_str("Require: outbound\r\n");
        }
        let _ = write!(h, "Date: {}\r\n", http_date(now));
        Reply {
            code: 200,
            reason: Cow::Borrowed("OK"),
            headers: h,
        }
    }
}

/// `q` in thousandths as the shortest decimal: 1000 -> `1`, 500 -> `0.5`, 25 -> `0.025`.
fn push_q(out: &mut String, q: u16) {
    if q >= 1000 {
        out.push('1');
        return;
    }
    let frac = format!("{q:03}");
    out.push_str("0.");
    out.push_str(frac.trim_end_matches('0'));
    if q == 0 {
        out.push('0');
    }
}

/// The flow a message arrived on, as a binding remembers it. `node` is this node's name.
pub fn flow_of(rx: &Inbound, node: Option<Arc<str>>) -> Flow {
    Flow {
        transport: rx.transport,
        source: rx.source,
        local: rx.local,
        conn: if rx.transport.is_stream() {
            rx.conn
        } else {
            None
        },
        node,
        node_route: None,
    }
}

/// Process a REGISTER against `store` (RFC 3261 §10.3 steps 5-8): on success the AoR's
/// bindings are updated atomically and [`Saved::reply`] gives the 200 OK; on failure
/// nothing changed and [`SaveError::reply`] gives the error response.
pub fn save(
    msg: &Message,
    rx: &Inbound,
    now: i64,
    settings: &Settings,
    store: &dyn LocationStore,
) -> Result<Saved, SaveError> {
    let reg = Register::parse(msg, settings)?;
    let flow = flow_of(rx, settings.node.clone());
    let mut outcome: Result<Vec<Binding>, SaveError> = Ok(Vec::new());
    store.update(
        &reg.aor,
        &mut |current| match reg.apply(current, &flow, now, settings) {
            Ok(v) => {
                outcome = Ok(v.clone());
                Some(v)
            }
            Err(e) => {
                outcome = Err(e);
                None
            }
        },
    )?;
    let bindings = outcome?;
    Ok(Saved {
        path_echo: if reg.path_echo {
            reg.path.iter().map(|p| (*p).to_owned()).collect()
        } else {
            Vec::new()
        },
        outbound: reg.outbound,
        aor: reg.aor,
        bindings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_formatting() {
        let f = |q| {
            let mut s = String::new();
            push_q(&mut s, q);
            s
        };
        assert_eq!(f(1000), "1");
        assert_eq!(f(500), "0.5");
        assert_eq!(f(25), "0.025");
        assert_eq!(f(0), "0.0");
        assert_eq!(f(100), "0.1");
    }
}
