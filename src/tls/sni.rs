//! The server_name extension of a ClientHello (RFC 6066 §3), parsed by hand because OpenSSL
//! hands the raw extension to the ClientHello callback before it has parsed it. Input comes
//! straight from the network: this must never panic, index out of bounds or allocate more
//! than the input's size.

/// Why an extension body is not a valid server_name list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    #[error("server_name extension truncated")]
    Truncated,
    #[error("server_name list length does not match the extension")]
    BadLength,
    #[error("server_name list is empty")]
    Empty,
    #[error("host_name is empty, too long, or not printable ASCII")]
    BadHostName,
    #[error("more than one host_name in the list")]
    Duplicate,
}

/// `name_type` of a DNS host name.
const HOST_NAME: u8 = 0;

fn u16_at(b: &[u8], i: usize) -> Option<usize> {
    let hi = *b.get(i)?;
    let lo = *b.get(i + 1)?;
    Some(usize::from(hi) << 8 | usize::from(lo))
}

/// The host name a client asked for, from the extension body
/// (`ServerNameList: u16 length, { u8 type, u16 length, bytes }*`). `Ok(None)` when the list
/// names no host (only unknown name types, which RFC 6066 says to ignore).
pub fn parse_server_name(ext: &[u8]) -> Result<Option<&str>, SniError> {
    let list_len = u16_at(ext, 0).ok_or(SniError::Truncated)?;
    if list_len + 2 != ext.len() {
        return Err(SniError::BadLength);
    }
    if list_len == 0 {
        return Err(SniError::Empty);
    }
    let mut i = 2;
    let mut found: Option<&str> = None;
    while i < ext.len() {
        let ty = *ext.get(i).ok_or(SniError::Truncated)?;
        let len = u16_at(ext, i + 1).ok_or(SniError::Truncated)?;
        let start = i + 3;
        let body = ext.get(start..start + len).ok_or(SniError::Truncated)?;
        i = start + len;
        if ty != HOST_NAME {
            continue;
        }
        if found.is_some() {
            return Err(SniError::Duplicate);
        }
        // A DNS name: printable ASCII, at most 255 bytes (RFC 6066 forbids a trailing dot but
        // clients send one; the matcher normalises it).
        if body.is_empty() || body.len() > 255 || !body.iter().all(|b| b.is_ascii_graphic()) {
            return Err(SniError::BadHostName);
        }
        found = std::str::from_utf8(body).ok();
        if found.is_none() {
            return Err(SniError::BadHostName);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (t, n) in entries {
            list.push(*t);
            list.extend_from_slice(&(n.len() as u16).to_be_bytes());
            list.extend_from_slice(n);
        }
        let mut v = (list.len() as u16).to_be_bytes().to_vec();
        v.extend(list);
        v
    }

    #[test]
    fn well_formed_lists() {
        assert_eq!(
            parse_server_name(&ext(&[(0, b"sip.example.com")])),
            Ok(Some("sip.example.com"))
        );
        assert_eq!(
            parse_server_name(&ext(&[(7, b"x"), (0, b"a.example")])),
            Ok(Some("a.example"))
        );
        assert_eq!(parse_server_name(&ext(&[(7, b"x")])), Ok(None));
    }

    #[test]
    fn malformed_lists() {
        assert_eq!(parse_server_name(&[]), Err(SniError::Truncated));
        assert_eq!(parse_server_name(&[0]), Err(SniError::Truncated));
        assert_eq!(parse_server_name(&[0, 0]), Err(SniError::Empty));
        assert_eq!(parse_server_name(&[0, 5, 0, 0]), Err(SniError::BadLength));
        assert_eq!(
            parse_server_name(&[0, 4, 0, 0, 9, b'a']),
            Err(SniError::Truncated)
        );
        assert_eq!(
            parse_server_name(&ext(&[(0, b"a"), (0, b"b")])),
            Err(SniError::Duplicate)
        );
        assert_eq!(
            parse_server_name(&ext(&[(0, b"")])),
            Err(SniError::BadHostName)
        );
        assert_eq!(
            parse_server_name(&ext(&[(0, b"a b")])),
            Err(SniError::BadHostName)
        );
        assert_eq!(
            parse_server_name(&ext(&[(0, "é".as_bytes())])),
            Err(SniError::BadHostName)
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_server_name(&b);
        }

        #[test]
        fn round_trips_host_names(name in "[a-z0-9][a-z0-9.-]{0,60}") {
            let e = ext(&[(0, name.as_bytes())]);
            prop_assert_eq!(parse_server_name(&e), Ok(Some(name.as_str())));
        }

        #[test]
        fn never_panics_on_mutated_lists(name in "[a-z.]{1,40}", flip in 0usize..64, byte in any::<u8>(), cut in 0usize..64) {
            let mut e = ext(&[(0, name.as_bytes()), (3, b"zz")]);
            let n = e.len();
            e[flip % n] = byte;
            e.truncate(n - (cut % n));
            let _ = parse_server_name(&e);
        }
    }
}
