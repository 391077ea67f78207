//! The one error type of the SIP message layer: what is wrong and where.
//! Its `Display` is short and printable so that it can become the reason phrase of a 400;
//! it must never echo peer bytes that could break a status line (no CR, LF or control bytes).

use std::fmt;

/// Which part of a message an error refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// The request or status line.
    StartLine,
    /// A header field, by its canonical (long) name, e.g. `"Via"`.
    Header(&'static str),
    /// A header field with a name siprox does not know.
    OtherHeader,
    /// The message body.
    Body,
}

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Where::StartLine => f.write_str("start line"),
            Where::Header(name) => f.write_str(name),
            Where::OtherHeader => f.write_str("header"),
            Where::Body => f.write_str("body"),
        }
    }
}

/// Everything that can be wrong with a SIP message, a header value or a URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The message is not complete yet (stream framing only; a datagram is never incomplete).
    #[error("incomplete message")]
    Incomplete,
    #[error("message larger than {limit} bytes")]
    MessageTooLarge { limit: usize },
    #[error("more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("{at} line longer than {limit} bytes")]
    LineTooLong { at: Where, limit: usize },
    #[error("URI longer than {limit} bytes in {at}")]
    UriTooLong { at: Where, limit: usize },
    #[error("malformed start line: {what}")]
    BadStartLine { what: &'static str },
    #[error("unsupported SIP version")]
    BadVersion,
    #[error("bad status code")]
    BadStatusCode,
    #[error("malformed header line at byte {offset}")]
    BadHeaderLine { offset: usize },
    /// A NUL, or a CR that does not start a line end, in the head: never valid in SIP, and
    /// a way to smuggle a header past a parser that stops at NUL or splits at CR.
    #[error("NUL or bare CR at byte {offset}")]
    ForbiddenByte { offset: usize },
    #[error("missing {name} header")]
    MissingHeader { name: &'static str },
    #[error("more than one {name} header")]
    DuplicateHeader { name: &'static str },
    #[error("bad {at} value: {what}")]
    BadValue { at: Where, what: &'static str },
    #[error("bad URI in {at}: {what}")]
    BadUri { at: Where, what: &'static str },
    #[error("missing Content-Length on a stream transport")]
    MissingContentLength,
    #[error("Content-Length {declared} larger than the {available} bytes of body")]
    BodyTooShort { declared: usize, available: usize },
    #[error("CSeq method does not match the request method")]
    CSeqMethodMismatch,
}

impl ParseError {
    /// A short reason phrase for a `400` answering this error, e.g. `Bad Request (bad Via value: ...)`.
    ///
    /// The text is plain ASCII by construction: every variant prints static text and numbers.
    pub fn reason_phrase(&self) -> String {
        format!("Bad Request ({self})")
    }

    /// True when the error is about the SIP version, which RFC 3261 §8.2.2 answers with 505.
    pub fn is_version(&self) -> bool {
        matches!(self, ParseError::BadVersion)
    }
}
