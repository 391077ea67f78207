//! The SIP message (RFC 3261 §7): one pass over the bytes indexes the start line and every
//! header line; header values are parsed only when asked for. Zero-copy: a [`Message`] holds
//! the received `Bytes` and offsets into them. Must never panic on any input.

use std::fmt;

use bytes::{Buf, Bytes};
use bytestring::ByteString;

use super::error::{ParseError, Where};
use super::header::HeaderName;
use super::limits::Limits;
use super::scan::{self, trim_lws, CommaSplit};
use super::uri::Uri;
use super::values::{CSeq, ContactCheck, Contacts, NameAddr, Via};

/// A byte range inside a message, as `u32` offsets: messages are far below 4 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    #[inline]
    fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
    #[inline]
    pub(crate) fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// Request methods; anything else is [`Method::Other`] and keeps its spelling in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Prack,
    Subscribe,
    Notify,
    Publish,
    Info,
    Refer,
    Message,
    Update,
    Other,
}

impl Method {
    /// Classify a method token. Methods are case-sensitive (RFC 3261 §7.1).
    pub fn classify(s: &[u8]) -> Method {
        match s {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"PUBLISH" => Method::Publish,
            b"INFO" => Method::Info,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"UPDATE" => Method::Update,
            _ => Method::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartLine {
    Request {
        method: Method,
        method_span: Span,
        uri: Span,
    },
    Response {
        code: u16,
        reason: Span,
    },
}

/// One indexed header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderEntry {
    pub(crate) name: HeaderName,
    /// From the first byte of the name to the end of the line, CRLF excluded.
    pub(crate) line: Span,
    pub(crate) name_end: u32,
    /// The value without leading and trailing LWS (may contain folded CRLF SP).
    pub(crate) value: Span,
}

/// What the indexing pass learnt about Content-Length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ContentLength {
    Absent,
    Value(usize),
    Invalid(ParseError),
}

/// The indexed head of a message: everything up to and including the blank line.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    /// Bytes of start line + headers + the empty line.
    pub(crate) len: usize,
    pub(crate) start: StartLine,
    /// End of the start line (CRLF excluded).
    pub(crate) start_line_end: u32,
    pub(crate) headers: Vec<HeaderEntry>,
    pub(crate) content_length: ContentLength,
    /// The first error found that does not stop indexing; [`Message::validate`] reports it,
    /// so that a request with, say, a bad version can still be answered (505) over its Via.
    pub(crate) deferred: Option<ParseError>,
    /// Offset of the first forbidden byte of the head ([`forbidden_at`]), found by the same
    /// search that finds the line ends.
    pub(crate) forbidden: Option<usize>,
}

fn defer(slot: &mut Option<ParseError>, e: ParseError) {
    if slot.is_none() {
        *slot = Some(e);
    }
}

/// The first LF at or after `at`, noting on the way the first forbidden byte
/// ([`forbidden_at`]) in `forbidden`. A CRLF is found at its CR: one search per line finds the
/// line end and every NUL and bare CR of the line, so the head is not searched again for them.
#[inline(always)]
fn next_lf(buf: &[u8], mut at: usize, forbidden: &mut Option<usize>) -> Option<usize> {
    loop {
        let i = find_ctl(buf, at)?;
        match buf.get(i) {
            Some(b'\r') => {
                if buf.get(i + 1) == Some(&b'\n') {
                    return Some(i + 1);
                }
                forbidden.get_or_insert(i);
            }
            Some(0) => {
                if i == 0 || buf.get(i - 1) != Some(&b'\\') {
                    forbidden.get_or_insert(i);
                }
            }
            _ => return Some(i),
        }
        at = i + 1;
    }
}

/// The first LF, CR or NUL at or after `at`: two words of 8 bytes a step, with the test for
/// a byte below 0x0e of every byte at once (`(w - 0x0e..0e) & !w & 0x80..80`, whose lowest
/// flagged byte is the first such byte; TAB and the other controls below it are skipped
/// one by one). Header lines are tens of bytes: cheaper than `memchr3`'s call and setup.
#[inline]
fn find_ctl(buf: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    #[inline(always)]
    fn below_0e(b: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        let w = u64::from_le_bytes(w);
        w.wrapping_sub(0x0e * ONES) & !w & HIGH
    }
    // Two words a step: one bounds check and one test for 16 bytes.
    while let Some(chunk) = buf.get(at..at + 16) {
        let (lo, hi) = (below_0e(&chunk[..8]), below_0e(&chunk[8..]));
        if lo | hi == 0 {
            at += 16;
            continue;
        }
        let i = if lo != 0 {
            at + (lo.trailing_zeros() / 8) as usize
        } else {
            at + 8 + (hi.trailing_zeros() / 8) as usize
        };
        if matches!(buf.get(i), Some(b'\n' | b'\r' | 0)) {
            return Some(i);
        }
        at = i + 1;
    }
    while let Some(chunk) = buf.get(at..at + 8) {
        let m = below_0e(chunk);
        if m == 0 {
            at += 8;
            continue;
        }
        let i = at + (m.trailing_zeros() / 8) as usize;
        if matches!(buf.get(i), Some(b'\n' | b'\r' | 0)) {
            return Some(i);
        }
        at = i + 1;
    }
    let rest = buf.get(at..)?;
    rest.iter()
        .position(|&b| matches!(b, b'\n' | b'\r' | 0))
        .map(|p| at + p)
}

/// The name of a header line (classified), where it ends and where its colon is; `line_start` is the
/// line's offset, for the error. The name is read as a run of token bytes, then optional
/// SP/HT and the colon (nearly every line); else by the general reading
/// ([`header_name_by_search`]): the first colon, the name before it trimmed of SP/HT, its
/// bytes checked. Both read the same name where the run reads one.
#[inline(always)]
fn header_name(line: &[u8], line_start: usize) -> Result<(HeaderName, usize, usize), ParseError> {
    let name_run = scan::run(line, 0, scan::class::TOKEN);
    let mut colon = name_run;
    while matches!(line.get(colon), Some(b' ' | b'\t')) {
        colon += 1;
    }
    if name_run > 0 && line.get(colon) == Some(&b':') {
        return Ok((HeaderName::classify(&line[..name_run]), name_run, colon));
    }
    header_name_by_search(line, line_start)
}

/// [`header_name`] for any line.
#[cold]
fn header_name_by_search(
    line: &[u8],
    line_start: usize,
) -> Result<(HeaderName, usize, usize), ParseError> {
    let colon =
        scan::position(line, b':').ok_or(ParseError::BadHeaderLine { offset: line_start })?;
    let mut name_end = colon;
    while name_end > 0 && matches!(line[name_end - 1], b' ' | b'\t') {
        name_end -= 1;
    }
    let name_bytes = &line[..name_end];
    let name = HeaderName::classify(name_bytes);
    // A known name is made of token characters already; only others need the check.
    if name == HeaderName::Other
        && (name_bytes.is_empty() || !name_bytes.iter().all(|&b| scan::is_token(b)))
    {
        return Err(ParseError::BadHeaderLine { offset: line_start });
    }
    Ok((name, name_end, colon))
}

/// Index a message head from the start of `buf` (which must not start with CRLF padding).
/// `Err(Incomplete)` when `buf` ends before the blank line that closes the head.
pub(crate) fn parse_head(buf: &[u8], limits: &Limits) -> Result<Head, ParseError> {
    let mut deferred = None;
    let mut forbidden = None;
    let nl = match next_lf(buf, 0, &mut forbidden) {
        Some(nl) => nl,
        None if buf.len() > limits.max_line_length => {
            return Err(ParseError::LineTooLong {
                at: Where::StartLine,
                limit: limits.max_line_length,
            })
        }
        None => return Err(ParseError::Incomplete),
    };
    if nl == 0 || buf[nl - 1] != b'\r' {
        return Err(ParseError::BadStartLine {
            what: "not terminated by CRLF",
        });
    }
    let line_end = nl - 1;
    if line_end > limits.max_line_length {
        return Err(ParseError::LineTooLong {
            at: Where::StartLine,
            limit: limits.max_line_length,
        });
    }
    let start = parse_start_line(&buf[..line_end], limits, &mut deferred)?;

    let mut headers = Vec::with_capacity(16);
    let mut content_length = ContentLength::Absent;
    let mut pos = nl + 1;
    loop {
        let rest = &buf[pos..];
        if rest.len() < 2 {
            return Err(ParseError::Incomplete);
        }
        if rest[0] == b'\r' && rest[1] == b'\n' {
            pos += 2;
            break;
        }
        if matches!(rest[0], b' ' | b'\t') {
            // A continuation line directly after the start line, or stray whitespace.
            return Err(ParseError::BadHeaderLine { offset: pos });
        }
        // Find the end of the logical line, following folds (CRLF followed by SP/HT).
        let line_start = pos;
        let mut search = pos;
        let line_end = loop {
            let nl = match next_lf(buf, search, &mut forbidden) {
                Some(nl) => nl,
                None => {
                    if buf.len() - line_start > limits.max_line_length {
                        return Err(ParseError::LineTooLong {
                            at: Where::OtherHeader,
                            limit: limits.max_line_length,
                        });
                    }
                    return Err(ParseError::Incomplete);
                }
            };
            if nl == line_start || buf[nl - 1] != b'\r' {
                return Err(ParseError::BadHeaderLine { offset: nl });
            }
            match buf.get(nl + 1) {
                None => return Err(ParseError::Incomplete),
                Some(b' ' | b'\t') => search = nl + 1,
                Some(_) => break nl - 1,
            }
        };
        let line = &buf[line_start..line_end];
        if line.len() > limits.max_line_length {
            return Err(ParseError::LineTooLong {
                at: Where::OtherHeader,
                limit: limits.max_line_length,
            });
        }
        if headers.len() >= limits.max_headers {
            return Err(ParseError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        let (name, name_end, colon) = header_name(line, line_start)?;
        let mut vs = colon + 1;
        while vs < line.len() && scan::is_lws(line[vs]) {
            vs += 1;
        }
        let mut ve = line.len();
        while ve > vs && scan::is_lws(line[ve - 1]) {
            ve -= 1;
        }
        if name == HeaderName::ContentLength {
            content_length = match content_length {
                ContentLength::Absent => {
                    match scan::parse_u64(std::str::from_utf8(&line[vs..ve]).unwrap_or("")) {
                        Some(n) if n <= u64::from(u32::MAX) => ContentLength::Value(n as usize),
                        _ => {
                            let e = ParseError::BadValue {
                                at: Where::Header("Content-Length"),
                                what: "not a non-negative integer",
                            };
                            defer(&mut deferred, e.clone());
                            ContentLength::Invalid(e)
                        }
                    }
                }
                _ => {
                    let e = ParseError::DuplicateHeader {
                        name: "Content-Length",
                    };
                    defer(&mut deferred, e.clone());
                    ContentLength::Invalid(e)
                }
            };
        }
        headers.push(HeaderEntry {
            name,
            line: Span::new(line_start, line_end),
            name_end: (line_start + name_end) as u32,
            value: Span::new(line_start + vs, line_start + ve),
        });
        pos = line_end + 2;
    }
    Ok(Head {
        len: pos,
        start,
        start_line_end: line_end as u32,
        headers,
        content_length,
        deferred,
        forbidden,
    })
}

fn parse_start_line(
    line: &[u8],
    limits: &Limits,
    deferred: &mut Option<ParseError>,
) -> Result<StartLine, ParseError> {
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp = memchr::memchr(b' ', line).ok_or(ParseError::BadStartLine {
            what: "missing status code",
        })?;
        if !line[..sp].eq_ignore_ascii_case(b"SIP/2.0") {
            defer(deferred, ParseError::BadVersion);
        }
        let rest = &line[sp + 1..];
        let code_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if code_len != 3 || !(rest.len() == 3 || rest[3] == b' ') {
            return Err(ParseError::BadStatusCode);
        }
        let code = u16::from(rest[0] - b'0') * 100
            + u16::from(rest[1] - b'0') * 10
            + u16::from(rest[2] - b'0');
        if !(100..=699).contains(&code) {
            return Err(ParseError::BadStatusCode);
        }
        let reason_start = (sp + 1 + 4).min(line.len());
        if line[reason_start..]
            .iter()
            .any(|&b| b < b' ' && b != b'\t' || b == 0x7f)
        {
            defer(
                deferred,
                ParseError::BadStartLine {
                    what: "control character in reason phrase",
                },
            );
        }
        return Ok(StartLine::Response {
            code,
            reason: Span::new(reason_start, line.len()),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version
    let sp1 = memchr::memchr(b' ', line).ok_or(ParseError::BadStartLine {
        what: "not a request or status line",
    })?;
    let sp2 = memchr::memrchr(b' ', line).unwrap_or(sp1);
    if sp1 == sp2 {
        return Err(ParseError::BadStartLine {
            what: "missing SIP version",
        });
    }
    let method = &line[..sp1];
    if method.is_empty() || !method.iter().all(|&b| scan::is_token(b)) {
        return Err(ParseError::BadStartLine { what: "bad method" });
    }
    let uri = &line[sp1 + 1..sp2];
    let version = &line[sp2 + 1..];
    if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        if version.len() > 4 && version[..4].eq_ignore_ascii_case(b"SIP/") {
            defer(deferred, ParseError::BadVersion);
        } else {
            defer(
                deferred,
                ParseError::BadStartLine {
                    what: "bad SIP version or trailing whitespace",
                },
            );
        }
    }
    if uri.is_empty() || uri.iter().any(|&b| b == b' ' || b == b'\t') {
        defer(
            deferred,
            ParseError::BadStartLine {
                what: "whitespace in Request-URI",
            },
        );
    } else if uri.len() > limits.max_uri_length {
        defer(
            deferred,
            ParseError::UriTooLong {
                at: Where::StartLine,
                limit: limits.max_uri_length,
            },
        );
    }
    Ok(StartLine::Request {
        method: Method::classify(method),
        method_span: Span::new(0, sp1),
        uri: Span::new(sp1 + 1, sp2),
    })
}

/// Whether `head[i]` is a byte SIP never allows there: a NUL that is not escaped as a
/// quoted-pair (`\` NUL is valid in a quoted-string, RFC 3261 §25.1 and RFC 4475 §3.1.1.10),
/// or a CR that does not start a CRLF.
fn forbidden_at(head: &[u8], i: usize) -> bool {
    match head.get(i) {
        Some(0) => i == 0 || head.get(i - 1) != Some(&b'\\'),
        Some(b'\r') => head.get(i + 1) != Some(&b'\n'),
        _ => false,
    }
}

/// The first forbidden byte ([`forbidden_at`]) in a head: what [`parse_head`] finds on its
/// way, computed on its own (the tests' oracle).
#[cfg(test)]
fn forbidden_byte(head: &[u8]) -> Option<usize> {
    // One pass over both bytes: positions come in order, so the first hit is the minimum.
    memchr::memchr2_iter(0, b'\r', head).find(|&i| forbidden_at(head, i))
}

/// The head as text, byte for byte: every byte that is not part of valid UTF-8 (Latin-1
/// display names from older phones) and every forbidden byte becomes `?`. Offsets stay
/// those of the raw bytes, which are what is forwarded.
fn text_view(head: &[u8]) -> String {
    let mut v: Vec<u8> = head
        .iter()
        .enumerate()
        .map(|(i, &b)| if forbidden_at(head, i) { b'?' } else { b })
        .collect();
    let mut at = 0;
    while let Err(e) = std::str::from_utf8(&v[at..]) {
        let bad = at + e.valid_up_to();
        let n = e.error_len().unwrap_or(v.len() - bad);
        for b in &mut v[bad..bad + n] {
            *b = b'?';
        }
        at = bad + n;
    }
    String::from_utf8(v).unwrap_or_default()
}

/// `word` characters of a Call-ID (RFC 3261 §25.1): token characters and `()<>:\"/[]?{}`,
/// plus the one `@` that may separate two words.
static CALLID_CHAR: [bool; 256] = scan::with_bytes(scan::TOKEN_CHARS, b"()<>:\\\"/[]?{}@");

/// A parsed SIP request or response over the bytes it arrived in.
///
/// Cloning is cheap (reference-counted bytes plus the header index).
#[derive(Clone)]
pub struct Message {
    /// The whole message: head and body, nothing after the body.
    raw: Bytes,
    /// `raw[..head_len]`, validated as UTF-8 once.
    head: ByteString,
    start: StartLine,
    start_line_end: u32,
    headers: Vec<HeaderEntry>,
    content_length: ContentLength,
    deferred: Option<ParseError>,
    limits: Limits,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("start_line", &self.start_line())
            .field("headers", &self.headers.len())
            .field("body_len", &self.body().len())
            .finish()
    }
}

impl Message {
    /// Parse one UDP datagram: one datagram is one message. Bytes after the body that
    /// Content-Length announces are ignored; without Content-Length the body is the rest.
    /// Leading CRLFs (RFC 3261 §7.5) are skipped.
    pub fn parse_datagram(bytes: Bytes, limits: &Limits) -> Result<Message, ParseError> {
        if bytes.len() > limits.max_message_size {
            return Err(ParseError::MessageTooLarge {
                limit: limits.max_message_size,
            });
        }
        // Trimmed in place (no `slice`: each one is a reference-count increment and, when
        // the original drops, a decrement, on the hot path of every datagram).
        let mut bytes = bytes;
        bytes.advance(leading_crlf(&bytes));
        let mut head = match parse_head(&bytes, limits) {
            Err(ParseError::Incomplete) => {
                return Err(ParseError::BadHeaderLine {
                    offset: bytes.len(),
                })
            }
            other => other?,
        };
        let available = bytes.len() - head.len;
        let body_len = match head.content_length {
            ContentLength::Value(n) if n > available => {
                defer(
                    &mut head.deferred,
                    ParseError::BodyTooShort {
                        declared: n,
                        available,
                    },
                );
                available
            }
            ContentLength::Value(n) => n,
            _ => available,
        };
        bytes.truncate(head.len + body_len);
        Message::from_head(bytes, head, limits)
    }

    /// Parse a complete message held in `bytes` (head and exactly its body), e.g. in tests.
    /// Over a stream use [`super::StreamFramer`]; over UDP [`Message::parse_datagram`].
    pub fn parse(bytes: Bytes) -> Result<Message, ParseError> {
        Message::parse_datagram(bytes, &Limits::default())
    }

    pub(crate) fn from_head(
        raw: Bytes,
        mut head: Head,
        limits: &Limits,
    ) -> Result<Message, ParseError> {
        let bytes = raw.get(..head.len).ok_or(ParseError::Incomplete)?;
        let forbidden = head.forbidden;
        // UTF-8 is checked once, by the conversion itself; the text view is the rare case.
        let head_str = match forbidden {
            None => ByteString::try_from(raw.slice(..head.len))
                .unwrap_or_else(|_| ByteString::from(text_view(bytes))),
            Some(_) => ByteString::from(text_view(bytes)),
        };
        if let Some(offset) = forbidden {
            defer(&mut head.deferred, ParseError::ForbiddenByte { offset });
        }
        Ok(Message {
            raw,
            head: head_str,
            start: head.start,
            start_line_end: head.start_line_end,
            headers: head.headers,
            content_length: head.content_length,
            deferred: head.deferred,
            limits: *limits,
        })
    }

    #[inline]
    fn s(&self, span: Span) -> &str {
        self.head.get(span.range()).unwrap_or("")
    }

    /// The message exactly as received (head and body).
    pub fn as_bytes(&self) -> &Bytes {
        &self.raw
    }

    /// The header section, start line and blank line included.
    pub fn head_str(&self) -> &str {
        &self.head
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        self.raw.get(self.head.len()..).unwrap_or(&[])
    }

    /// The body as `Bytes` (zero-copy).
    pub fn body_bytes(&self) -> Bytes {
        self.raw.slice(self.head.len()..)
    }

    /// The limits this message was parsed with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn is_response(&self) -> bool {
        !self.is_request()
    }

    /// The start line, CRLF excluded.
    pub fn start_line(&self) -> &str {
        self.head.get(..self.start_line_end as usize).unwrap_or("")
    }

    /// The method of a request (as written), `None` for a response.
    pub fn method(&self) -> Option<&str> {
        match self.start {
            StartLine::Request { method_span, .. } => Some(self.s(method_span)),
            StartLine::Response { .. } => None,
        }
    }

    /// The classified method of a request, `None` for a response.
    pub fn method_kind(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI as written, `None` for a response.
    pub fn request_uri_str(&self) -> Option<&str> {
        match self.start {
            StartLine::Request { uri, .. } => Some(self.s(uri)),
            StartLine::Response { .. } => None,
        }
    }

    pub(crate) fn request_uri_span(&self) -> Option<Span> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The parsed Request-URI. Errors for a response.
    pub fn request_uri(&self) -> Result<Uri<'_>, ParseError> {
        let s = self.request_uri_str().ok_or(ParseError::BadStartLine {
            what: "not a request",
        })?;
        if s.len() > self.limits.max_uri_length {
            return Err(ParseError::UriTooLong {
                at: Where::StartLine,
                limit: self.limits.max_uri_length,
            });
        }
        Uri::parse(s).map_err(|what| ParseError::BadUri {
            at: Where::StartLine,
            what,
        })
    }

    /// The status code of a response, `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase of a response, `None` for a request.
    pub fn reason(&self) -> Option<&str> {
        match self.start {
            StartLine::Response { reason, .. } => Some(self.s(reason)),
            StartLine::Request { .. } => None,
        }
    }

    /// Content-Length as declared, if present and valid.
    pub fn content_length(&self) -> Option<usize> {
        match self.content_length {
            ContentLength::Value(n) => Some(n),
            _ => None,
        }
    }

    /// Number of header lines.
    pub fn header_count(&self) -> usize {
        self.headers.len()
    }

    /// Every header line in order.
    pub fn fields(&self) -> impl Iterator<Item = Field<'_>> + '_ {
        self.headers.iter().map(move |h| Field {
            name: h.name,
            name_str: self
                .head
                .get(h.line.start as usize..h.name_end as usize)
                .unwrap_or(""),
            value: self.s(h.value),
        })
    }

    pub(crate) fn entries(&self) -> &[HeaderEntry] {
        &self.headers
    }

    /// The values of every header line of a known field, in order (not comma-split).
    pub fn header_values(&self, name: HeaderName) -> impl Iterator<Item = &str> + '_ {
        debug_assert!(name != HeaderName::Other);
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .map(move |h| self.s(h.value))
    }

    /// The value of the first header line of a known field.
    pub fn header(&self, name: HeaderName) -> Option<&str> {
        self.header_values(name).next()
    }

    /// The values of every header line whose name is `name` (any case; compact forms match
    /// their long form).
    pub fn header_values_by_name<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        let known = HeaderName::classify(name.as_bytes());
        self.fields()
            .filter(move |f| {
                if known == HeaderName::Other {
                    f.name == HeaderName::Other && f.name_str.eq_ignore_ascii_case(name)
                } else {
                    f.name == known
                }
            })
            .map(|f| f.value)
    }

    /// Comma-separated elements of every line of a list field, split on demand.
    pub fn list_values(
        &self,
        name: HeaderName,
    ) -> impl Iterator<Item = Result<&str, ParseError>> + '_ {
        let at = Where::Header(name.as_str());
        self.header_values(name)
            .flat_map(CommaSplit::new)
            .map(move |r| {
                r.map_err(|()| ParseError::BadValue {
                    at,
                    what: "unterminated quoted string",
                })
            })
    }

    /// The value of a field that may appear once. `DuplicateHeader` when it appears twice.
    pub fn single(&self, name: HeaderName) -> Result<Option<&str>, ParseError> {
        self.slot(name).single(name)
    }

    /// Like [`single`](Self::single) but the field is required.
    pub fn required(&self, name: HeaderName) -> Result<&str, ParseError> {
        self.slot(name).required(name)
    }

    /// The field's one value, or that it is absent or repeated (its first two lines read).
    fn slot(&self, name: HeaderName) -> Slot<'_> {
        let mut slot = Slot::Absent;
        for v in self.header_values(name).take(2) {
            slot.add(v);
        }
        slot
    }

    /// Every Via value, top first, across lines and commas.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'_>, ParseError>> + '_ {
        self.list_values(HeaderName::Via)
            .map(|r| r.and_then(Via::parse))
    }

    /// The topmost Via.
    pub fn top_via(&self) -> Result<Via<'_>, ParseError> {
        self.vias()
            .next()
            .unwrap_or(Err(ParseError::MissingHeader { name: "Via" }))
    }

    pub fn from(&self) -> Result<NameAddr<'_>, ParseError> {
        NameAddr::parse(self.required(HeaderName::From)?, Where::Header("From"))
    }

    pub fn to(&self) -> Result<NameAddr<'_>, ParseError> {
        NameAddr::parse(self.required(HeaderName::To)?, Where::Header("To"))
    }

    pub fn call_id(&self) -> Result<&str, ParseError> {
        check_call_id(self.required(HeaderName::CallId)?)
    }

    pub fn cseq(&self) -> Result<CSeq<'_>, ParseError> {
        CSeq::parse(self.required(HeaderName::CSeq)?)
    }

    /// Max-Forwards, `None` when absent.
    pub fn max_forwards(&self) -> Result<Option<u8>, ParseError> {
        self.single(HeaderName::MaxForwards)?
            .map(parse_max_forwards)
            .transpose()
    }

    /// Expires, `None` when absent.
    pub fn expires(&self) -> Result<Option<u32>, ParseError> {
        match self.single(HeaderName::Expires)? {
            None => Ok(None),
            Some(v) => match scan::parse_u64(v) {
                Some(n) if n <= u64::from(u32::MAX) => Ok(Some(n as u32)),
                _ => Err(ParseError::BadValue {
                    at: Where::Header("Expires"),
                    what: "not a delta-seconds value",
                }),
            },
        }
    }

    /// Contact: `*`, or the list of contacts (empty when absent).
    pub fn contacts(&self) -> Result<Contacts<'_>, ParseError> {
        Contacts::parse(self)
    }

    /// Route values, top first.
    pub fn routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, ParseError>> + '_ {
        self.name_addr_list(HeaderName::Route)
    }

    /// Record-Route values, top first.
    pub fn record_routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, ParseError>> + '_ {
        self.name_addr_list(HeaderName::RecordRoute)
    }

    /// Path values (RFC 3327), top first.
    pub fn paths(&self) -> impl Iterator<Item = Result<NameAddr<'_>, ParseError>> + '_ {
        self.name_addr_list(HeaderName::Path)
    }

    fn name_addr_list(
        &self,
        name: HeaderName,
    ) -> impl Iterator<Item = Result<NameAddr<'_>, ParseError>> + '_ {
        let at = Where::Header(name.as_str());
        self.list_values(name)
            .map(move |r| r.and_then(|v| NameAddr::parse(v, at)))
    }

    /// Content-Type, trimmed, `None` when absent.
    pub fn content_type(&self) -> Option<&str> {
        self.header(HeaderName::ContentType)
    }

    /// Option tags of Require.
    pub fn require(&self) -> impl Iterator<Item = Result<&str, ParseError>> + '_ {
        self.option_tags(HeaderName::Require)
    }

    /// Option tags of Proxy-Require.
    pub fn proxy_require(&self) -> impl Iterator<Item = Result<&str, ParseError>> + '_ {
        self.option_tags(HeaderName::ProxyRequire)
    }

    /// Option tags of Supported.
    pub fn supported(&self) -> impl Iterator<Item = Result<&str, ParseError>> + '_ {
        self.option_tags(HeaderName::Supported)
    }

    fn option_tags(&self, name: HeaderName) -> impl Iterator<Item = Result<&str, ParseError>> + '_ {
        let at = Where::Header(name.as_str());
        self.list_values(name).map(move |r| {
            r.and_then(|t| {
                if scan::is_token_str(t) {
                    Ok(t)
                } else {
                    Err(ParseError::BadValue {
                        at,
                        what: "not an option tag",
                    })
                }
            })
        })
    }

    /// Check everything a proxy relies on (RFC 3261 §8.1.1, §16.3): the start line, the
    /// mandatory fields, their syntax and cardinality, Via, Contact, Content-Length.
    /// The first problem found is returned; it is fit for the reason phrase of a 400.
    pub fn validate(&self) -> Result<(), ParseError> {
        self.validated().map(|_| ())
    }

    /// [`validate`](Self::validate), keeping what it parsed that the proxy reads again
    /// (the top Via, the Request-URI), so that those are parsed once per message.
    /// Same verdict as `validate`, which is this without the values.
    ///
    /// One walk over the header index reads every field it checks: each Via, Contact,
    /// Route and Record-Route value is parsed as its line comes, and the first problem of
    /// each field is kept; the problems are then reported in the order of the checks (Via,
    /// From, To, Call-ID, CSeq, Max-Forwards, Contact, Route, Record-Route, Request-URI),
    /// the verdict of one accessor after the other.
    pub fn validated(&self) -> Result<Validated<'_>, ParseError> {
        if let Some(e) = &self.deferred {
            return Err(e.clone());
        }
        if let ContentLength::Invalid(e) = &self.content_length {
            return Err(e.clone());
        }
        let mut top_via = None;
        let mut next_via = None;
        let mut via_err = None;
        let mut found = Found::default();
        let mut contacts = ContactCheck::default();
        let mut routes: [Option<Uri<'_>>; 2] = [None, None];
        let mut route_n = 0usize;
        let mut route_err = None;
        let mut rr_err = None;
        for h in &self.headers {
            let v = self.s(h.value);
            match h.name {
                HeaderName::Via if via_err.is_none() => {
                    // A line of one plain value needs no comma split.
                    if let Some(via) = Via::parse_line_plain(v) {
                        keep_via(&mut top_via, &mut next_via, via);
                        continue;
                    }
                    for e in CommaSplit::new(v) {
                        match list_value(e, HeaderName::Via).and_then(Via::parse) {
                            Ok(via) => keep_via(&mut top_via, &mut next_via, via),
                            Err(e) => {
                                via_err = Some(e);
                                break;
                            }
                        }
                    }
                }
                HeaderName::From => found.from.add(v),
                HeaderName::To => found.to.add(v),
                HeaderName::CallId => found.call_id.add(v),
                HeaderName::CSeq => found.cseq.add(v),
                HeaderName::MaxForwards => found.max_forwards.add(v),
                HeaderName::Contact => {
                    found.contact = true;
                    contacts.line(v);
                }
                HeaderName::Route => {
                    found.route = true;
                    if route_err.is_some() {
                        continue;
                    }
                    for e in CommaSplit::new(v) {
                        let at = Where::Header("Route");
                        let uri = list_value(e, HeaderName::Route)
                            .and_then(|r| NameAddr::parse(r, at))
                            .and_then(|r| r.uri());
                        match uri {
                            Ok(uri) => {
                                if let Some(slot) = routes.get_mut(route_n) {
                                    *slot = Some(uri);
                                }
                                route_n += 1;
                            }
                            Err(e) => {
                                route_err = Some(e);
                                break;
                            }
                        }
                    }
                }
                HeaderName::RecordRoute => {
                    found.record_route = true;
                    if rr_err.is_some() {
                        continue;
                    }
                    for e in CommaSplit::new(v) {
                        let at = Where::Header("Record-Route");
                        let r = list_value(e, HeaderName::RecordRoute)
                            .and_then(|r| NameAddr::parse(r, at))
                            .and_then(|r| r.validate());
                        if let Err(e) = r {
                            rr_err = Some(e);
                            break;
                        }
                    }
                }
                HeaderName::ProxyRequire => found.proxy_require = true,
                _ => {}
            }
        }
        if let Some(e) = via_err {
            return Err(e);
        }
        let Some(top_via) = top_via else {
            return Err(ParseError::MissingHeader { name: "Via" });
        };
        let Singles {
            ids,
            call_id,
            cseq,
            max_forwards,
        } = found.singles()?;
        contacts.verdict()?;
        if let Some(e) = route_err {
            return Err(e);
        }
        if let Some(e) = rr_err {
            return Err(e);
        }
        let request_uri = self.checked_request_uri(&cseq)?;
        Ok(Validated {
            top_via,
            next_via,
            request_uri,
            ids,
            call_id,
            routes,
            max_forwards,
            proxy_require: found.proxy_require,
        })
    }

    /// A request's Request-URI, checked (no headers; CSeq names the same method); `None`
    /// for a response. The last step of [`validated`](Self::validated).
    fn checked_request_uri(&self, cseq: &CSeq<'_>) -> Result<Option<Uri<'_>>, ParseError> {
        let Some(method) = self.method() else {
            return Ok(None);
        };
        let uri = self.request_uri()?;
        if let Uri::Sip(u) = &uri {
            if u.headers.is_some() {
                return Err(ParseError::BadUri {
                    at: Where::StartLine,
                    what: "headers are not allowed in a Request-URI",
                });
            }
        }
        if cseq.method != method {
            return Err(ParseError::CSeqMethodMismatch);
        }
        Ok(Some(uri))
    }

    /// [`validated`](Self::validated) as it was before the one walk over the index: each
    /// list field read through its own accessor. The tests' oracle.
    #[cfg(test)]
    pub(crate) fn validated_by_accessors(&self) -> Result<Validated<'_>, ParseError> {
        if let Some(e) = &self.deferred {
            return Err(e.clone());
        }
        if let ContentLength::Invalid(e) = &self.content_length {
            return Err(e.clone());
        }
        let mut top_via = None;
        let mut next_via = None;
        for v in self.vias() {
            let v = v?;
            if top_via.is_none() {
                top_via = Some(v);
            } else if next_via.is_none() {
                next_via = Some(v);
            }
        }
        let Some(top_via) = top_via else {
            return Err(ParseError::MissingHeader { name: "Via" });
        };
        let mut found = Found::default();
        for h in &self.headers {
            match h.name {
                HeaderName::From => found.from.add(self.s(h.value)),
                HeaderName::To => found.to.add(self.s(h.value)),
                HeaderName::CallId => found.call_id.add(self.s(h.value)),
                HeaderName::CSeq => found.cseq.add(self.s(h.value)),
                HeaderName::MaxForwards => found.max_forwards.add(self.s(h.value)),
                HeaderName::Contact => found.contact = true,
                HeaderName::Route => found.route = true,
                HeaderName::RecordRoute => found.record_route = true,
                HeaderName::ProxyRequire => found.proxy_require = true,
                _ => {}
            }
        }
        let Singles {
            ids,
            call_id,
            cseq,
            max_forwards,
        } = found.singles()?;
        if found.contact {
            Contacts::check(self)?;
        }
        let mut routes: [Option<Uri<'_>>; 2] = [None, None];
        if found.route {
            for (i, r) in self.routes().enumerate() {
                let uri = r?.uri()?;
                if let Some(slot) = routes.get_mut(i) {
                    *slot = Some(uri);
                }
            }
        }
        if found.record_route {
            for r in self.record_routes() {
                r?.validate()?;
            }
        }
        let request_uri = self.checked_request_uri(&cseq)?;
        Ok(Validated {
            top_via,
            next_via,
            request_uri,
            ids,
            call_id,
            routes,
            max_forwards,
            proxy_require: found.proxy_require,
        })
    }

    /// Count leading CRLF bytes of a buffer (keepalives before a message are ignored).
    pub fn leading_crlf(buf: &[u8]) -> usize {
        leading_crlf(buf)
    }
}

fn leading_crlf(buf: &[u8]) -> usize {
    let mut i = 0;
    while i + 1 < buf.len() && buf[i] == b'\r' && buf[i + 1] == b'\n' {
        i += 2;
    }
    i
}

/// The top two Vias of a message, as its Vias come.
#[inline(always)]
fn keep_via<'a>(top: &mut Option<Via<'a>>, next: &mut Option<Via<'a>>, via: Via<'a>) {
    if top.is_none() {
        *top = Some(via);
    } else if next.is_none() {
        *next = Some(via);
    }
}

/// One element of a list field as [`Message::list_values`] gives it.
#[inline]
fn list_value(e: Result<&str, ()>, name: HeaderName) -> Result<&str, ParseError> {
    e.map_err(|()| ParseError::BadValue {
        at: Where::Header(name.as_str()),
        what: "unterminated quoted string",
    })
}

/// `callid = word [ "@" word ]` (RFC 3261 §25.1).
fn check_call_id(v: &str) -> Result<&str, ParseError> {
    // One pass over the word bytes, counting '@'.
    let mut ats = 0;
    let ok = !v.is_empty()
        && v.bytes().all(|b| {
            ats += usize::from(b == b'@');
            CALLID_CHAR[b as usize]
        })
        && ats <= 1;
    if ok {
        Ok(v)
    } else {
        Err(ParseError::BadValue {
            at: Where::Header("Call-ID"),
            what: "not a callid",
        })
    }
}

fn parse_max_forwards(v: &str) -> Result<u8, ParseError> {
    match scan::parse_u64(v) {
        Some(n) if n <= 255 => Ok(n as u8),
        _ => Err(ParseError::BadValue {
            at: Where::Header("Max-Forwards"),
            what: "not an integer from 0 to 255",
        }),
    }
}

/// What one walk over the header index finds of the fields [`Message::validated`] checks:
/// the value of each single field (or that it is repeated) and which list fields occur.
#[derive(Default)]
struct Found<'a> {
    from: Slot<'a>,
    to: Slot<'a>,
    call_id: Slot<'a>,
    cseq: Slot<'a>,
    max_forwards: Slot<'a>,
    contact: bool,
    route: bool,
    record_route: bool,
    proxy_require: bool,
}

/// The single fields [`Message::validated`] checks, read from what the walk [`Found`].
struct Singles<'a> {
    ids: RequestIds<'a>,
    call_id: &'a str,
    cseq: CSeq<'a>,
    max_forwards: Option<u8>,
}

impl<'a> Found<'a> {
    /// From, To, Call-ID, CSeq and Max-Forwards checked, in this order (the first error is
    /// the one reported).
    fn singles(&self) -> Result<Singles<'a>, ParseError> {
        let from = NameAddr::parse(self.from.required(HeaderName::From)?, Where::Header("From"))?;
        from.validate()?;
        let to = NameAddr::parse(self.to.required(HeaderName::To)?, Where::Header("To"))?;
        to.validate()?;
        let call_id = check_call_id(self.call_id.required(HeaderName::CallId)?)?;
        let cseq = CSeq::parse(self.cseq.required(HeaderName::CSeq)?)?;
        let max_forwards = match self.max_forwards.single(HeaderName::MaxForwards)? {
            Some(v) => Some(parse_max_forwards(v)?),
            None => None,
        };
        Ok(Singles {
            ids: RequestIds {
                from_tag: from.tag(),
                to_tag: to.tag(),
                cseq: cseq.seq,
            },
            call_id,
            cseq,
            max_forwards,
        })
    }
}

/// A field that may appear once: absent, its one value, or repeated.
#[derive(Default, Clone, Copy)]
enum Slot<'a> {
    #[default]
    Absent,
    One(&'a str),
    Repeated,
}

impl<'a> Slot<'a> {
    fn add(&mut self, v: &'a str) {
        *self = match self {
            Slot::Absent => Slot::One(v),
            _ => Slot::Repeated,
        };
    }

    /// [`Message::single`]'s answer (absent: `None`; repeated: an error).
    fn single(self, name: HeaderName) -> Result<Option<&'a str>, ParseError> {
        match self {
            Slot::Absent => Ok(None),
            Slot::One(v) => Ok(Some(v)),
            Slot::Repeated => Err(ParseError::DuplicateHeader {
                name: name.as_str(),
            }),
        }
    }

    /// [`Message::required`]'s answer (absent or repeated: an error).
    fn required(self, name: HeaderName) -> Result<&'a str, ParseError> {
        self.single(name)?.ok_or(ParseError::MissingHeader {
            name: name.as_str(),
        })
    }
}

/// What [`Message::validated`] parsed and the proxy reads again.
#[derive(Debug, Clone)]
pub struct Validated<'a> {
    /// The topmost Via (the sender's).
    pub top_via: Via<'a>,
    /// The Via below it, if any (where a proxy sends a response).
    pub next_via: Option<Via<'a>>,
    /// The Request-URI of a request; `None` for a response.
    pub request_uri: Option<Uri<'a>>,
    /// The From and To tags and the CSeq number.
    pub ids: RequestIds<'a>,
    /// The Call-ID, checked.
    pub call_id: &'a str,
    /// The URIs of the first two Route values, top first (`None`: no such value); a proxy
    /// routes on them (siprox's own double Record-Route comes back as two).
    pub routes: [Option<Uri<'a>>; 2],
    /// Max-Forwards as [`Message::max_forwards`] reads it (`None`: absent).
    pub max_forwards: Option<u8>,
    /// Whether a Proxy-Require line is present: [`Message::proxy_require`] has tags to read
    /// only then.
    pub proxy_require: bool,
}

/// The From tag, To tag and CSeq number of a message: with its Call-ID, what identifies a
/// request of a dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestIds<'a> {
    pub from_tag: Option<&'a str>,
    pub to_tag: Option<&'a str>,
    pub cseq: u32,
}

impl<'a> RequestIds<'a> {
    /// Read from the message (what is missing or malformed reads as absent, CSeq 0).
    pub fn of(msg: &'a Message) -> Self {
        RequestIds {
            from_tag: msg.from().ok().and_then(|f| f.tag()),
            to_tag: msg.to().ok().and_then(|t| t.tag()),
            cseq: msg.cseq().map(|c| c.seq).unwrap_or(0),
        }
    }
}

/// One header line: its classified name, its name as written, and its trimmed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: HeaderName,
    pub name_str: &'a str,
    pub value: &'a str,
}

impl Field<'_> {
    /// The value with folds and runs of LWS collapsed to single spaces (allocates only when
    /// there is something to collapse).
    pub fn unfolded(&self) -> std::borrow::Cow<'_, str> {
        unfold(self.value)
    }
}

/// Collapse LWS runs that contain a fold (CR/LF) into one SP; borrowed when there is none.
pub fn unfold(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.bytes().any(|b| b == b'\r' || b == b'\n') {
        return std::borrow::Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len());
    let mut in_ws = false;
    for c in v.chars() {
        if matches!(c, ' ' | '\t' | '\r' | '\n') {
            if !in_ws {
                out.push(' ');
            }
            in_ws = true;
        } else {
            out.push(c);
            in_ws = false;
        }
    }
    std::borrow::Cow::Owned(trim_lws(&out).to_owned())
}

#[cfg(test)]
mod byte_tests {
    use super::*;

    #[test]
    fn callid_chars_are_word_chars() {
        for b in 0..=255u8 {
            let want = scan::is_token(b)
                || matches!(
                    b,
                    b'(' | b')'
                        | b'<'
                        | b'>'
                        | b':'
                        | b'\\'
                        | b'"'
                        | b'/'
                        | b'['
                        | b']'
                        | b'?'
                        | b'{'
                        | b'}'
                        | b'@'
                );
            assert_eq!(CALLID_CHAR[b as usize], want, "byte {b:#04x}");
        }
    }

    fn msg(from: &[u8]) -> Vec<u8> {
        let mut m = b"MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: ".to_vec();
        m.extend_from_slice(from);
        m.extend_from_slice(b";tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c1\r\nCSeq: 1 MESSAGE\r\nSubject: Gr\xfc\xdfe\r\nContent-Length: 0\r\n\r\n");
        m
    }

    #[test]
    fn latin1_values_are_accepted_and_kept_byte_for_byte() {
        let raw = msg(b"\"M\xfcller\" <sip:m@example.com>");
        let m = Message::parse(Bytes::from(raw.clone())).expect("Latin-1 is accepted");
        assert_eq!(m.validate(), Ok(()));
        assert_eq!(m.as_bytes().as_ref(), &raw[..], "kept as received");
        assert_eq!(m.from().expect("From").uri_str, "sip:m@example.com");
        assert!(m.head_str().contains("\"M?ller\""), "{}", m.head_str());
    }

    #[test]
    fn nul_and_bare_cr_are_refused() {
        for from in [
            &b"\"a\0b\" <sip:m@example.com>"[..],
            b"\"a\rInjected: x\" <sip:m@example.com>",
        ] {
            let m = Message::parse(Bytes::from(msg(from))).expect("indexes");
            assert!(
                matches!(m.validate(), Err(ParseError::ForbiddenByte { .. })),
                "{:?}",
                m.validate()
            );
            assert!(!m.head_str().contains(['\0']));
        }
    }

    #[test]
    fn validated_ids_are_the_tags_and_cseq() {
        let m = Message::parse(Bytes::from_static(
            b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
f: <sip:a@example.com>;tag=ft\r\nt: <sip:b@example.com> ; TAG=tt\r\nCall-ID: c\r\n\
CSeq: 2147483647 INVITE\r\nl: 0\r\n\r\n",
        ))
        .unwrap();
        let ids = m.validated().unwrap().ids;
        assert_eq!(ids, RequestIds::of(&m));
        assert_eq!(
            ids,
            RequestIds {
                from_tag: Some("ft"),
                to_tag: Some("tt"),
                cseq: 2_147_483_647,
            }
        );
        assert_eq!(m.validated().unwrap().call_id, m.call_id().unwrap());
    }

    /// A head with NULs, CRs, LFs and backslashes put anywhere: when it indexes, the first
    /// forbidden byte the line search noted is the one a separate pass over the head finds.
    fn forbidden_is_found_by_the_line_search(raw: &[u8]) {
        let Ok(head) = parse_head(raw, &Limits::default()) else {
            return;
        };
        let bytes = raw.get(..head.len).expect("the head is in the buffer");
        assert_eq!(head.forbidden, forbidden_byte(bytes), "{raw:?}");
    }

    #[test]
    fn forbidden_bytes_at_the_edges_of_lines() {
        for raw in [
            &b"OPTIONS sip:a@b SIP/2.0\r\nX: \0\r\n\r\n"[..],
            b"OPTIONS sip:a@b SIP/2.0\r\nX: \\\0\r\n\r\n",
            b"OPTIONS sip:a\0@b SIP/2.0\r\nX: a\r\n\r\n",
            b"OPTIONS sip:a@b SIP/2.0\r\r\nX: a\r\n\r\n",
            b"OPTIONS sip:a@b SIP/2.0\r\nX: a\r\r\n\r\n",
            b"OPTIONS sip:a@b SIP/2.0\r\nX: a\r\n \rb\r\n\r\n",
            b"OPTIONS sip:a@b SIP/2.0\r\nX: a\r b\r\nY: \0\r\n\r\n",
        ] {
            let head = parse_head(raw, &Limits::default()).expect("indexes");
            assert!(head.forbidden.is_some() || raw.windows(2).any(|w| w == b"\\\0"));
            forbidden_is_found_by_the_line_search(raw);
        }
    }

    /// Every string of up to 5 bytes over the bytes that matter (the three searched for,
    /// the other controls below 0x0e, their neighbours, high bytes), and 40-byte lines
    /// with one or two of them anywhere, from every start: the word search finds what
    /// `memchr3` finds.
    #[test]
    fn ctl_search_is_memchr3() {
        let alphabet = [
            b'\n', b'\r', 0, b'\t', 0x0b, 0x0e, 0x0f, b'a', 0x80, 0xff, 0x8d,
        ];
        let mut cases = crate::sip::scan::every_string(&alphabet, 5);
        for &x in &alphabet {
            for &y in &alphabet {
                for i in 0..40 {
                    let mut v = vec![b'a'; 40];
                    v[i] = x;
                    v[(i * 7 + 3) % 40] = y;
                    cases.push(v);
                }
            }
        }
        for v in &cases {
            for at in 0..=v.len() {
                let want = memchr::memchr3(b'\n', b'\r', 0, &v[at..]).map(|p| at + p);
                assert_eq!(find_ctl(v, at), want, "{v:?} from {at}");
            }
        }
        assert!(cases.len() > 150_000, "{}", cases.len());
    }

    /// The run-of-token reading of a header name gives the general reading's name, colon
    /// and error, on every line of up to 6 bytes over the bytes that matter and on names.
    #[test]
    fn header_name_run_is_the_search() {
        let alphabet = b"Vi: \t-@\xc3";
        let mut lines = crate::sip::scan::every_string(alphabet, 6);
        for name in [
            "Via",
            "v",
            "Call-ID",
            "X-Custom",
            "Content-Length",
            "To",
            "t",
        ] {
            for sep in [":", " :", "\t: ", ":x", " x:", ""] {
                lines.push(format!("{name}{sep} value").into_bytes());
            }
        }
        for l in &lines {
            assert_eq!(header_name(l, 7), header_name_by_search(l, 7), "{l:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn forbidden_byte_agrees_with_a_separate_pass(
            edits in proptest::collection::vec(
                (0usize..200, proptest::sample::select(b"\0\r\n\\ a:\t".to_vec())),
                0..6,
            ),
        ) {
            let mut raw = msg(b"<sip:m@example.com>");
            for (at, b) in edits {
                let at = at % raw.len();
                raw.insert(at, b);
            }
            forbidden_is_found_by_the_line_search(&raw);
        }
    }

    /// What validation keeps is what the accessors read.
    #[test]
    fn validated_keeps_max_forwards_and_whether_proxy_require_is_there() {
        let base =
            "OPTIONS sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c@h\r\nCSeq: 1 OPTIONS\r\n";
        for (extra, max_forwards, proxy_require) in [
            ("", None, false),
            ("Max-Forwards: 0\r\n", Some(0), false),
            ("Max-Forwards: 70\r\nProxy-Require: foo\r\n", Some(70), true),
            (
                "proxy-require: foo, bar\r\nMAX-FORWARDS:  255 \r\n",
                Some(255),
                true,
            ),
        ] {
            let raw = format!("{base}{extra}Content-Length: 0\r\n\r\n");
            let m = Message::parse(Bytes::from(raw)).unwrap();
            let v = m.validated().unwrap();
            assert_eq!(v.max_forwards, max_forwards, "{extra}");
            assert_eq!(v.max_forwards, m.max_forwards().unwrap(), "{extra}");
            assert_eq!(v.proxy_require, proxy_require, "{extra}");
            assert_eq!(
                v.proxy_require,
                m.proxy_require().next().is_some(),
                "{extra}"
            );
            assert_eq!(v.call_id, m.call_id().unwrap());
        }
    }

    /// The one walk over the index finds what the per-field accessors find: the first
    /// missing or repeated field, in the order the checks run.
    #[test]
    fn validated_reports_missing_and_repeated_fields_in_order() {
        let base =
            "OPTIONS sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n";
        for (fields, want) in [
            (
                "To: <sip:b@x>\r\nCall-ID: c\r\nCall-ID: d\r\nCSeq: 1 OPTIONS\r\n",
                ParseError::MissingHeader { name: "From" },
            ),
            (
                "From: <sip:a@x>\r\nTo: <sip:b@x>\r\nCall-ID: c\r\ni: d\r\nCSeq: 1 OPTIONS\r\n",
                ParseError::DuplicateHeader { name: "Call-ID" },
            ),
            (
                "f: <sip:a@x>\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 1\r\nMax-Forwards: 2\r\n",
                ParseError::DuplicateHeader { name: "Max-Forwards" },
            ),
            (
                "From: <sip:a@x>\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 256\r\n",
                ParseError::BadValue {
                    at: Where::Header("Max-Forwards"),
                    what: "not an integer from 0 to 255",
                },
            ),
        ] {
            let raw = format!("{base}{fields}Content-Length: 0\r\n\r\n");
            let m = Message::parse(Bytes::from(raw)).unwrap();
            assert_eq!(m.validate(), Err(want), "{fields}");
        }
    }
}
#[cfg(test)]
mod walk_tests {
    use super::*;

    /// The messages the one walk is compared on: the bench fixtures, the RFC 4475 torture
    /// messages (bare LF made CRLF, as their test does) and a few with several Contact,
    /// Route and Record-Route lines, `*` contacts and quoted commas.
    fn corpus() -> Vec<Vec<u8>> {
        macro_rules! files {
            ($dir:literal, $ext:literal: $($f:literal),* $(,)?) => {
                [$(include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), $dir, $f, $ext)).as_slice()),*]
            };
        }
        let fixtures = files!("/benches/data/", ".sip":
            "invite", "200ok", "200ok-proxied", "200ok-siprox", "register");
        let torture = files!("/tests/data/rfc4475/", ".dat":
            "badaspec", "badbranch", "baddate", "baddn", "badinv01", "badvers", "bcast",
            "bext01", "bigcode", "clerr", "cparam01", "cparam02", "dblreq", "esc01",
            "esc02", "escnull", "escruri", "insuf", "intmeth", "inv2543", "invut",
            "longreq", "ltgtruri", "lwsdisp", "lwsruri", "lwsstart", "mcl01",
            "mismatch01", "mismatch02", "mpart01", "multi01", "ncl", "noreason",
            "novelsc", "quotbal", "regaut01", "regbadct", "regescrt", "scalar02",
            "scalarlg", "sdp01", "semiuri", "transports", "trws", "unkscm", "unksm2",
            "unreason", "wsinv", "zeromf",
        );
        let mut out: Vec<Vec<u8>> = fixtures.iter().map(|f| f.to_vec()).collect();
        for raw in torture {
            let mut crlf = Vec::with_capacity(raw.len() + 64);
            for (i, &b) in raw.iter().enumerate() {
                if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
                    crlf.push(b'\r');
                }
                crlf.push(b);
            }
            out.push(crlf);
        }
        let base = "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1, SIP/2.0/TCP g:5060;branch=z9hG4bK2\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: c@h\r\nCSeq: 2 REGISTER\r\n";
        for extra in [
            "Contact: *\r\nExpires: 0\r\n",
            "Contact: *\r\nContact: <sip:a@h>\r\n",
            "Contact: <sip:a@h>, *\r\n",
            "Contact: \"x,y\" <sip:a@h;p=1,2>;q=0.5, <sip:b@h>\r\nm: sip:c@h;expires=3\r\n",
            "Route: <sip:r1;lr>, <sip:r2;lr>\r\nRoute: <sip:r3;lr>\r\nRecord-Route: <sip:rr1;lr>\r\n",
            "Route: <sip:r1;lr>\r\nRecord-Route: <sip:rr1;lr>, <sip:rr2;lr>\r\nRecord-Route: <sip:rr3>\r\n",
            "Via: SIP/2.0/UDP third;branch=z9hG4bK3\r\nContact: <sip:a@h>\r\nRoute: <sip:r>\r\n",
        ] {
            out.push(format!("{base}{extra}Content-Length: 0\r\n\r\n").into_bytes());
        }
        out
    }

    /// The URI texts of a message as a header or request line may carry them: each `<...>`
    /// and each request line's second word.
    fn uri_texts(raw: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = raw;
        while let Some(lt) = rest.iter().position(|&b| b == b'<') {
            rest = &rest[lt + 1..];
            if let Some(gt) = rest.iter().take(300).position(|&b| b == b'>') {
                out.push(&rest[..gt]);
            }
        }
        for line in raw.split(|&b| b == b'\n') {
            if let Some(w) = line.split(|&b| b == b' ').nth(1) {
                out.push(w);
            }
        }
        out
    }

    /// `Uri::check` (what validation runs on the URIs it does not keep) gives
    /// `Uri::parse`'s verdict and error: on every URI text of the corpus and on every text
    /// made from one by replacing a byte with one that matters to a URI, or dropping it.
    #[test]
    fn uri_check_is_parse() {
        let (mut ok, mut bad) = (0, 0);
        let mut one = |b: &[u8]| {
            let Ok(u) = std::str::from_utf8(b) else {
                return;
            };
            let want = Uri::parse(u).map(|_| ());
            assert_eq!(Uri::check(u), want, "{u:?}");
            if want.is_ok() {
                ok += 1;
            } else {
                bad += 1;
            }
        };
        for raw in corpus() {
            for u in uri_texts(&raw) {
                one(u);
                for at in 0..u.len() {
                    let mut m = u.to_vec();
                    m.remove(at);
                    one(&m);
                    for &b in b"@:;=?%[]. \"<>,&x5\x7f\0" {
                        let mut m = u.to_vec();
                        m[at] = b;
                        one(&m);
                    }
                }
            }
        }
        assert!(ok > 10_000 && bad > 10_000, "{ok} {bad}");
    }

    fn same_verdict(raw: &[u8]) {
        let Ok(m) = Message::parse(Bytes::copy_from_slice(raw)) else {
            return;
        };
        assert_eq!(
            format!("{:?}", m.validated()),
            format!("{:?}", m.validated_by_accessors()),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }

    /// The one walk gives what the accessors one after the other gave: the same values
    /// and the same first error, on every message of the corpus and on every message made
    /// from one by replacing one byte of its head with a byte that matters to the lists
    /// (separators, quotes, brackets, `*`, LWS, a line end).
    #[test]
    fn one_walk_is_the_accessors() {
        let mut n = 0;
        for raw in corpus() {
            same_verdict(&raw);
            let head_len = raw
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(raw.len(), |p| p + 4);
            for at in 0..head_len {
                for &b in b",;\"<>*: @=x\r\n" {
                    let mut m = raw.clone();
                    m[at] = b;
                    same_verdict(&m);
                    n += 1;
                }
            }
        }
        assert!(n > 100_000, "{n}");
    }

    proptest::proptest! {
        /// The same on messages with lines moved, repeated or dropped.
        #[test]
        fn one_walk_is_the_accessors_on_shuffled_lines(
            pick in 0usize..64,
            ops in proptest::collection::vec((0usize..40, 0usize..40, 0u8..3), 1..6),
        ) {
            let corpus = corpus();
            let raw = &corpus[pick % corpus.len()];
            let text = String::from_utf8_lossy(raw).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let mut lines: Vec<&str> = head.split("\r\n").collect();
            for (a, b, op) in ops {
                if lines.len() < 2 {
                    break;
                }
                let (a, b) = (1 + a % (lines.len() - 1), 1 + b % (lines.len() - 1));
                match op {
                    0 => lines.swap(a, b),
                    1 => lines.insert(b, lines[a]),
                    _ => {
                        lines.remove(a);
                    }
                }
            }
            let m = format!("{}\r\n\r\n{body}", lines.join("\r\n"));
            same_verdict(m.as_bytes());
        }
    }
}
