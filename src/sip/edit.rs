//! Editing a received message for forwarding (RFC 3261 §16.6): prepend Via, add
//! Record-Route, remove the top Route, rewrite the Request-URI, decrement Max-Forwards,
//! add or remove header fields. The output copies untouched bytes in one pass into one
//! buffer; a message without edits serialises byte-for-byte as received. Never panics.

use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};

use super::error::{ParseError, Where};
use super::header::HeaderName;
use super::message::Message;
use super::scan::{self, push_dec};

/// Replace `at..end` of the original with `text_start..text_end` of the editor's text buffer.
#[derive(Debug, Clone, Copy)]
struct Edit {
    at: u32,
    end: u32,
    text_start: u32,
    text_end: u32,
}

/// Edits held without an allocation up to this many (a forward makes five to seven).
const INLINE_EDITS: usize = 8;

const NO_EDIT: Edit = Edit {
    at: 0,
    end: 0,
    text_start: 0,
    text_end: 0,
};

/// The edits of one message: on the stack while few, in a Vec beyond.
#[derive(Debug)]
struct Edits {
    inline: [Edit; INLINE_EDITS],
    len: usize,
    /// All edits once there are more than [`INLINE_EDITS`].
    spilled: Vec<Edit>,
}

impl Edits {
    fn new() -> Edits {
        Edits {
            inline: [NO_EDIT; INLINE_EDITS],
            len: 0,
            spilled: Vec::new(),
        }
    }

    fn push(&mut self, e: Edit) {
        if self.spilled.is_empty() {
            if let Some(slot) = self.inline.get_mut(self.len) {
                *slot = e;
                self.len += 1;
                return;
            }
            self.spilled.reserve(2 * INLINE_EDITS);
            self.spilled.extend_from_slice(&self.inline[..self.len]);
        }
        self.spilled.push(e);
    }

    fn as_mut_slice(&mut self) -> &mut [Edit] {
        if self.spilled.is_empty() {
            &mut self.inline[..self.len]
        } else {
            &mut self.spilled
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Builds a new message from a received one plus a list of edits.
///
/// Edits refer to the original message, never to each other's output: removing the first
/// Route and then prepending a Via works whatever the order of the calls.
#[derive(Debug)]
pub struct Editor<'m> {
    msg: &'m Message,
    edits: Edits,
    /// All inserted text, so that n edits cost one growing allocation, not n.
    text: String,
}

impl<'m> Editor<'m> {
    pub fn new(msg: &'m Message) -> Self {
        // Nothing allocated yet: a response that only loses a Via writes no text at all.
        Editor {
            msg,
            edits: Edits::new(),
            text: String::new(),
        }
    }

    /// The message being edited.
    pub fn message(&self) -> &'m Message {
        self.msg
    }

    fn push(&mut self, at: usize, end: usize, f: impl FnOnce(&mut String)) {
        if self.text.capacity() == 0 {
            // Sized for a forward (Via, one or two Record-Routes, Max-Forwards, the sender's
            // Via parameters) so that it does not grow on the way.
            self.text.reserve(384);
        }
        let text_start = self.text.len();
        f(&mut self.text);
        self.push_edit(at, end, text_start);
    }

    /// Remove `at..end` of the original (no text: the text buffer is not touched).
    fn push_removal(&mut self, at: usize, end: usize) {
        self.push_edit(at, end, self.text.len());
    }

    fn push_edit(&mut self, at: usize, end: usize, text_start: usize) {
        self.edits.push(Edit {
            at: at as u32,
            end: end as u32,
            text_start: text_start as u32,
            text_end: self.text.len() as u32,
        });
    }

    /// Offset of the first header line (just after the start line's CRLF).
    fn headers_start(&self) -> usize {
        self.msg.start_line().len() + 2
    }

    /// Offset of the blank line that ends the head.
    fn headers_end(&self) -> usize {
        self.msg.head_str().len() - 2
    }

    /// Insert `Name: value` above every header line of the original (so it is the topmost of
    /// its name). Several prepends keep their call order: the first call ends up on top.
    pub fn prepend_header(&mut self, name: &str, value: &str) {
        self.prepend_header_with(name, |t| t.push_str(value));
    }

    /// [`prepend_header`](Self::prepend_header) with the value written by `value` straight
    /// into the editor's text (no String of its own).
    pub fn prepend_header_with(&mut self, name: &str, value: impl FnOnce(&mut String)) {
        let at = self.headers_start();
        self.push(at, at, |t| {
            t.push_str(name);
            t.push_str(": ");
            value(t);
            t.push_str("\r\n");
        });
    }

    /// Insert a Via above the others (RFC 3261 §16.6 step 8).
    pub fn prepend_via(&mut self, value: &str) {
        self.prepend_header("Via", value);
    }

    /// Insert a Record-Route above the others (RFC 3261 §16.6 step 4). `value` is the whole
    /// field value, e.g. `<sip:proxy.example.com;lr>`.
    pub fn prepend_record_route(&mut self, value: &str) {
        self.prepend_header("Record-Route", value);
    }

    /// Add `Name: value` after every other header line.
    pub fn append_header(&mut self, name: &str, value: &str) {
        let at = self.headers_end();
        self.push(at, at, |t| {
            let _ = write!(t, "{name}: {value}\r\n");
        });
    }

    /// Add raw header text (one or more complete lines ending in CRLF) after the others.
    /// The caller guarantees the text is well-formed.
    pub fn append_raw(&mut self, lines: &str) {
        let at = self.headers_end();
        self.push(at, at, |t| t.push_str(lines));
    }

    /// Remove every header line of a known field. Returns how many lines go.
    pub fn remove_headers(&mut self, name: HeaderName) -> usize {
        self.remove_lines_where(|n, _| n == name)
    }

    /// Remove every header line whose name is `name` (any case, compact forms included).
    pub fn remove_headers_named(&mut self, name: &str) -> usize {
        let known = HeaderName::classify(name.as_bytes());
        self.remove_lines_where(|n, written| {
            if known == HeaderName::Other {
                n == HeaderName::Other && written.eq_ignore_ascii_case(name)
            } else {
                n == known
            }
        })
    }

    fn remove_lines_where(&mut self, pred: impl Fn(HeaderName, &str) -> bool) -> usize {
        let head = self.msg.head_str();
        let mut n = 0;
        for e in self.msg.entries() {
            let written = head
                .get(e.line.start as usize..e.name_end as usize)
                .unwrap_or("");
            if pred(e.name, written) {
                self.push_removal(e.line.start as usize, e.line.end as usize + 2);
                n += 1;
            }
        }
        n
    }

    /// Remove the first value of a list field: the whole line when it holds one value,
    /// else the value and its comma. Returns false when the field is absent.
    pub fn remove_first_value(&mut self, name: HeaderName) -> Result<bool, ParseError> {
        let Some(e) = self.msg.entries().iter().find(|e| e.name == name).copied() else {
            return Ok(false);
        };
        let value = self.msg.head_str().get(e.value.range()).unwrap_or("");
        // Most lines hold one value and no quote or `<`: one vector search says so.
        let split = if memchr::memchr3(b',', b'"', b'<', value.as_bytes()).is_none() {
            Ok(None)
        } else {
            scan::find_unquoted(value, b',', true)
        };
        match split {
            Err(()) => Err(ParseError::BadValue {
                at: Where::Header(name.as_str()),
                what: "unterminated quoted string",
            }),
            Ok(None) => {
                self.push_removal(e.line.start as usize, e.line.end as usize + 2);
                Ok(true)
            }
            Ok(Some(comma)) => {
                let rest = &value[comma + 1..];
                let skip = rest.len() - scan::trim_lws_start(rest).len();
                let start = e.value.start as usize;
                self.push_removal(start, start + comma + 1 + skip);
                Ok(true)
            }
        }
    }

    /// Remove the topmost Route value (loose routing, RFC 3261 §16.4).
    pub fn remove_first_route(&mut self) -> Result<bool, ParseError> {
        self.remove_first_value(HeaderName::Route)
    }

    /// Remove the topmost Via value (a proxy forwarding a response, RFC 3261 §16.7 step 3).
    pub fn remove_first_via(&mut self) -> Result<bool, ParseError> {
        self.remove_first_value(HeaderName::Via)
    }

    /// Remove the list values of a field for which `remove(index)` is true (indices count
    /// values across lines, top first). A line that loses every value goes; a line that keeps
    /// some is rewritten with the kept values. Returns how many values go.
    pub fn remove_values(
        &mut self,
        name: HeaderName,
        remove: impl Fn(usize) -> bool,
    ) -> Result<usize, ParseError> {
        let head = self.msg.head_str();
        let mut index = 0;
        let mut removed = 0;
        for e in self.msg.entries().iter().filter(|e| e.name == name) {
            let value = head.get(e.value.range()).unwrap_or("");
            let mut kept: Vec<&str> = Vec::new();
            let mut dropped = 0;
            for v in scan::CommaSplit::new(value) {
                let v = v.map_err(|()| ParseError::BadValue {
                    at: Where::Header(name.as_str()),
                    what: "unterminated quoted string",
                })?;
                if remove(index) {
                    dropped += 1;
                } else {
                    kept.push(v);
                }
                index += 1;
            }
            if dropped == 0 {
                continue;
            }
            removed += dropped;
            if kept.is_empty() {
                self.push_removal(e.line.start as usize, e.line.end as usize + 2);
            } else {
                self.push(e.value.start as usize, e.value.end as usize, |t| {
                    for (i, k) in kept.iter().enumerate() {
                        if i > 0 {
                            t.push_str(", ");
                        }
                        t.push_str(k);
                    }
                });
            }
        }
        Ok(removed)
    }

    /// Set `received` and/or `rport` on the topmost Via value (RFC 3261 §18.2.1, RFC 3581
    /// §4), replacing any present; the other parameters keep their order and spelling.
    pub fn set_top_via_params(
        &mut self,
        received: Option<&str>,
        rport: Option<u16>,
    ) -> Result<(), ParseError> {
        if received.is_none() && rport.is_none() {
            return Ok(());
        }
        let head = self.msg.head_str();
        let Some(e) = self
            .msg
            .entries()
            .iter()
            .find(|e| e.name == HeaderName::Via)
            .copied()
        else {
            return Err(ParseError::MissingHeader { name: "Via" });
        };
        let value = head.get(e.value.range()).unwrap_or("");
        let first_len = match scan::find_unquoted(value, b',', true) {
            Ok(Some(i)) => i,
            Ok(None) => value.len(),
            Err(()) => {
                return Err(ParseError::BadValue {
                    at: Where::Header("Via"),
                    what: "unterminated quoted string",
                })
            }
        };
        let first = scan::trim_lws(&value[..first_len]);
        let via = super::values::Via::parse(first)?;
        let params = via.params.as_str();
        // Both slices borrow from the head, so their distance is an offset into it.
        let params_start = params.as_ptr() as usize - head.as_ptr() as usize;
        let params_end = params_start + params.len();
        let first_end = first.as_ptr() as usize - head.as_ptr() as usize + first.len();
        let (params_start, params_end) = if params.is_empty() {
            (first_end, first_end)
        } else {
            (params_start, params_end)
        };
        self.replace_via_params(&via, params_start, params_end, received, rport);
        Ok(())
    }

    /// [`set_top_via_params`](Self::set_top_via_params) given the top Via already parsed
    /// (by validation): not parsed again. `top` must be this message's topmost Via value.
    pub fn set_via_params(
        &mut self,
        top: &super::values::Via<'_>,
        received: Option<&str>,
        rport: Option<u16>,
    ) -> Result<(), ParseError> {
        if received.is_none() && rport.is_none() {
            return Ok(());
        }
        let head = self.msg.head_str();
        let params = top.params.as_str();
        let base = head.as_ptr() as usize;
        let at = (params.as_ptr() as usize).wrapping_sub(base);
        // Parameters that are not a slice of the head (or none, whose end is not known
        // from them): the general path.
        if params.is_empty() || at > head.len() || at + params.len() > head.len() {
            return self.set_top_via_params(received, rport);
        }
        self.replace_via_params(top, at, at + params.len(), received, rport);
        Ok(())
    }

    fn replace_via_params(
        &mut self,
        via: &super::values::Via<'_>,
        params_start: usize,
        params_end: usize,
        received: Option<&str>,
        rport: Option<u16>,
    ) {
        self.push(params_start, params_end, |t| {
            for (n, v) in via.params.iter() {
                let replaced = (n.eq_ignore_ascii_case("received") && received.is_some())
                    || (n.eq_ignore_ascii_case("rport") && rport.is_some());
                if replaced {
                    continue;
                }
                t.push(';');
                t.push_str(n);
                if let Some(v) = v {
                    t.push('=');
                    t.push_str(v);
                }
            }
            if let Some(r) = received {
                t.push_str(";received=");
                t.push_str(r);
            }
            if let Some(p) = rport {
                t.push_str(";rport=");
                push_dec(t, u64::from(p));
            }
        });
    }

    /// Replace the Request-URI. No effect on a response.
    pub fn set_request_uri(&mut self, uri: &str) {
        if let Some(span) = self.msg.request_uri_span() {
            self.push(span.start as usize, span.end as usize, |t| t.push_str(uri));
        }
    }

    /// Decrement Max-Forwards, or add `Max-Forwards: 70` when absent (RFC 3261 §16.6 step 3).
    /// Returns the value written. A request whose Max-Forwards is already 0 is an error:
    /// it must be answered 483 before it gets here.
    pub fn decrement_max_forwards(&mut self) -> Result<u8, ParseError> {
        let Some(e) = self
            .msg
            .entries()
            .iter()
            .find(|e| e.name == HeaderName::MaxForwards)
            .copied()
        else {
            self.prepend_header("Max-Forwards", "70");
            return Ok(70);
        };
        let n = self.msg.max_forwards()?.unwrap_or(70);
        let n = n.checked_sub(1).ok_or(ParseError::BadValue {
            at: Where::Header("Max-Forwards"),
            what: "zero",
        })?;
        self.push(e.value.start as usize, e.value.end as usize, |t| {
            push_dec(t, u64::from(n))
        });
        Ok(n)
    }

    /// Set Max-Forwards to `n`: replace the value, or add the field when absent.
    pub fn set_max_forwards(&mut self, n: u8) {
        match self
            .msg
            .entries()
            .iter()
            .find(|e| e.name == HeaderName::MaxForwards)
            .copied()
        {
            Some(e) => self.push(e.value.start as usize, e.value.end as usize, |t| {
                push_dec(t, u64::from(n))
            }),
            None => {
                let v = n.to_string();
                self.prepend_header("Max-Forwards", &v);
            }
        }
    }

    /// Add Content-Length when the message has none (a datagram forwarded onto a stream).
    pub fn ensure_content_length(&mut self) {
        if self.msg.header(HeaderName::ContentLength).is_none() {
            let n = self.msg.body().len();
            let at = self.headers_end();
            self.push(at, at, |t| {
                let _ = write!(t, "Content-Length: {n}\r\n");
            });
        }
    }

    /// True when no edit has been made: [`finish`](Self::finish) returns the original bytes.
    pub fn is_unchanged(&self) -> bool {
        self.edits.is_empty()
    }

    /// Build the edited message: one allocation, untouched bytes copied once.
    pub fn finish(mut self) -> Bytes {
        let raw = self.msg.as_bytes();
        if self.edits.is_empty() {
            return raw.clone();
        }
        // Stable: at one offset, insertions come before a removal starting there, and edits
        // otherwise keep the order of the calls.
        let edits = self.edits.as_mut_slice();
        edits.sort_by_key(|e| (e.at, e.end != e.at));
        let edits = &*edits;
        // Only a capacity hint: overlapping removals (skipped below) are counted twice here,
        // so the sum may fall below zero and must saturate.
        let mut size = raw.len();
        for e in edits {
            size = size
                .saturating_add((e.text_end - e.text_start) as usize)
                .saturating_sub((e.end - e.at) as usize);
        }
        let mut out = BytesMut::with_capacity(size);
        let mut cursor = 0usize;
        for e in edits {
            let (at, end) = (e.at as usize, e.end as usize);
            if at < cursor {
                // Overlaps a removal already applied (e.g. the first Route removed, then all
                // Route lines): the earlier edit wins.
                continue;
            }
            out.extend_from_slice(&raw[cursor..at]);
            out.extend_from_slice(
                &self.text.as_bytes()[e.text_start as usize..e.text_end as usize],
            );
            cursor = end;
        }
        out.extend_from_slice(&raw[cursor..]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    const INV: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n\
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
Max-Forwards: 10\r\n\
To: <sip:bob@example.com>\r\n\
From: <sip:alice@example.com>;tag=1\r\n\
Call-ID: c1\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn unchanged_is_byte_identical() {
        let m = msg(INV);
        assert_eq!(Editor::new(&m).finish(), m.as_bytes());
    }

    #[test]
    fn forwarding_edits() {
        let m = msg(INV);
        let mut e = Editor::new(&m);
        e.prepend_via("SIP/2.0/TLS proxy.example.com;branch=z9hG4bKx");
        e.prepend_record_route("<sip:proxy.example.com;lr>");
        assert!(e.remove_first_route().unwrap());
        assert_eq!(e.decrement_max_forwards().unwrap(), 9);
        e.set_request_uri("sip:bob@192.0.2.9");
        let out = e.finish();
        let f = Message::parse(out).unwrap();
        f.validate().unwrap();
        assert_eq!(f.request_uri_str(), Some("sip:bob@192.0.2.9"));
        assert_eq!(f.top_via().unwrap().branch(), Some("z9hG4bKx"));
        assert_eq!(f.vias().count(), 2);
        assert_eq!(f.max_forwards().unwrap(), Some(9));
        let routes: Vec<_> = f.routes().map(|r| r.unwrap().uri_str.to_owned()).collect();
        assert_eq!(routes, vec!["sip:p2.example.com;lr"]);
        assert_eq!(f.record_routes().count(), 1);
    }

    #[test]
    fn remove_values_across_lines() {
        let m = msg("OPTIONS sip:a@b SIP/2.0\r\nRoute: <sip:1;lr>, <sip:2;lr>\r\nRoute: <sip:3;lr>\r\nVia: SIP/2.0/UDP h\r\nl: 0\r\n\r\n");
        let mut e = Editor::new(&m);
        assert_eq!(
            e.remove_values(HeaderName::Route, |i| i == 0 || i == 2)
                .unwrap(),
            2
        );
        let out = e.finish();
        assert_eq!(
            &out[..],
            b"OPTIONS sip:a@b SIP/2.0\r\nRoute: <sip:2;lr>\r\nVia: SIP/2.0/UDP h\r\nl: 0\r\n\r\n"
        );
    }

    #[test]
    fn top_via_received_and_rport() {
        let m = msg("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h:5070;rport;branch=z9hG4bK1, SIP/2.0/UDP x\r\nl: 0\r\n\r\n");
        let mut e = Editor::new(&m);
        e.set_top_via_params(Some("192.0.2.7"), Some(40000))
            .unwrap();
        let f = Message::parse(e.finish()).unwrap();
        let v = f.top_via().unwrap();
        assert_eq!(v.received(), Some("192.0.2.7"));
        assert_eq!(v.rport(), Some(Some(40000)));
        assert_eq!(v.branch(), Some("z9hG4bK1"));
        assert_eq!(f.vias().count(), 2);
        let m = msg("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nl: 0\r\n\r\n");
        let mut e = Editor::new(&m);
        e.set_top_via_params(Some("192.0.2.7"), None).unwrap();
        let f = Message::parse(e.finish()).unwrap();
        assert_eq!(f.top_via().unwrap().received(), Some("192.0.2.7"));
    }

    #[test]
    fn overlapping_removals_do_not_underflow_the_size_hint() {
        // Found by fuzzing (parse_message): the same long line removed twice made the
        // capacity estimate subtract past zero.
        let m = msg("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP a-very-long-host-name.example.com\r\nl: 0\r\n\r\n");
        let mut e = Editor::new(&m);
        e.remove_first_via().unwrap();
        e.remove_headers_named("v");
        e.remove_headers(HeaderName::Via);
        assert_eq!(&e.finish()[..], b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n\r\n");
    }

    #[test]
    fn first_value_removed_with_or_without_quotes_and_brackets() {
        for (line, rest) in [
            ("Via: SIP/2.0/UDP a;branch=z9hG4bK1", ""),
            (
                "Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b",
                "Via: SIP/2.0/UDP b\r\n",
            ),
            (
                "Via: SIP/2.0/UDP a;x=\"p,q\",SIP/2.0/UDP b",
                "Via: SIP/2.0/UDP b\r\n",
            ),
            ("Via: SIP/2.0/UDP a;x=\"p,q\"", ""),
        ] {
            let m = msg(&format!(
                "OPTIONS sip:a@b SIP/2.0\r\n{line}\r\nl: 0\r\n\r\n"
            ));
            let mut e = Editor::new(&m);
            assert!(e.remove_first_via().unwrap(), "{line}");
            let want = format!("OPTIONS sip:a@b SIP/2.0\r\n{rest}l: 0\r\n\r\n");
            assert_eq!(&e.finish()[..], want.as_bytes(), "{line}");
        }
    }

    #[test]
    fn more_edits_than_held_inline() {
        let lines: String = (0..12)
            .map(|i| format!("X-A: {i}\r\nX-B: {i}\r\n"))
            .collect();
        let m = msg(&format!("OPTIONS sip:a@b SIP/2.0\r\n{lines}l: 0\r\n\r\n"));
        let mut e = Editor::new(&m);
        e.prepend_header("X-C", "top");
        assert_eq!(e.remove_headers_named("x-a"), 12);
        e.append_header("X-D", "end");
        let kept: String = (0..12).map(|i| format!("X-B: {i}\r\n")).collect();
        let want = format!("OPTIONS sip:a@b SIP/2.0\r\nX-C: top\r\n{kept}l: 0\r\nX-D: end\r\n\r\n");
        assert_eq!(&e.finish()[..], want.as_bytes());
    }

    #[test]
    fn single_route_line_removed_and_max_forwards_added() {
        let m = msg(
            "OPTIONS sip:a@b SIP/2.0\r\nRoute: <sip:x;lr>\r\nVia: SIP/2.0/UDP h\r\nl: 0\r\n\r\n",
        );
        let mut e = Editor::new(&m);
        e.remove_first_route().unwrap();
        e.remove_headers(HeaderName::Route);
        assert_eq!(e.decrement_max_forwards().unwrap(), 70);
        let out = e.finish();
        assert_eq!(
            &out[..],
            b"OPTIONS sip:a@b SIP/2.0\r\nMax-Forwards: 70\r\nVia: SIP/2.0/UDP h\r\nl: 0\r\n\r\n"
        );
    }

    #[test]
    fn via_params_from_the_parsed_top_via_match_a_fresh_parse() {
        for text in [
            "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h:5070 ; rport;branch=z9hG4bK1 , SIP/2.0/UDP x\r\nl: 0\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;received=1.2.3.4;branch=z9hG4bK1\r\nl: 0\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nl: 0\r\n\r\n",
        ] {
            let m = msg(text);
            let top = m.top_via().unwrap();
            for (rcv, rport) in [
                (Some("192.0.2.7"), Some(0)),
                (None, Some(65535)),
                (Some("::1"), None),
                (None, Some(5060)),
            ] {
                let mut a = Editor::new(&m);
                a.set_top_via_params(rcv, rport).unwrap();
                let mut b = Editor::new(&m);
                b.set_via_params(&top, rcv, rport).unwrap();
                assert_eq!(a.finish(), b.finish(), "{text}");
            }
        }
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0u16, 7, 10, 99, 100, 5060, 65535] {
            let mut t = String::new();
            push_dec(&mut t, u64::from(n));
            assert_eq!(t, n.to_string());
        }
    }
}
