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
        // One candidate by (length, first letter), then one case-insensitive compare of the
        // whole name in a few word loads: this runs for every header line of every message.
        let (&first, _) = match name.split_first() {
            Some(f) => f,
            None => return Other,
        };
        let candidate = match (name.len(), first | 0x20) {
            (1, c) => return compact(c),
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
            // Contact and Call-ID share length and first letter.
            (7, b'c') if name[1] | 0x20 == b'o' => Contact,
            (7, b'c') => CallId,
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
        if eq_ignore_case(name, candidate.as_str().as_bytes()) {
            candidate
        } else {
            Other
        }
    }
}

/// The compact form whose letter, folded to lower case, is `c` (RFC 3261 §7.3.3 and later).
#[inline]
fn compact(c: u8) -> HeaderName {
    use HeaderName::*;
    match c {
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
    }
}

/// `name.eq_ignore_ascii_case(known)` for a `known` name (2 to 24 bytes of letters and
/// `-`, as [`HeaderName::as_str`] spells it), compared a word at a time: the 0x20 bit is
/// forced on under each letter of `known` in both words (any case matches), a `-` matches
/// only itself. Overlapping loads cover lengths that are not a multiple of the word.
#[inline]
fn eq_ignore_case(name: &[u8], known: &[u8]) -> bool {
    /// The bits to force on in a word before comparing: 0x20 under each letter of `known`
    /// (bit 0x40 set: letters), nothing under `-` (0x2d).
    #[inline]
    fn fold(w: u64) -> u64 {
        (w & 0x4040_4040_4040_4040) >> 1
    }
    #[inline]
    fn word<const N: usize>(b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        if let Some(s) = b.get(at..at + N) {
            a[..N].copy_from_slice(s);
        }
        u64::from_le_bytes(a)
    }
    #[inline]
    fn same<const N: usize>(name: &[u8], known: &[u8], at: usize) -> bool {
        let k = word::<N>(known, at);
        let f = fold(k);
        word::<N>(name, at) | f == k | f
    }
    let n = name.len();
    if n != known.len() {
        return false;
    }
    match n {
        0 | 1 => name.eq_ignore_ascii_case(known),
        2..=3 => same::<2>(name, known, 0) && same::<2>(name, known, n - 2),
        4..=7 => same::<4>(name, known, 0) && same::<4>(name, known, n - 4),
        8..=16 => same::<8>(name, known, 0) && same::<8>(name, known, n - 8),
        17..=24 => {
            same::<8>(name, known, 0) && same::<8>(name, known, 8) && same::<8>(name, known, n - 8)
        }
        _ => name.eq_ignore_ascii_case(known),
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderName::{self, *};

    /// What [`HeaderName::classify`] means, without its table or its word compare: a
    /// one-letter name is a compact form, any other is a long form spelled in any case,
    /// found by trying every name in turn.
    fn old_classify(name: &[u8]) -> HeaderName {
        if let [c] = name {
            return super::compact(c.to_ascii_lowercase());
        }
        ALL.iter()
            .copied()
            .find(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name))
            .unwrap_or(Other)
    }

    const ALL: [HeaderName; 38] = [
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

    /// Every case variant of every long form (all of them up to 12 bytes, one bit pattern
    /// in 97 beyond), every compact form, and every name with one byte replaced by any of
    /// the 256: the word compare answers as the byte-wise one did.
    #[test]
    fn classify_agrees_with_the_old_classifier() {
        let mut names: Vec<Vec<u8>> = ALL.iter().map(|n| n.as_str().as_bytes().to_vec()).collect();
        names.extend((b'a'..=b'z').map(|c| vec![c]));
        let mut checked = 0u64;
        for base in &names {
            let letters: Vec<usize> = (0..base.len())
                .filter(|&i| base[i].is_ascii_alphabetic())
                .collect();
            let variants = 1u64 << letters.len();
            let step = if letters.len() <= 12 { 1 } else { 97 };
            let mut bits = 0;
            while bits < variants {
                let mut v = base.clone();
                for (k, &i) in letters.iter().enumerate() {
                    v[i] = if bits >> k & 1 == 1 {
                        v[i].to_ascii_uppercase()
                    } else {
                        v[i].to_ascii_lowercase()
                    };
                }
                assert_eq!(HeaderName::classify(&v), old_classify(&v), "{v:?}");
                checked += 1;
                bits += step;
            }
            for i in 0..base.len() {
                for b in 0..=255u8 {
                    let mut v = base.clone();
                    v[i] = b;
                    assert_eq!(HeaderName::classify(&v), old_classify(&v), "{v:?}");
                    let mut up = v.to_ascii_uppercase();
                    up[i] = b;
                    assert_eq!(HeaderName::classify(&up), old_classify(&up), "{up:?}");
                    checked += 2;
                }
            }
            // One byte more or less.
            for cut in [
                &base[..base.len() - 1],
                &[base.as_slice(), b"s"].concat()[..],
            ] {
                assert_eq!(HeaderName::classify(cut), old_classify(cut), "{cut:?}");
            }
        }
        assert!(checked > 100_000, "{checked}");
        for v in [
            &b""[..],
            b"\r",
            b"-",
            b"Max\rForwards",
            b"Max\x0dForwards",
            b"Call\x0dID",
        ] {
            assert_eq!(HeaderName::classify(v), old_classify(v), "{v:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn classify_agrees_on_any_bytes(v in proptest::collection::vec(proptest::num::u8::ANY, 0..24)) {
            proptest::prop_assert_eq!(HeaderName::classify(&v), old_classify(&v));
        }

        #[test]
        fn classify_agrees_on_name_like_bytes(v in "[a-zA-Z\\-\\r@\\[`{]{1,20}") {
            proptest::prop_assert_eq!(HeaderName::classify(v.as_bytes()), old_classify(v.as_bytes()));
        }
    }

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
