//! The lean engine's first, simple message code (as it was before the allocation-free
//! rewrite in mod.rs), kept as the oracle of `loadgen --self-test`: the new code must
//! write the same bytes and read the same fields as this over many generated messages.

use std::io::Write as _;
use std::net::SocketAddr;

use super::{to_tag, trim, via_target};

/// The header lines of a message (after the start line): (name, value) pairs.
pub fn headers(m: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let head_end = find(m, b"\r\n\r\n").unwrap_or(m.len());
    let head = &m[..head_end];
    let first = find(head, b"\r\n").map_or(head.len(), |i| i + 2);
    head[first.min(head.len())..]
        .split(|b| *b == b'\n')
        .filter_map(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            let colon = l.iter().position(|b| *b == b':')?;
            Some((trim(&l[..colon]), trim(&l[colon + 1..])))
        })
}

pub fn find(h: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(h, needle)
}

pub fn is(name: &[u8], long: &str, short: &str) -> bool {
    name.eq_ignore_ascii_case(long.as_bytes()) || name.eq_ignore_ascii_case(short.as_bytes())
}

/// One frame at the start of a stream buffer: (head bytes, body bytes), or `None`.
pub fn frame(b: &[u8]) -> Option<(usize, usize)> {
    if b.starts_with(b"\r\n") {
        return Some((0, 2));
    }
    let end = find(b, b"\r\n\r\n")? + 4;
    let mut len = 0usize;
    for (k, v) in headers(&b[..end]) {
        if is(k, "content-length", "l") {
            len = std::str::from_utf8(v).ok()?.trim().parse().ok()?;
        }
    }
    if b.len() < end + len {
        return None;
    }
    Some((end, len))
}

pub fn angle(v: &[u8]) -> &[u8] {
    match (
        v.iter().position(|b| *b == b'<'),
        v.iter().rposition(|b| *b == b'>'),
    ) {
        (Some(a), Some(b)) if a < b => &v[a..=b],
        _ => v.split(|b| *b == b';').next().unwrap_or(v),
    }
}

pub fn split_commas(v: &[u8]) -> Vec<&[u8]> {
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    let mut out = Vec::new();
    for (i, b) in v.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'<' if !quoted => depth += 1,
            b'>' if !quoted => depth -= 1,
            b',' if !quoted && depth == 0 => {
                out.push(trim(&v[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(trim(&v[start..]));
    out
}

/// The old request writer (`Writer::request` with `core::fmt`).
#[allow(clippy::too_many_arguments)]
pub fn request(
    out: &mut Vec<u8>,
    via: &str,
    conn_no: usize,
    branch: u64,
    tok: &str,
    contact: &str,
    method: &str,
    ruri: &[u8],
    n: u64,
    cseq: u32,
    to_tag: Option<&[u8]>,
    routes: &[&[u8]],
    body: &[u8],
) {
    let _ = write!(out, "{method} ");
    out.extend_from_slice(ruri);
    let _ = write!(
        out,
        " SIP/2.0\r\n{via}-{conn_no:x}-{branch:x};rport\r\nMax-Forwards: 70\r\n"
    );
    for r in routes {
        out.extend_from_slice(b"Route: ");
        out.extend_from_slice(r);
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(
        out,
        "From: \"Alice\" <sip:alice@siprox.test>;tag=f{n:x}-{tok}\r\nTo: <sip:bob@siprox.test>"
    );
    if let Some(tag) = to_tag {
        out.extend_from_slice(b";tag=");
        out.extend_from_slice(tag);
    }
    let _ = write!(
        out,
        "\r\nCall-ID: {n:x}.{conn_no:x}.{tok}@siprox.test\r\nCSeq: {cseq} {method}\r\n"
    );
    out.extend_from_slice(contact.as_bytes());
    if !body.is_empty() {
        out.extend_from_slice(b"Content-Type: application/sdp\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    out.extend_from_slice(body);
}

/// What the old `on_response` read of a response: status code, Call-ID, CSeq method, To
/// tag, the Contact target, the route set (Record-Route reversed, each `angle`d).
#[derive(Debug, PartialEq, Eq)]
pub struct Read {
    pub code: Option<u16>,
    pub call_id: Option<Vec<u8>>,
    pub method: Vec<u8>,
    pub tag: Option<Vec<u8>>,
    pub target: Option<Vec<u8>>,
    pub routes: Vec<Vec<u8>>,
}

pub fn read(m: &[u8]) -> Option<Read> {
    if !m.starts_with(b"SIP/2.0 ") || m.len() < 12 {
        return None;
    }
    let code = std::str::from_utf8(&m[8..11])
        .ok()
        .and_then(|c| c.parse::<u16>().ok());
    let (mut call_id, mut cseq, mut to, mut contact) = (None, None, None, None);
    let mut rr: Vec<&[u8]> = Vec::new();
    for (k, v) in headers(m) {
        if is(k, "call-id", "i") {
            call_id = Some(v);
        } else if is(k, "cseq", "cseq") {
            cseq = Some(v);
        } else if is(k, "to", "t") {
            to = Some(v);
        } else if is(k, "contact", "m") {
            contact.get_or_insert(v);
        } else if is(k, "record-route", "record-route") {
            rr.extend(split_commas(v));
        }
    }
    let method = cseq
        .and_then(|c| c.split(|b| *b == b' ').rfind(|p| !p.is_empty()))
        .unwrap_or(b"");
    let tag = to.and_then(|v| {
        let at = find(v, b";tag=")? + 5;
        let rest = &v[at..];
        let end = rest
            .iter()
            .position(|b| *b == b';' || *b == b' ' || *b == b'>')
            .unwrap_or(rest.len());
        Some(&rest[..end])
    });
    let target = contact.map(|v| {
        let t = angle(split_commas(v)[0]);
        t.strip_prefix(b"<")
            .and_then(|x| x.strip_suffix(b">"))
            .unwrap_or(t)
    });
    Some(Read {
        code,
        call_id: call_id.map(<[u8]>::to_vec),
        method: method.to_vec(),
        tag: tag.map(<[u8]>::to_vec),
        target: target.map(<[u8]>::to_vec),
        routes: rr.iter().rev().map(|r| angle(r).to_vec()).collect(),
    })
}

/// The old UAS answer: the datagrams (bytes, destination) it sent for one request.
pub fn answer(req: &[u8], from: SocketAddr, contact: &str) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut sent = Vec::new();
    let Some(sp) = req.iter().position(|b| *b == b' ') else {
        return sent;
    };
    let method = &req[..sp];
    if method == b"ACK" || method == b"SIP/2.0" {
        return sent;
    }
    let invite = method == b"INVITE";
    let mut echo: Vec<(&[u8], &[u8], bool)> = Vec::with_capacity(12);
    let (mut call_id, mut to_line, mut to_addr): (&[u8], &[u8], _) = (b"", b"", None);
    for (k, v) in headers(req) {
        if is(k, "via", "v") {
            if to_addr.is_none() {
                to_addr = Some(via_target(split_commas(v)[0], from));
            }
            echo.push((b"Via", v, false));
        } else if is(k, "from", "f") {
            echo.push((b"From", v, false));
        } else if is(k, "call-id", "i") {
            call_id = v;
            echo.push((b"Call-ID", v, false));
        } else if is(k, "cseq", "cseq") {
            echo.push((b"CSeq", v, false));
        } else if is(k, "to", "t") {
            to_line = v;
        } else if invite && is(k, "record-route", "record-route") {
            echo.push((b"Record-Route", v, true));
        }
    }
    let tag = find(to_line, b";tag=").is_none().then(|| to_tag(call_id));
    let to = to_addr.unwrap_or(from);
    let codes: &[(u16, &str)] = if invite {
        &[(100, "Trying"), (180, "Ringing"), (200, "OK")]
    } else {
        &[(200, "OK")]
    };
    for (code, reason) in codes {
        let mut out = Vec::new();
        let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
        for (name, v, dialog_only) in &echo {
            if !dialog_only || *code > 100 {
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"To: ");
        out.extend_from_slice(to_line);
        if let (Some(t), true) = (tag, *code > 100) {
            let _ = write!(out, ";tag=uas{t:x}");
        }
        out.extend_from_slice(b"\r\n");
        if *code > 100 {
            out.extend_from_slice(contact.as_bytes());
        }
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        sent.push((out, to));
    }
    sent
}
