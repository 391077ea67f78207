//! HTTP/1.1 for the management endpoint and for HTTP requests that arrive on a SIP stream
//! (SER style): detect, frame and parse requests, build responses. Sans-IO over a
//! `BytesMut` the caller fills. Must never panic or wait on what a client sends: every
//! malformed or oversized request is an [`HttpError`] with the status to answer.

use bytes::{Buf, Bytes, BytesMut};

/// What the framer accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Request line plus headers, in bytes (431 beyond).
    pub max_head: usize,
    /// Header lines (431 beyond).
    pub max_headers: usize,
    /// Body, in bytes (413 beyond).
    pub max_body: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head: 16 * 1024,
            max_headers: 64,
            max_body: 1024 * 1024,
        }
    }
}

/// Why a request cannot be served; each maps to the status to answer before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request headers too large")]
    HeadTooLarge,
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("a body needs Content-Length")]
    LengthRequired,
    #[error("transfer-encoding not supported")]
    NotImplemented,
    #[error("HTTP version not supported")]
    VersionNotSupported,
}

impl HttpError {
    /// The status code that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::LengthRequired => 411,
            HttpError::NotImplemented => 501,
            HttpError::VersionNotSupported => 505,
        }
    }

    /// The response for this error; the connection closes after it (framing is lost).
    pub fn response(&self) -> HttpResponse {
        let mut r = HttpResponse::text(self.status(), &format!("{self}\n"));
        r.close = true;
        r
    }
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// The request target as sent (`/`, `/RPC2`, `/metrics?x`).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Header fields in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The whole request as received (head and body): on a SIP listener it is parsed as a
    /// `sip::Message` (method `POST`, the body the call) for the route script, SER style.
    pub raw: Bytes,
}

impl HttpRequest {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The media type of the body, lower-case, without parameters (`text/xml`).
    pub fn media_type(&self) -> Option<String> {
        let ct = self.header("content-type")?;
        let essence = ct.split(';').next().unwrap_or("").trim();
        Some(essence.to_ascii_lowercase())
    }

    /// The path of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Whether the client wants the connection kept after the response.
    pub fn keep_alive(&self) -> bool {
        let conn = self.header("connection").map(str::to_ascii_lowercase);
        let has = |t: &str| {
            conn.as_deref()
                .is_some_and(|c| c.split(',').any(|x| x.trim() == t))
        };
        if self.minor == 0 {
            has("keep-alive")
        } else {
            !has("close")
        }
    }
}

/// True when `buf` starts like an HTTP request rather than a SIP message: a method token
/// followed by a target that starts with `/` (or `*`). A SIP Request-URI is always absolute
/// (`sip:`, `sips:`, `tel:`...), so this decides from the first bytes, before the line is
/// complete. Used on SIP TCP/TLS streams to hand HTTP to the RPC layer (SER style).
pub fn looks_like_http(buf: &[u8]) -> bool {
    let tok = buf
        .iter()
        .take(16)
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    if tok == 0 || tok >= 16 {
        return false;
    }
    matches!(buf.get(tok), Some(b' ')) && matches!(buf.get(tok + 1), Some(b'/') | Some(b'*'))
}

/// Frames HTTP/1.x requests out of a stream buffer: `Ok(None)` until a whole request (head
/// and `Content-Length` body) is there; an error as soon as a limit is crossed, so a client
/// can never make the server buffer more than the limits.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpFramer {
    limits: HttpLimits,
}

impl HttpFramer {
    pub fn new(limits: HttpLimits) -> HttpFramer {
        HttpFramer { limits }
    }

    /// The next complete request, removed from `buf`.
    pub fn next_request(&self, buf: &mut BytesMut) -> Result<Option<HttpRequest>, HttpError> {
        // Tolerate blank lines between requests (RFC 9112 §2.2).
        while buf.starts_with(b"\r\n") {
            buf.advance(2);
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let Some(head_len) = find_head_end(buf) else {
            if buf.len() > self.limits.max_head {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        };
        if head_len > self.limits.max_head {
            return Err(HttpError::HeadTooLarge);
        }
        let head = std::str::from_utf8(&buf[..head_len])
            .map_err(|_| HttpError::BadRequest("header section is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let start = lines.next().unwrap_or("");
        let mut parts = start.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(HttpError::BadRequest("malformed request line"));
        };
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(HttpError::BadRequest("malformed method"));
        }
        if target.is_empty() {
            return Err(HttpError::BadRequest("empty request target"));
        }
        let minor = match version {
            "HTTP/1.1" => 1,
            "HTTP/1.0" => 0,
            v if v.starts_with("HTTP/") => return Err(HttpError::VersionNotSupported),
            _ => return Err(HttpError::BadRequest("malformed HTTP version")),
        };
        let mut headers = Vec::new();
        for line in lines {
            if line.is_empty() {
                continue;
            }
            if headers.len() >= self.limits.max_headers {
                return Err(HttpError::HeadTooLarge);
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(HttpError::BadRequest("header line without a colon"));
            };
            if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(HttpError::BadRequest("malformed header name"));
            }
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut len = None;
        for (n, v) in &headers {
            if n.eq_ignore_ascii_case("transfer-encoding") {
                return Err(HttpError::NotImplemented);
            }
            if n.eq_ignore_ascii_case("content-length") {
                let l: usize = v
                    .parse()
                    .map_err(|_| HttpError::BadRequest("malformed Content-Length"))?;
                // Two different lengths: request smuggling territory, refuse.
                if len.is_some_and(|p| p != l) {
                    return Err(HttpError::BadRequest("conflicting Content-Length"));
                }
                len = Some(l);
            }
        }
        let body_len = match len {
            Some(l) => l,
            None if method == "POST" || method == "PUT" => return Err(HttpError::LengthRequired),
            None => 0,
        };
        if body_len > self.limits.max_body {
            return Err(HttpError::BodyTooLarge {
                limit: self.limits.max_body,
            });
        }
        if buf.len() < head_len + body_len {
            return Ok(None);
        }
        let method = method.to_owned();
        let target = target.to_owned();
        let raw = buf.split_to(head_len + body_len).freeze();
        let body = raw.slice(head_len..);
        Ok(Some(HttpRequest {
            method,
            target,
            minor,
            headers,
            body,
            raw,
        }))
    }
}

/// Length of the head including the blank line, if complete.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub body: Vec<u8>,
    /// Close the connection after this response.
    pub close: bool,
}

impl HttpResponse {
    /// A response with `body` of media type `content_type`.
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> HttpResponse {
        HttpResponse {
            status,
            content_type: Some(content_type),
            body,
            close: false,
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: &str) -> HttpResponse {
        HttpResponse::new(
            status,
            "text/plain; charset=utf-8",
            body.as_bytes().to_vec(),
        )
    }

    /// No body (204).
    pub fn no_content() -> HttpResponse {
        HttpResponse {
            status: 204,
            content_type: None,
            body: Vec::new(),
            close: false,
        }
    }

    /// The bytes on the wire (HTTP/1.1).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        out.push_str("Server: siprox\r\n");
        if let Some(ct) = self.content_type {
            out.push_str("Content-Type: ");
            out.push_str(ct);
            out.push_str("\r\n");
        }
        if self.status != 204 {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        if self.close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        let mut b = out.into_bytes();
        b.extend_from_slice(&self.body);
        b
    }
}

/// Reason phrase of the statuses this module produces.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &[u8]) -> (Result<Option<HttpRequest>, HttpError>, BytesMut) {
        let mut b = BytesMut::from(s);
        let r = HttpFramer::default().next_request(&mut b);
        (r, b)
    }

    #[test]
    fn detects_http_but_not_sip() {
        assert!(looks_like_http(b"POST / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"POST /RPC2"));
        assert!(looks_like_http(b"GET /metrics HTTP/1.1"));
        assert!(looks_like_http(b"OPTIONS * HTTP/1.1"));
        assert!(!looks_like_http(b"OPTIONS sip:a@b SIP/2.0\r\n"));
        assert!(!looks_like_http(b"INVITE sips:bob@example.com SIP/2.0"));
        assert!(!looks_like_http(b"SIP/2.0 200 OK\r\n"));
        assert!(!looks_like_http(b"\r\n\r\n"));
        assert!(!looks_like_http(b"POST"));
        assert!(!looks_like_http(b""));
    }

    #[test]
    fn frames_a_post_with_body_and_keeps_the_rest() {
        let (r, rest) = frame(
            b"POST /RPC2 HTTP/1.1\r\nContent-Type: text/xml\r\nContent-Length: 3\r\n\r\nabcGET",
        );
        let r = r.expect("ok").expect("complete");
        assert_eq!(r.method, "POST");
        assert_eq!(r.path(), "/RPC2");
        assert_eq!(r.media_type().as_deref(), Some("text/xml"));
        assert_eq!(&r.body[..], b"abc");
        assert!(r.keep_alive());
        assert_eq!(&rest[..], b"GET");
    }

    #[test]
    fn waits_for_the_whole_request() {
        let (r, _) = frame(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
        assert_eq!(r, Ok(None));
        let (r, _) = frame(b"POST / HTTP/1.1\r\nContent-Le");
        assert_eq!(r, Ok(None));
    }

    #[test]
    fn refuses_what_it_must() {
        let cases: &[(&[u8], u16)] = &[
            (b"POST / HTTP/1.1\r\n\r\n", 411),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                501,
            ),
            (b"POST / HTTP/2.0\r\n\r\n", 505),
            (b"POST  / HTTP/1.1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nno colon\r\n\r\n", 400),
        ];
        for (input, status) in cases {
            let (r, _) = frame(input);
            assert_eq!(
                r.expect_err("must fail").status(),
                *status,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let big = vec![b'a'; 20_000];
        let (r, _) = frame(&big);
        assert_eq!(r.expect_err("head").status(), 431);
    }

    #[test]
    fn http10_closes_unless_asked() {
        let (r, _) = frame(b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(!r.expect("ok").expect("req").keep_alive());
        let (r, _) = frame(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.expect("ok").expect("req").keep_alive());
    }

    #[test]
    fn response_bytes() {
        let r = HttpResponse::new(200, "application/json", b"{}".to_vec());
        let s = String::from_utf8(r.to_bytes()).expect("utf8");
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("Content-Length: 2\r\n"));
        assert!(s.ends_with("\r\n\r\n{}"));
    }
}
