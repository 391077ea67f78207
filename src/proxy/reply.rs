//! Locally generated responses (RFC 3261 §8.2.6): status line, the request's Via, From,
//! To (with a tag), Call-ID and CSeq copied, then Server, extra fields, Content-Length 0.
//! Works on requests that failed validation too (fields are copied as written), so a 400
//! can always be formed; never panics.

use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;

use super::types::Inbound;
use crate::sip::{HeaderName, Message};

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
    let mut out = String::with_capacity(256 + msg.head_str().len() / 2);
    // The reason phrase must not break the status line, whatever it came from.
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    let mut first_via = true;
    for f in msg.fields() {
        match f.name {
            HeaderName::Via => {
                out.push_str("Via: ");
                if first_via {
                    first_via = false;
                    write_top_via(&mut out, f.value, rx);
                } else {
                    out.push_str(f.value);
                }
                out.push_str("\r\n");
            }
            HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                let _ = write!(out, "{}: {}\r\n", f.name.as_str(), f.value);
            }
            HeaderName::To => {
                let _ = write!(out, "To: {}", f.value);
                let has_tag = msg.to().ok().and_then(|t| t.tag()).is_some();
                if !has_tag && code > 100 && !to_tag.is_empty() {
                    let _ = write!(out, ";tag={to_tag}");
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    let _ = write!(out, "Server: {server}\r\n");
    out.push_str(extra);
    out.push_str("Content-Length: 0\r\n\r\n");
    Bytes::from(out)
}

/// The top Via, with `received` (and `rport` when asked for) as the server transport adds
/// them (RFC 3261 §18.2.1, RFC 3581 §4), so the client sees where its request came from.
fn write_top_via(out: &mut String, value: &str, rx: &Inbound) {
    // Only the first comma-separated value gets the parameters.
    let (first, rest) = match crate::sip::CommaSplit::new(value).next() {
        Some(Ok(f)) if f.len() < value.len() => {
            let cut = value.find(f).map(|i| i + f.len()).unwrap_or(value.len());
            (&value[..cut], &value[cut..])
        }
        _ => (value, ""),
    };
    let Ok(via) = crate::sip::Via::parse(first.trim()) else {
        out.push_str(value);
        return;
    };
    let src: SocketAddr = rx.source;
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
        let _ = write!(out, ";received={}", src.ip());
    }
    if rport {
        let _ = write!(out, ";rport={}", src.port());
    }
    out.push_str(rest);
}
