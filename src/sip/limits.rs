//! Size limits applied while parsing and framing; they bound the work a peer can cause.
//! Must never be bypassed: every loop over peer-controlled input is bounded by one of these.

/// Limits on what the parser and the stream framer accept.
///
/// Exceeding one is a specific [`ParseError`](super::ParseError) variant, never a generic failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message (start line + headers + body), in bytes.
    pub max_message_size: usize,
    /// Most header lines in one message.
    pub max_headers: usize,
    /// Longest start line or header line (folded lines count as one), in bytes.
    pub max_line_length: usize,
    /// Longest URI (Request-URI, or a URI read from a header), in bytes.
    pub max_uri_length: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 65_535,
            max_headers: 256,
            max_line_length: 8_192,
            max_uri_length: 4_096,
        }
    }
}
