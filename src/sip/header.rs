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
        // Candidates by length, then one case-insensitive compare: at most a few per length.
        let candidates: &[HeaderName] = match name.len() {
            2 => &[To],
            3 => &[Via],
            4 => &[From, CSeq, Path, Date],
            5 => &[Route, Allow, Event],
            6 => &[Accept, Server],
            7 => &[Contact, Call_ID_LEN7, Expires, Require, Subject],
            8 => &[ReferTo, Identity],
            9 => &[Supported],
            10 => &[UserAgent],
            11 => &[MinExpires, ReferredBy, Unsupported],
            12 => &[MaxForwards, RecordRoute, ContentType, AllowEvents],
            13 => &[ProxyRequire, Authorization],
            14 => &[ContentLength, AcceptContact, RejectContact],
            15 => &[SessionExpires],
            16 => &[ContentEncoding, WwwAuthenticate],
            18 => &[ProxyAuthenticate],
            19 => &[RequestDisposition, ProxyAuthorization],
            _ => &[],
        };
        for &c in candidates {
            if c.as_str().as_bytes().eq_ignore_ascii_case(name) {
                return c;
            }
        }
        Other
    }
}

// "Call-ID" is 7 bytes long; an alias keeps the table above readable.
#[allow(non_upper_case_globals)]
const Call_ID_LEN7: HeaderName = HeaderName::CallId;

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
        assert_eq!(HeaderName::classify(b"C%6Fntact"), Other);
        assert_eq!(HeaderName::classify(b"MaX-fOrWaRdS"), MaxForwards);
    }
}
