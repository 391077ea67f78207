//! The binding model: an address-of-record, its contacts and the flow each arrived on.
//! Also the two comparisons the registrar needs: the canonical AoR of a URI (RFC 3261
//! §10.3 step 5) and Contact URI equality (§19.1.4). Pure functions; never panic.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::proxy::{ConnId, Transport};
use crate::sip::{unescape, Host, SipUri, Uri};

/// The network path a binding was registered over (RFC 5626 "flow"): where a request to
/// the contact must go when the phone sits behind NAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub transport: Transport,
    /// The address the REGISTER came from (the NAT's public side for a phone behind NAT).
    pub source: SocketAddr,
    /// Our address it arrived on: a UDP reply must leave from the same socket to pass the NAT.
    pub local: SocketAddr,
    /// The TCP/TLS connection it arrived on. `None` for UDP, and for a stream flow whose
    /// connection no longer exists (restored from a snapshot): such a flow is gone.
    pub conn: Option<ConnId>,
    /// The cluster node that holds `conn` (`None` on a single node). Shared: one per node.
    pub node: Option<Arc<str>>,
    /// How another node reaches this flow: the Route value naming the owning node's
    /// advertise URI and its node token (`<sip:10.0.0.1:5071;transport=tls;lr;nf=...>`).
    /// Set only on other nodes' bindings (the replica); `None` on this node's own.
    pub node_route: Option<Arc<str>>,
}

impl Flow {
    /// True when delivery is bound to a connection that this process cannot re-create:
    /// a stream transport (a phone behind NAT cannot be connected to).
    pub fn is_connection_bound(&self) -> bool {
        self.transport.is_stream()
    }
}

/// One contact registered for an AoR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI as the UA wrote it (without `<>` and header parameters).
    pub contact: String,
    /// Absolute expiry, Unix seconds. The binding is current while `expires > now`.
    pub expires: i64,
    /// The `q` parameter in thousandths; `None` when the UA gave none (ranked as 1.0).
    pub q: Option<u16>,
    pub call_id: String,
    pub cseq: u32,
    /// Path values (RFC 3327) as received, top first: the Route set to pre-load on lookup.
    pub path: Vec<String>,
    pub flow: Flow,
    /// `+sip.instance` as written (quotes included), RFC 5626 §4.1.
    pub instance: Option<String>,
    /// `reg-id` (RFC 5626 §4.2); only kept together with an instance.
    pub reg_id: Option<u32>,
    /// User-Agent, truncated (for `ul.dump` only).
    pub user_agent: Option<String>,
    /// When the binding was last written, Unix seconds: the tie-break between equal q.
    pub updated: i64,
}

impl Binding {
    /// Seconds left at `now` (0 when expired).
    pub fn remaining(&self, now: i64) -> u32 {
        (self.expires - now).clamp(0, i64::from(u32::MAX)) as u32
    }

    /// The q-value used for ranking: an absent q counts as 1.0.
    pub fn rank_q(&self) -> u16 {
        self.q.unwrap_or(1000)
    }

    /// Approximate heap + inline bytes of this binding (for the memory figure).
    pub fn approx_size(&self) -> usize {
        std::mem::size_of::<Binding>()
            + self.contact.capacity()
            + self.call_id.capacity()
            + self.path.capacity() * std::mem::size_of::<String>()
            + self.path.iter().map(String::capacity).sum::<usize>()
            + self.instance.as_ref().map_or(0, String::capacity)
            + self.user_agent.as_ref().map_or(0, String::capacity)
    }
}

/// Why a URI cannot be an address-of-record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AorError {
    #[error("not a SIP URI")]
    NotSip,
    #[error("URI without a user part")]
    NoUser,
    #[error("bad URI: {0}")]
    BadUri(&'static str),
}

/// The canonical address-of-record of a URI (RFC 3261 §10.3 step 5): `sip:user@host` with
/// every URI parameter, the port and the password removed, the host lower-cased and the
/// user part's escapes made canonical. `sips:` maps to the same AoR as `sip:` so that a
/// phone registered over TLS is found for a call addressed with either scheme.
pub fn aor_of(uri: &Uri<'_>) -> Result<String, AorError> {
    let sip = uri.as_sip().ok_or(AorError::NotSip)?;
    aor_of_sip(sip)
}

/// [`aor_of`] for a URI in text form.
pub fn aor_of_str(uri: &str) -> Result<String, AorError> {
    let u = Uri::parse(uri).map_err(AorError::BadUri)?;
    aor_of(&u)
}

fn aor_of_sip(sip: &SipUri<'_>) -> Result<String, AorError> {
    let user = sip.user.ok_or(AorError::NoUser)?;
    let mut out = String::with_capacity(5 + user.len() + 32);
    out.push_str("sip:");
    canonical_user(user, &mut out);
    out.push('@');
    push_host(&sip.host, &mut out);
    Ok(out)
}

/// Decode every escape, then re-escape exactly the bytes that may not appear bare in a
/// user part: `%61lice` and `alice` give the same key, `%40` stays escaped.
fn canonical_user(user: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in unescape(user).iter() {
        let bare = crate::sip::is_user_unreserved(b);
        if bare {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

fn push_host(h: &Host<'_>, out: &mut String) {
    match h {
        Host::Name(n) => {
            let n = n.strip_suffix('.').unwrap_or(n);
            out.extend(n.chars().map(|c| c.to_ascii_lowercase()));
        }
        other => {
            use std::fmt::Write as _;
            let _ = write!(out, "{other}");
        }
    }
}

/// Contact URI equality as RFC 3261 §19.1.4 defines it for SIP URIs: scheme, user and
/// password exact (after unescaping), host case-insensitive, port exact (an absent port is
/// not the default port), the `user`, `ttl`, `method`, `maddr` and `transport` parameters
/// must match when either side has them, other parameters only when both have them;
/// URI headers are ignored. Other schemes compare case-insensitively as text. Unparsable
/// URIs compare as bytes.
pub fn uri_eq(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (Uri::parse(a), Uri::parse(b)) {
        (Ok(Uri::Sip(x)), Ok(Uri::Sip(y))) => sip_eq(&x, &y),
        (Ok(Uri::Sip(_)), Ok(_)) | (Ok(_), Ok(Uri::Sip(_))) => false,
        (Ok(_), Ok(_)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

fn sip_eq(x: &SipUri<'_>, y: &SipUri<'_>) -> bool {
    if x.secure != y.secure || x.port != y.port {
        return false;
    }
    let esc = |s: Option<&str>| s.map(|s| unescape(s).into_owned());
    if esc(x.user) != esc(y.user) || esc(x.password) != esc(y.password) {
        return false;
    }
    let host_eq = match (&x.host, &y.host) {
        (Host::Name(a), Host::Name(b)) => a.eq_ignore_ascii_case(b),
        (a, b) => a == b,
    };
    if !host_eq {
        return false;
    }
    const MUST: [&str; 5] = ["user", "ttl", "method", "maddr", "transport"];
    let val_eq = |a: Option<&str>, b: Option<&str>| match (a, b) {
        (Some(a), Some(b)) => unescape(a).eq_ignore_ascii_case(&unescape(b)),
        (None, None) => true,
        _ => false,
    };
    for name in MUST {
        match (x.params.get(name), y.params.get(name)) {
            (None, None) => {}
            (Some(a), Some(b)) if val_eq(a, b) => {}
            _ => return false,
        }
    }
    for (n, v) in x.params.iter() {
        if MUST.iter().any(|m| m.eq_ignore_ascii_case(n)) {
            continue;
        }
        if let Some(w) = y.params.get(n) {
            if !val_eq(v, w) {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aor_canonical_form() {
        assert_eq!(
            aor_of_str("sip:alice@Example.COM:5061;transport=tls").unwrap(),
            "sip:alice@example.com"
        );
        assert_eq!(
            aor_of_str("sips:%61lice:pw@example.com.").unwrap(),
            "sip:alice@example.com"
        );
        assert_eq!(
            aor_of_str("sip:user;par=u%40example.net@example.com").unwrap(),
            "sip:user;par=u%40example.net@example.com"
        );
        assert_eq!(
            aor_of_str("sip:bob@[2001:db8::1]").unwrap(),
            "sip:bob@[2001:db8::1]"
        );
        assert_eq!(aor_of_str("sip:example.com"), Err(AorError::NoUser));
        assert_eq!(aor_of_str("tel:+15551234"), Err(AorError::NotSip));
        assert!(aor_of_str("nonsense").is_err());
        // Case of the user part matters (RFC 3261 §19.1.4).
        assert_ne!(
            aor_of_str("sip:Alice@example.com").unwrap(),
            aor_of_str("sip:alice@example.com").unwrap()
        );
    }

    #[test]
    fn uri_equality_rfc3261_examples() {
        // RFC 3261 §19.1.4: equivalent
        assert!(uri_eq(
            "sip:%61lice@atlanta.com;transport=TCP",
            "sip:alice@AtLanTa.CoM;Transport=tcp"
        ));
        assert!(uri_eq(
            "sip:carol@chicago.com",
            "sip:carol@chicago.com;newparam=5"
        ));
        assert!(uri_eq(
            "sip:carol@chicago.com;security=on",
            "sip:carol@chicago.com;newparam=5"
        ));
        assert!(uri_eq(
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"
        ));
        // not equivalent
        assert!(!uri_eq(
            "SIP:ALICE@AtLanTa.CoM;Transport=udp",
            "sip:alice@AtLanTa.CoM;Transport=UDP"
        ));
        assert!(!uri_eq("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"));
        assert!(!uri_eq(
            "sip:bob@biloxi.com",
            "sip:bob@biloxi.com;transport=udp"
        ));
        assert!(!uri_eq(
            "sip:carol@chicago.com;newparam=5",
            "sip:carol@chicago.com;newparam=6"
        ));
        assert!(!uri_eq("sip:a@h", "sips:a@h"));
    }
}
