//! Header field names: the ones a proxy interprets get an enum variant, and the compact
//! forms of RFC 3261 §7.3.3 (and later RFCs) map to the same variant as their long form.
//! Classification is case-insensitive and allocation-free; it must never panic.

/// A header field name that siprox knows, or [`HeaderName::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Contact,
    Route,
    RecordRoute,
    Path,
    ContentLength,
    ContentType,
    ContentEncoding,
    Expires,
    MinExpires,
    Require,
    ProxyRequire,
    Supported,
    Unsupported,
    Allow,
    Accept,
    Subject,
    Event,
    AllowEvents,
    ReferTo,
    ReferredBy,
    SessionExpires,
    AcceptContact,
    RejectContact,
    RequestDisposition,
    Identity,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    UserAgent,
    Server,
    Date,
    /// Any other name; its spelling is read from the message.
    Other,
}

impl HeaderName {
    /// The canonical long form, e.g. `"Call-ID"`. `None` for [`HeaderName::Other`].
    pub fn as_str(self) -> &'static str {
        use HeaderName::*;
        match self {
            Via => "Via",
            From => "From",
            To => "To",
            CallId => "Call-ID",
            CSeq => "CSeq",
            MaxForwards => "Max-Forwards",
            Contact => "Contact",
            Route => "Route",
            RecordRoute => "Record-Route",
            Path => "Path",
            ContentLength => "Content-Length",
            ContentType => "Content-Type",
            ContentEncoding => "Content-Encoding",
            Expires => "Expires",
            MinExpires => "Min-Expires",
            Require => "Require",
            ProxyRequire => "Proxy-Require",
            Supported => "Supported",
            Unsupported => "Unsupported",
            Allow => "Allow",
            Accept => "Accept",
            Subject => "Subject",
            Event => "Event",
            AllowEvents => "Allow-Events",
            ReferTo => "Refer-To",
            ReferredBy => "Referred-By",
            SessionExpires => "Session-Expires",
            AcceptContact => "Accept-Contact",
            RejectContact => "Reject-Contact",
            RequestDisposition => "Request-Disposition",
            Identity => "Identity",
            Authorization => "Authorization",
            ProxyAuthorization => "Proxy-Authorization",
            WwwAuthenticate => "WWW-Authenticate",
            ProxyAuthenticate => "Proxy-Authenticate",
            UserAgent => "User-Agent",
            Server => "Server",
            Date => "Date",
            Other => "",
        }
    }

    /// Classify a header name as written in a message (long or compact form, any case).
    #[inline]
    pub fn classify(name: &[u8]) -> HeaderName {
        use HeaderName::*;
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'v' => Via,
                b'f' => From,
                b't' => To,
                b'i' => CallId,
                b'm' => Contact,
                b'l' => ContentLength,
                b'c' => ContentType,
                b'e' => ContentEncoding,
                b'k' => Supported,
                b's' => Subject,
                b'o' => Event,
                b'u' => AllowEvents,
                b'r' => ReferTo,
                b'b' => ReferredBy,
                b'x' => SessionExpires,
                b'a' => AcceptContact,
                b'j' => RejectContact,
                b'd' => RequestDisposition,
                b'y' => Identity,
                _ => Other,
            };
        }
        // One candidate by (length, first letter), then one case-insensitive compare: this
        // runs for every header line of every message.
        let Some(&first) = name.first() else {
            return Other;
        };
        let candidate = match (name.len(), first.to_ascii_lowercase()) {
            (2, b't') => To,
            (3, b'v') => Via,
            (4, b'f') => From,
            (4, b'c') => CSeq,
            (4, b'p') => Path,
            (4, b'd') => Date,
            (5, b'r') => Route,
            (5, b'a') => Allow,
            (5, b'e') => Event,
            (6, b'a') => Accept,
            (6, b's') => Server,
            (7, b'c') => {
                // Contact and Call-ID share length and first letter.
                if name.get(1).is_some_and(|b| b.eq_ignore_ascii_case(&b'o')) {
                    Contact
                } else {
                    CallId
                }
            }
            (7, b'e') => Expires,
            (7, b'r') => Require,
            (7, b's') => Subject,
            (8, b'r') => ReferTo,
            (8, b'i') => Identity,
            (9, b's') => Supported,
            (10, b'u') => UserAgent,
            (11, b'm') => MinExpires,
            (11, b'r') => ReferredBy,
            (11, b'u') => Unsupported,
            (12, b'm') => MaxForwards,
            (12, b'r') => RecordRoute,
            (12, b'c') => ContentType,
            (12, b'a') => AllowEvents,
            (13, b'p') => ProxyRequire,
            (13, b'a') => Authorization,
            (14, b'c') => ContentLength,
            (14, b'a') => AcceptContact,
            (14, b'r') => RejectContact,
            (15, b's') => SessionExpires,
            (16, b'c') => ContentEncoding,
            (16, b'w') => WwwAuthenticate,
            (18, b'p') => ProxyAuthenticate,
            (19, b'r') => RequestDisposition,
            (19, b'p') => ProxyAuthorization,
            _ => return Other,
        };
        if candidate.as_str().as_bytes().eq_ignore_ascii_case(name) {
            return candidate;
        }
        Other
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderName::{self, *};

    #[test]
    fn every_long_form_classifies_to_itself() {
        let all = [
            Via,
            From,
            To,
            CallId,
            CSeq,
            MaxForwards,
            Contact,
            Route,
            RecordRoute,
            Path,
            ContentLength,
            ContentType,
            ContentEncoding,
            Expires,
            MinExpires,
            Require,
            ProxyRequire,
            Supported,
            Unsupported,
            Allow,
            Accept,
            Subject,
            Event,
            AllowEvents,
            ReferTo,
            ReferredBy,
            SessionExpires,
            AcceptContact,
            RejectContact,
            RequestDisposition,
            Identity,
            Authorization,
            ProxyAuthorization,
            WwwAuthenticate,
            ProxyAuthenticate,
            UserAgent,
            Server,
            Date,
        ];
        for n in all {
            assert_eq!(
                HeaderName::classify(n.as_str().as_bytes()),
                n,
                "{}",
                n.as_str()
            );
            let lower = n.as_str().to_ascii_lowercase();
            assert_eq!(HeaderName::classify(lower.as_bytes()), n);
        }
    }

    #[test]
    fn compact_forms() {
        for (c, n) in [
            ("i", CallId),
            ("m", Contact),
            ("e", ContentEncoding),
            ("l", ContentLength),
            ("f", From),
            ("t", To),
            ("v", Via),
            ("s", Subject),
            ("k", Supported),
            ("c", ContentType),
            ("o", Event),
            ("u", AllowEvents),
            ("r", ReferTo),
            ("b", ReferredBy),
            ("x", SessionExpires),
            ("a", AcceptContact),
            ("j", RejectContact),
            ("d", RequestDisposition),
            ("y", Identity),
        ] {
            assert_eq!(HeaderName::classify(c.as_bytes()), n);
            assert_eq!(HeaderName::classify(c.to_uppercase().as_bytes()), n);
        }
        assert_eq!(HeaderName::classify(b"z"), Other);
        assert_eq!(HeaderName::classify(b""), Other);
        assert_eq!(HeaderName::classify(b"Cxxxxxx"), Other);
        assert_eq!(HeaderName::classify(b"C%6Fntact"), Other);
        assert_eq!(HeaderName::classify(b"MaX-fOrWaRdS"), MaxForwards);
    }
}
