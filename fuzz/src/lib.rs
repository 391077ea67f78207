//! Shared drivers of the siprox fuzz targets: read every accessor of a message, URI or edit
//! result so that the fuzzer reaches all lazy parsing code. Must never panic on any input;
//! the only panics allowed are the `assert!`s that state properties of valid messages.
#![forbid(unsafe_code)]

pub mod config;
pub mod rpc;
pub mod script;

use bytes::Bytes;
use siprox::sip::{unescape, Editor, HeaderName, Message, NameAddr, Uri};

/// Read a URI through every accessor.
pub fn touch_uri(u: &Uri<'_>) {
    let _ = u.scheme();
    match u {
        Uri::Sip(s) => {
            let _ = s.transport();
            let _ = s.is_loose_router();
            let _ = s.host.to_string();
            let _ = s.host.ip();
            let _ = s.port;
            if let Some(user) = s.user {
                let _ = unescape(user);
            }
            if let Some(p) = s.password {
                let _ = unescape(p);
            }
            let _ = s.params.iter().count();
            let _ = s.params.validate();
            let _ = s.params.get("maddr");
        }
        Uri::Tel(t) => {
            let _ = t.number;
            let _ = t.params.iter().count();
        }
        Uri::Other { scheme, rest } => {
            let _ = (scheme.len(), rest.len());
        }
    }
}

fn touch_name_addr(n: &NameAddr<'_>) {
    let _ = n.display;
    let _ = n.tag();
    let _ = n.expires();
    let _ = n.q();
    let _ = n.params.iter().count();
    let _ = n.validate();
    if let Ok(u) = n.uri() {
        touch_uri(&u);
    }
}

/// Read a message through every accessor; the results are ignored, only panics matter.
pub fn touch_message(m: &Message) {
    let _ = m.validate();
    let _ = (
        m.is_request(),
        m.is_response(),
        m.start_line(),
        m.head_str().len(),
    );
    let _ = (
        m.method(),
        m.method_kind(),
        m.request_uri_str(),
        m.status(),
        m.reason(),
    );
    if let Ok(u) = m.request_uri() {
        touch_uri(&u);
    }
    let _ = (
        m.content_length(),
        m.header_count(),
        m.body().len(),
        m.body_bytes().len(),
    );
    for f in m.fields() {
        let _ = f.unfolded();
        let _ = m.header_values_by_name(f.name_str).count();
    }
    for v in m.vias().flatten() {
        let _ = (v.branch(), v.received(), v.rport(), v.has_rfc3261_branch());
        let _ = (
            v.host.to_string(),
            v.port,
            v.transport,
            v.params.iter().count(),
        );
    }
    let _ = m.top_via();
    for n in [m.from(), m.to()].into_iter().flatten() {
        touch_name_addr(&n);
    }
    let _ = m.call_id();
    let _ = m.cseq();
    let _ = m.max_forwards();
    let _ = m.expires();
    if let Ok(c) = m.contacts() {
        for n in c.as_slice() {
            touch_name_addr(n);
        }
    }
    for list in [
        m.routes().collect::<Vec<_>>(),
        m.record_routes().collect(),
        m.paths().collect(),
    ] {
        for n in list.into_iter().flatten() {
            touch_name_addr(&n);
        }
    }
    let _ = m.content_type();
    let _ = m.require().count();
    let _ = m.proxy_require().count();
    let _ = m.supported().count();
    for name in [
        HeaderName::Via,
        HeaderName::Contact,
        HeaderName::Allow,
        HeaderName::Route,
    ] {
        let _ = m.list_values(name).count();
        let _ = m.single(name);
        let _ = m.required(name);
        let _ = m.header(name);
    }
    let _ = format!("{m:?}");
}

/// Apply the edits of a forwarding proxy, serialise, and re-parse the result.
///
/// Property: when the message validates, the edited message parses, validates and shows
/// the edits.
pub fn edit_message(m: &Message) {
    // An unedited message serialises byte-for-byte.
    assert_eq!(Editor::new(m).finish(), m.as_bytes());

    let valid = m.validate().is_ok();
    let mut e = Editor::new(m);
    e.prepend_via("SIP/2.0/TLS fuzz.example.com;branch=z9hG4bKfuzz");
    e.prepend_record_route("<sip:fuzz.example.com;lr>");
    let removed = e.remove_first_route();
    let mf = e.decrement_max_forwards();
    e.set_request_uri("sip:fuzz@192.0.2.1");
    e.ensure_content_length();
    let _ = e.is_unchanged();
    let out = e.finish();
    let reparsed = Message::parse_datagram(out.clone(), m.limits());
    if valid && mf.is_ok() && removed.is_ok() && out.len() <= m.limits().max_message_size {
        let f = match reparsed {
            Ok(f) => f,
            Err(err) => panic!("edited valid message does not parse: {err}"),
        };
        if let Err(err) = f.validate() {
            panic!("edited valid message does not validate: {err}");
        }
        let top = f.top_via().ok();
        assert_eq!(top.and_then(|v| v.branch()), Some("z9hG4bKfuzz"));
        if m.is_request() {
            assert_eq!(f.request_uri_str(), Some("sip:fuzz@192.0.2.1"));
        }
        assert_eq!(f.max_forwards().ok().flatten(), mf.ok());
        assert_eq!(f.body(), m.body());
    } else if let Ok(f) = reparsed {
        touch_message(&f);
    }

    // The remaining edits, for panics only.
    let mut e = Editor::new(m);
    let _ = e.remove_first_via();
    let _ = e.remove_headers(HeaderName::Route);
    let _ = e.remove_first_route();
    let _ = e.remove_headers_named("x-unknown");
    let _ = e.remove_headers_named("v");
    let _ = e.remove_values(HeaderName::Route, |i| i % 2 == 1);
    let _ = e.set_top_via_params(Some("192.0.2.7"), Some(40000));
    e.append_header("X-Fuzz", "1");
    e.append_raw("X-Raw: 2\r\n");
    let _ = e.finish();
}

/// Parse one datagram and run every accessor and the edits.
pub fn datagram(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(m) = Message::parse_datagram(bytes, &siprox::sip::Limits::default()) {
        touch_message(&m);
        edit_message(&m);
    }
}

/// Feed a stream to a [`StreamFramer`]: the first byte says how many chunk-size bytes
/// follow (at most 16, cycled), the rest is the stream, cut into chunks of those sizes
/// (a size byte of 0 means 1). Every framed message is read through its accessors, and
/// the framed messages are checked to be consecutive slices of the stream.
pub fn framed(data: &[u8]) {
    use bytes::BytesMut;
    use siprox::sip::{Frame, Limits, StreamFramer};

    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 17).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    let mut framer = StreamFramer::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut consumed = 0;
    let mut i = 0;
    while fed < stream.len() {
        let size = sizes
            .get(i % sizes.len().max(1))
            .map_or(stream.len(), |&s| usize::from(s.max(1)));
        i += 1;
        let end = (fed + size).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            let before = buf.len();
            match framer.next_frame(&mut buf) {
                Ok(Some(frame)) => {
                    let taken = before - buf.len();
                    if let Frame::Message(m) = &frame {
                        // The framed message is exactly the bytes taken off the buffer.
                        assert_eq!(&m.as_bytes()[..], &stream[consumed..consumed + taken]);
                        touch_message(m);
                        edit_message(m);
                    }
                    consumed += taken;
                }
                Ok(None) => break,
                // The stream has lost its framing: the connection closes.
                Err(_) => return,
            }
            let _ = framer.is_mid_message(&buf);
        }
    }
}
