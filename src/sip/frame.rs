//! Stream framing for TCP/TLS (RFC 3261 §18.3, RFC 5626 §3.5.1): from a growing buffer, yield
//! complete messages (Content-Length is mandatory on streams) and CRLF keepalives.
//! Bounded by [`Limits`]; it never panics, and it searches the bytes of a head at most twice
//! (a head that is all in one read is indexed directly, and that index finds its end; else
//! the search for the blank line resumes where it stopped, and the head is indexed once found).

use bytes::{Buf, BytesMut};

use super::error::ParseError;
use super::limits::Limits;
use super::message::{parse_head, ContentLength, Head, Message};

/// The blank line that ends a head: a searcher built once (`memmem::find` builds one for
/// every call, and the framer searches once per read).
static HEAD_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));

/// What the framer found at the front of the buffer.
// A frame is consumed as soon as it is returned; boxing the message would cost an
// allocation per message on the hot path to save a few bytes of stack.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Frame {
    /// A complete message. It may still fail [`Message::validate`].
    Message(Message),
    /// An RFC 5626 keepalive ping (CRLF CRLF): answer with a pong (one CRLF).
    Ping,
    /// An RFC 5626 pong (a lone CRLF).
    Pong,
    /// A message whose head does not parse but whose end is known (one readable
    /// Content-Length): its bytes, taken off the stream, and why. Answer it (400) and go on
    /// reading: the stream has kept its framing.
    Malformed {
        bytes: bytes::Bytes,
        error: ParseError,
    },
}

/// Splits a byte stream into SIP messages and keepalives.
///
/// After an `Err` the stream has lost its framing (no head end within the size limit, or a
/// missing, negative or ambiguous Content-Length): the caller must close the connection
/// after answering 400 where it can. A head that is malformed in other ways, with one
/// readable Content-Length, is a [`Frame::Malformed`] and the stream goes on.
#[derive(Debug)]
pub struct StreamFramer {
    limits: Limits,
    /// Head of the message whose body is still arriving. Boxed: it is rare (a body split
    /// across reads), and every idle connection holds a framer.
    pending: Option<Box<Head>>,
    /// How far the buffer has been searched for the end of the head without finding it.
    scanned: usize,
}

impl StreamFramer {
    pub fn new(limits: Limits) -> Self {
        StreamFramer {
            limits,
            pending: None,
            scanned: 0,
        }
    }

    /// True when the buffer holds the beginning of a message (or a partial keepalive).
    pub fn is_mid_message(&self, buf: &BytesMut) -> bool {
        self.pending.is_some() || !buf.is_empty()
    }

    /// Take the next frame off the front of `buf`, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ParseError> {
        if self.pending.is_none() {
            // Keepalives (only between messages).
            if buf.starts_with(b"\r\n\r\n") {
                buf.advance(4);
                self.scanned = 0;
                return Ok(Some(Frame::Ping));
            }
            if buf.starts_with(b"\r\n") {
                if buf.len() < 4 && b"\r\n\r\n".starts_with(&buf[..]) {
                    // CRLF or CRLF CR: could still become a ping.
                    return Ok(None);
                }
                buf.advance(2);
                self.scanned = 0;
                return Ok(Some(Frame::Pong));
            }
            if buf.len() == 1 && buf[0] == b'\r' {
                return Ok(None);
            }
            if self.scanned == 0 {
                // The common case, a whole head in this read: the index's own walk over the
                // lines finds where the head ends, and the buffer is not searched for the
                // blank line first. It stops at the first blank line, which is where the
                // search below would stop, so an indexed head is the one the search would
                // have handed to `parse_head`. Anything else (a head not all in, or one that
                // does not index) takes the search below, errors and waits as before; that
                // happens once per message, since `scanned` is then no longer 0.
                if let Ok(head) = parse_head(buf, &self.limits) {
                    if head.len > self.limits.max_message_size {
                        return Err(ParseError::MessageTooLarge {
                            limit: self.limits.max_message_size,
                        });
                    }
                    return self.start(buf, head);
                }
            }
            // Look for the blank line that ends the head, resuming where the last search
            // stopped (3 bytes back: the terminator may straddle two reads).
            let from = self.scanned.saturating_sub(3);
            match HEAD_END.find(&buf[from..]) {
                None => {
                    self.scanned = buf.len();
                    if buf.len() > self.limits.max_message_size {
                        return Err(ParseError::MessageTooLarge {
                            limit: self.limits.max_message_size,
                        });
                    }
                    return Ok(None);
                }
                Some(i) => {
                    let head_end = from + i + 4;
                    if head_end > self.limits.max_message_size {
                        return Err(ParseError::MessageTooLarge {
                            limit: self.limits.max_message_size,
                        });
                    }
                    let head = match parse_head(&buf[..head_end], &self.limits) {
                        Ok(h) => h,
                        Err(e) => {
                            // The index stops at the first blank line, which we found: so
                            // an "incomplete" here means the head is malformed.
                            let e = match e {
                                ParseError::Incomplete => {
                                    ParseError::BadHeaderLine { offset: head_end }
                                }
                                e => e,
                            };
                            let Some(n) = lenient_content_length(&buf[..head_end]) else {
                                return Err(e);
                            };
                            let total = head_end.saturating_add(n);
                            if total > self.limits.max_message_size {
                                return Err(e);
                            }
                            if buf.len() < total {
                                // Searched again once the body is in: rare, and bounded.
                                self.scanned = 0;
                                return Ok(None);
                            }
                            self.scanned = 0;
                            return Ok(Some(Frame::Malformed {
                                bytes: buf.split_to(total).freeze(),
                                error: e,
                            }));
                        }
                    };
                    return self.start(buf, head);
                }
            }
        }
        self.resume(buf)
    }

    /// A message whose head is indexed: refused if its length is unusable, complete if its
    /// body is in, else pending until it is.
    fn start(&mut self, buf: &mut BytesMut, head: Head) -> Result<Option<Frame>, ParseError> {
        match &head.content_length {
            ContentLength::Absent => return Err(ParseError::MissingContentLength),
            ContentLength::Invalid(e) => return Err(e.clone()),
            ContentLength::Value(n) => {
                if head.len + n > self.limits.max_message_size {
                    return Err(ParseError::MessageTooLarge {
                        limit: self.limits.max_message_size,
                    });
                }
            }
        }
        // The common case, the whole message in one read: no box.
        if buf.len() >= total_len(&head) {
            return self.complete(buf, head);
        }
        self.pending = Some(Box::new(head));
        self.resume(buf)
    }

    /// The pending message, once `buf` holds all of its body.
    fn resume(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ParseError> {
        let Some(head) = self.pending.as_ref() else {
            return Ok(None);
        };
        let total = total_len(head);
        if buf.len() < total {
            if buf.capacity() < total {
                buf.reserve(total - buf.len());
            }
            return Ok(None);
        }
        match self.pending.take() {
            Some(head) => self.complete(buf, *head),
            None => Ok(None),
        }
    }

    /// The message whose head is `head`, now that `buf` holds all of it.
    fn complete(&mut self, buf: &mut BytesMut, head: Head) -> Result<Option<Frame>, ParseError> {
        let total = total_len(&head);
        self.scanned = 0;
        let bytes = buf.split_to(total).freeze();
        Message::from_head(bytes, head, &self.limits).map(|m| Some(Frame::Message(m)))
    }
}

/// The Content-Length of a head that does not parse, when it has exactly one such line
/// (long or compact form) holding only digits: enough to skip the message and keep the
/// stream. Anything less certain is `None`.
fn lenient_content_length(head: &[u8]) -> Option<usize> {
    let mut found = None;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let v = line[colon + 1..].trim_ascii();
        if v.is_empty() || v.len() > 9 || !v.iter().all(u8::is_ascii_digit) || found.is_some() {
            return None;
        }
        found = std::str::from_utf8(v).ok()?.parse().ok();
    }
    found
}

/// Head plus body, as Content-Length says (the head alone when it says nothing usable:
/// such heads were refused before they got here).
fn total_len(head: &Head) -> usize {
    match head.content_length {
        ContentLength::Value(n) => head.len + n,
        _ => head.len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 5\r\n\r\nhello";

    fn frames(chunks: &[&[u8]]) -> Result<Vec<String>, ParseError> {
        let mut f = StreamFramer::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut out = vec![];
        for c in chunks {
            buf.extend_from_slice(c);
            while let Some(fr) = f.next_frame(&mut buf)? {
                out.push(match fr {
                    Frame::Message(m) => String::from_utf8_lossy(m.body()).into_owned(),
                    Frame::Ping => "PING".into(),
                    Frame::Pong => "PONG".into(),
                    Frame::Malformed { bytes, .. } => {
                        format!("MALFORMED {}", bytes.len())
                    }
                });
            }
        }
        Ok(out)
    }

    #[test]
    fn byte_by_byte_and_keepalives() {
        let mut all = b"\r\n\r\n".to_vec();
        all.extend_from_slice(MSG);
        all.extend_from_slice(b"\r\n");
        all.extend_from_slice(MSG);
        let chunks: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(
            frames(&chunks).unwrap(),
            vec!["PING", "hello", "PONG", "hello"]
        );
        assert_eq!(
            frames(&[&all]).unwrap(),
            vec!["PING", "hello", "PONG", "hello"]
        );
    }

    #[test]
    fn missing_content_length_is_an_error() {
        let e = frames(&[b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n"]).unwrap_err();
        assert_eq!(e, ParseError::MissingContentLength);
    }

    #[test]
    fn a_malformed_head_with_one_readable_length_is_skipped_whole() {
        let bad: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nno colon here\r\nl: 3\r\n\r\nabc";
        let mut all = bad.to_vec();
        all.extend_from_slice(MSG);
        let chunks: Vec<&[u8]> = all.chunks(7).collect();
        assert_eq!(
            frames(&chunks).unwrap(),
            vec![format!("MALFORMED {}", bad.len()), "hello".to_owned()]
        );
        // Two lengths, or none: the end is not known, the stream is lost.
        assert!(frames(&[
            b"OPTIONS sip:a@b SIP/2.0\r\nno colon\r\nl: 3\r\nContent-Length: 3\r\n\r\nabc"
        ])
        .is_err());
        assert!(frames(&[b"OPTIONS sip:a@b SIP/2.0\r\nno colon\r\n\r\n"]).is_err());
        assert!(frames(&[b"OPTIONS sip:a@b SIP/2.0\r\nno colon\r\nl: -3\r\n\r\n"]).is_err());
    }

    /// Every frame and the verdict, as text: what must not depend on how reads split.
    fn render(chunks: &[&[u8]]) -> Vec<String> {
        let mut f = StreamFramer::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut out = vec![];
        for c in chunks {
            buf.extend_from_slice(c);
            loop {
                match f.next_frame(&mut buf) {
                    Ok(Some(Frame::Message(m))) => out.push(format!(
                        "MSG {:?} {:?} {:?}",
                        m.as_bytes(),
                        m.validate(),
                        m.fields().collect::<Vec<_>>()
                    )),
                    Ok(Some(Frame::Malformed { bytes, error })) => {
                        out.push(format!("MALFORMED {bytes:?} {error:?}"))
                    }
                    Ok(Some(other)) => out.push(format!("{other:?}")),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(format!("ERR {e:?}"));
                        return out;
                    }
                }
            }
        }
        out.push(format!("LEFT {}", buf.len()));
        out
    }

    /// A whole head in one read is indexed without the search for its end; a head split
    /// across reads is searched for first. Both give the same frames and verdicts, on good
    /// and bad heads alike.
    #[test]
    fn one_read_and_split_reads_frame_alike() {
        let cases: &[&[u8]] = &[
            MSG,
            b"OPTIONS sip:a@b SIP/2.0\r\nno colon here\r\nl: 3\r\n\r\nabc",
            b"OPTIONS sip:a@b SIP/2.0\r\nno colon\r\nl: 3\r\nContent-Length: 3\r\n\r\nabc",
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n",
            b"OPTIONS sip:a@b SIP/2.0\r\nl: -3\r\n\r\n",
            b"OPTIONS sip:a@b SIP/2.0\r\nl: 3\r\nl: 3\r\n\r\nabc",
            b"OPTIONS sip:a@b SIP/2.0\r\nX: a\nl: 0\r\n\r\n",
            b"OPTIONS sip:a@b SIP/2.0\r\nX: a\r\n folded\r\nl: 0\r\n\r\n",
            b"OPTIONS sip:a@b SIP/2.0\r\n folded first\r\nl: 0\r\n\r\n",
            b"OPTIONS sip:a@b SIP/2.0\r\nX: \0\r\nY: a\rb\r\nl: 0\r\n\r\n",
            b"OPTIONS sip:a@b SIP/2.0\r\r\nl: 0\r\n\r\n",
            b"OPTIONS sip:a@b SIP/3.0\r\nl: 1\r\n\r\nx",
            b"OPTIONS sip:a@b SIP/2.0\nl: 0\r\n\r\n",
            b"SIP/2.0 200 OK\r\nl: 2\r\n\r\nok",
            b"SIP/2.0 2000 OK\r\nl: 2\r\n\r\nok",
            b"\r\n\r\n\r\nOPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n\r\n",
            b"garbage\r\n\r\n",
            b"INVITE sip:a@b SIP/2.0\r\nl: 10\r\n\r\nshort",
        ];
        let mut stream = Vec::new();
        for c in cases {
            stream.extend_from_slice(c);
        }
        let mut many: Vec<&[u8]> = vec![&stream];
        many.extend(cases.iter().copied());
        for whole in many {
            let want = render(&[whole]);
            for size in [1, 2, 3, 5, 7, 13, 40] {
                let chunks: Vec<&[u8]> = whole.chunks(size).collect();
                assert_eq!(
                    render(&chunks),
                    want,
                    "{size}: {}",
                    String::from_utf8_lossy(whole)
                );
            }
        }
        // A long line with no end yet waits (the index would call it too long); the stream
        // ends in an error only once the whole limit is over.
        let mut long = b"OPTIONS sip:a@b SIP/2.0\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 9_000));
        assert_eq!(render(&[&long]), vec![format!("LEFT {}", long.len())]);
    }

    #[test]
    fn oversized_head_is_an_error() {
        let big = vec![b'a'; 70_000];
        assert!(matches!(
            frames(&[&big]),
            Err(ParseError::MessageTooLarge { .. })
        ));
    }
}
