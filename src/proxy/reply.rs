//! Locally generated responses (RFC 3261 §8.2.6): status line, the request's Via, From,
//! To (with a tag), Call-ID and CSeq copied, then Server, extra fields, Content-Length 0.
//! Works on requests that failed validation too (fields are copied as written), so a 400
//! can always be formed; never panics.

use bytes::Bytes;

use super::text;
use super::types::Inbound;
use crate::sip::{HeaderName, Message, Via};

/// Build a response to `msg`. `to_tag` is added to To when it has none (not on 100).
/// `extra` is zero or more complete header lines, each ending in CRLF.
pub fn build_reply(
    msg: &Message,
    rx: &Inbound,
    code: u16,
    reason: &str,
    to_tag: &str,
    server: &str,
    extra: &str,
) -> Bytes {
    let has_tag = msg.to().ok().and_then(|t| t.tag()).is_some();
    build_reply_via(msg, rx, None, has_tag, code, reason, to_tag, server, extra)
}

/// [`build_reply`] for a request whose top Via is already parsed (`top`: the first value
/// of its first Via line, as [`Message::validated`] keeps it), which is then not parsed
/// again, and whose To is known to have a tag or not (`to_has_tag`). Written without the
/// formatter.
#[allow(clippy::too_many_arguments)]
pub(super) fn build_reply_via(
    msg: &Message,
    rx: &Inbound,
    top: Option<&Via<'_>>,
    to_has_tag: bool,
    code: u16,
    reason: &str,
    to_tag: &str,
    server: &str,
    extra: &str,
) -> Bytes {
    let mut out = String::with_capacity(256 + msg.head_str().len() / 2);
    out.push_str("SIP/2.0 ");
    text::push_dec(&mut out, u64::from(code));
    out.push(' ');
    // The reason phrase must not break the status line, whatever it came from.
    out.extend(reason.chars().map(|c| if c.is_control() { ' ' } else { c }));
    out.push_str("\r\n");
    let mut first_via = true;
    for f in msg.fields() {
        match f.name {
            HeaderName::Via => {
                out.push_str("Via: ");
                if first_via {
                    first_via = false;
                    write_top_via(&mut out, f.value, rx, top);
                } else {
                    out.push_str(f.value);
                }
                out.push_str("\r\n");
            }
            HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                out.push_str(f.name.as_str());
                out.push_str(": ");
                out.push_str(f.value);
                out.push_str("\r\n");
            }
            HeaderName::To => {
                out.push_str("To: ");
                out.push_str(f.value);
                if !to_has_tag && code > 100 && !to_tag.is_empty() {
                    out.push_str(";tag=");
                    out.push_str(to_tag);
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    out.push_str("Server: ");
    out.push_str(server);
    out.push_str("\r\n");
    out.push_str(extra);
    out.push_str("Content-Length: 0\r\n\r\n");
    Bytes::from(out)
}

/// The top Via, with `received` (and `rport` when asked for) as the server transport adds
/// them (RFC 3261 §18.2.1, RFC 3581 §4), so the client sees where its request came from.
/// `top`: that value already parsed, if it was.
fn write_top_via(out: &mut String, value: &str, rx: &Inbound, top: Option<&Via<'_>>) {
    // Only the first comma-separated value gets the parameters.
    let (first, rest) = match crate::sip::CommaSplit::new(value).next() {
        Some(Ok(f)) if f.len() < value.len() => {
            let cut = value.find(f).map(|i| i + f.len()).unwrap_or(value.len());
            (&value[..cut], &value[cut..])
        }
        _ => (value, ""),
    };
    let parsed;
    let via = match top {
        Some(v) => v,
        None => match Via::parse(first.trim()) {
            Ok(v) => {
                parsed = v;
                &parsed
            }
            Err(_) => {
                out.push_str(value);
                return;
            }
        },
    };
    let src = rx.source;
    let received = via.host.ip() != Some(src.ip());
    let rport = via.rport().is_some();
    if !received && !rport {
        out.push_str(value);
        return;
    }
    // Rebuild the parameters, replacing received / rport.
    let trimmed = first.trim_end();
    let head = trimmed.strip_suffix(via.params.as_str()).unwrap_or(trimmed);
    out.push_str(head.trim_end());
    for (n, v) in via.params.iter() {
        if (n.eq_ignore_ascii_case("received") && received)
            || (n.eq_ignore_ascii_case("rport") && rport)
        {
            continue;
        }
        out.push(';');
        out.push_str(n);
        if let Some(v) = v {
            out.push('=');
            out.push_str(v);
        }
    }
    if received {
        out.push_str(";received=");
        text::push_ip(out, src.ip());
    }
    if rport {
        out.push_str(";rport=");
        text::push_dec(out, u64::from(src.port()));
    }
    out.push_str(rest);
}

/// A 400 for a request on a stream whose head could not be indexed (a framing error, or a
/// [`crate::sip::Frame::Malformed`] message), from its raw lines: the start line must be a
/// request other than ACK, and Via, From, To, Call-ID and CSeq must be there (long or
/// compact names), copied with control bytes turned into `?`. `None` when the message is not
/// identifiable enough to answer.
pub fn unparsable_reply(raw: &[u8], reason: &str, server: &str) -> Option<Bytes> {
    let head_end = memchr::memmem::find(raw, b"\r\n\r\n").unwrap_or(raw.len());
    let mut lines = raw[..head_end].split(|&b| b == b'\n');
    let start = lines.next()?;
    let start = start.strip_suffix(b"\r").unwrap_or(start);
    let mut parts = start.split(|&b| b == b' ');
    let method = parts.next()?;
    let (_, version) = (parts.next()?, parts.next()?);
    if method.is_empty()
        || !method
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(b))
        || method == b"ACK"
        || !version.eq_ignore_ascii_case(b"SIP/2.0")
    {
        return None;
    }
    let mut via = Vec::new();
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii().to_ascii_lowercase();
        let value: Vec<u8> = line[colon + 1..]
            .trim_ascii()
            .iter()
            .map(|&b| {
                if b < 0x20 && b != b'\t' || b == 0x7f {
                    b'?'
                } else {
                    b
                }
            })
            .collect();
        match name.as_slice() {
            b"via" | b"v" => via.push(value),
            b"from" | b"f" => from = from.or(Some(value)),
            b"to" | b"t" => to = to.or(Some(value)),
            b"call-id" | b"i" => call_id = call_id.or(Some(value)),
            b"cseq" => cseq = cseq.or(Some(value)),
            _ => {}
        }
    }
    let (Some(from), Some(mut to), Some(call_id), Some(cseq)) = (from, to, call_id, cseq) else {
        return None;
    };
    if via.is_empty() {
        return None;
    }
    if !to.windows(5).any(|w| w.eq_ignore_ascii_case(b";tag=")) {
        to.extend_from_slice(b";tag=sx-bad-request");
    }
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = format!("SIP/2.0 400 {reason}\r\n").into_bytes();
    for v in &via {
        out.extend_from_slice(b"Via: ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    for (n, v) in [
        ("From", &from),
        ("To", &to),
        ("Call-ID", &call_id),
        ("CSeq", &cseq),
    ] {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Server: {server}\r\nContent-Length: 0\r\n\r\n").as_bytes());
    Some(Bytes::from(out))
}
