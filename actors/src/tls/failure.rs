//! Why a TLS handshake failed, classified where it failed: from the dispatch callback's own
//! refusal, OpenSSL's verify result, the SSL library's reason codes on the error stack (an
//! alert the peer sent is a reason code too) and the socket's error; the timeout comes from
//! the runtime's timer. Must never decide by reading an error's text: that text changes
//! between OpenSSL versions, the codes do not.

use std::fmt;
use std::io;

use openssl::ssl::{ErrorCode, SslRef};
use openssl::x509::X509VerifyResult;

use crate::state::TlsFailureLabel;

/// `ERR_LIB_SSL` (`<openssl/err.h>`): only the SSL library's reasons classify a handshake.
const LIB_SSL: i32 = 20;

// SSL library reason codes (`<openssl/sslerr.h>`, the same in OpenSSL 1.1.1 and 3.x).
const R_CERTIFICATE_VERIFY_FAILED: i32 = 134;
const R_NO_CERTIFICATES_RETURNED: i32 = 176;
const R_PEER_DID_NOT_RETURN_A_CERTIFICATE: i32 = 199;
const R_UNEXPECTED_EOF_WHILE_READING: i32 = 294;
/// `SSL_AD_REASON_OFFSET`: an alert received from the peer is reported as this plus the
/// alert's number (RFC 8446 §6.2).
const ALERT_OFFSET: i32 = 1000;

// TLS alert numbers (RFC 8446 §6.2) that name a certificate, or the server name.
const ALERT_BAD_CERTIFICATE: u8 = 42;
const ALERT_UNSUPPORTED_CERTIFICATE: u8 = 43;
const ALERT_CERTIFICATE_REVOKED: u8 = 44;
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;
const ALERT_CERTIFICATE_UNKNOWN: u8 = 46;
const ALERT_UNKNOWN_CA: u8 = 48;
const ALERT_UNRECOGNIZED_NAME: u8 = 112;
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;

/// Why a TLS handshake (either direction) did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// It did not finish within its handshake timeout.
    Timeout,
    /// A certificate was refused: the peer's by us, or ours by the peer.
    Certificate(CertificateFailure),
    /// No server domain for the client's SNI and no default domain (we sent alert 112), or
    /// the server we connected to sent alert 112.
    UnrecognizedName,
    /// The server domain the ClientHello picked is at its `max_connections`.
    DomainLimit,
    /// The peer does not speak TLS as we do (plain text on a TLS port, no shared version or
    /// cipher, a malformed message, an alert that names no certificate): the SSL library's
    /// reason code.
    Protocol { reason: i32 },
    /// The socket failed, or the peer closed it mid-handshake.
    Io(io::ErrorKind),
    /// Anything else (an `Ssl` that could not be made, an error outside the SSL library).
    Other,
}

/// Which certificate was refused, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateFailure {
    /// Our check of the peer's chain failed: OpenSSL's verify result (`X509_V_ERR_*`:
    /// untrusted issuer, expired, revoked, chain too long...).
    Verify(X509VerifyResult),
    /// The peer sent no certificate where one is required.
    Missing,
    /// The peer refused ours with this alert (bad_certificate, unknown_ca,
    /// certificate_expired, certificate_required...).
    RefusedByPeer(u8),
}

/// What the dispatch callback decided against a ClientHello, kept on the `Ssl` for the
/// classification (the error stack says only "callback failed").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnrecognizedName,
    DomainLimit,
}

impl HandshakeFailure {
    /// The `reason` label it is counted under (`siprox_tls_handshake_failures_total`).
    pub fn label(&self) -> TlsFailureLabel {
        match self {
            HandshakeFailure::Timeout => TlsFailureLabel::Timeout,
            HandshakeFailure::Certificate(_) => TlsFailureLabel::Certificate,
            HandshakeFailure::UnrecognizedName => TlsFailureLabel::UnrecognizedName,
            HandshakeFailure::DomainLimit
            | HandshakeFailure::Protocol { .. }
            | HandshakeFailure::Io(_)
            | HandshakeFailure::Other => TlsFailureLabel::Other,
        }
    }

    /// The failure of a handshake on `ssl` that ended with `e`.
    pub fn of(ssl: &SslRef, e: &openssl::ssl::Error) -> HandshakeFailure {
        let reasons: Vec<i32> = e
            .ssl_error()
            .map(|s| {
                s.errors()
                    .iter()
                    .filter(|e| e.library_code() == LIB_SSL)
                    .map(|e| e.reason_code())
                    .collect()
            })
            .unwrap_or_default();
        let io = match (e.code(), e.io_error()) {
            (_, Some(io)) => Some(io.kind()),
            // SYSCALL without an OS error: the peer closed the socket (OpenSSL 1.1.1).
            (ErrorCode::SYSCALL | ErrorCode::ZERO_RETURN, None) => {
                Some(io::ErrorKind::UnexpectedEof)
            }
            _ => None,
        };
        classify(
            crate::tls::dispatch::refusal(ssl),
            ssl.verify_result(),
            &reasons,
            io,
        )
    }
}

/// The classification itself, from what OpenSSL and the dispatch callback reported: the
/// callback's refusal, the verify result, the SSL library's reason codes (oldest first) and
/// the socket's error kind.
pub fn classify(
    refusal: Option<Refusal>,
    verify: X509VerifyResult,
    ssl_reasons: &[i32],
    io: Option<io::ErrorKind>,
) -> HandshakeFailure {
    match refusal {
        Some(Refusal::UnrecognizedName) => return HandshakeFailure::UnrecognizedName,
        Some(Refusal::DomainLimit) => return HandshakeFailure::DomainLimit,
        None => {}
    }
    for &r in ssl_reasons {
        match r {
            R_CERTIFICATE_VERIFY_FAILED => {
                return HandshakeFailure::Certificate(CertificateFailure::Verify(verify))
            }
            R_PEER_DID_NOT_RETURN_A_CERTIFICATE | R_NO_CERTIFICATES_RETURNED => {
                return HandshakeFailure::Certificate(CertificateFailure::Missing)
            }
            R_UNEXPECTED_EOF_WHILE_READING => {
                return HandshakeFailure::Io(io::ErrorKind::UnexpectedEof)
            }
            _ => {}
        }
        let alert = r
            .checked_sub(ALERT_OFFSET)
            .and_then(|a| u8::try_from(a).ok());
        match alert {
            Some(ALERT_UNRECOGNIZED_NAME) => return HandshakeFailure::UnrecognizedName,
            Some(
                a @ (ALERT_BAD_CERTIFICATE
                | ALERT_UNSUPPORTED_CERTIFICATE
                | ALERT_CERTIFICATE_REVOKED
                | ALERT_CERTIFICATE_EXPIRED
                | ALERT_CERTIFICATE_UNKNOWN
                | ALERT_UNKNOWN_CA
                | ALERT_CERTIFICATE_REQUIRED),
            ) => return HandshakeFailure::Certificate(CertificateFailure::RefusedByPeer(a)),
            _ => {}
        }
    }
    if let Some(&reason) = ssl_reasons.first() {
        return HandshakeFailure::Protocol { reason };
    }
    match io {
        Some(kind) => HandshakeFailure::Io(kind),
        None => HandshakeFailure::Other,
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeFailure::Timeout => f.write_str("handshake timeout"),
            HandshakeFailure::Certificate(CertificateFailure::Verify(v)) => {
                write!(f, "certificate refused: {}", v.error_string())
            }
            HandshakeFailure::Certificate(CertificateFailure::Missing) => {
                f.write_str("certificate required, none sent")
            }
            HandshakeFailure::Certificate(CertificateFailure::RefusedByPeer(a)) => {
                write!(f, "our certificate refused by the peer (alert {a})")
            }
            HandshakeFailure::UnrecognizedName => f.write_str("unrecognized server name"),
            HandshakeFailure::DomainLimit => f.write_str("domain at max_connections"),
            HandshakeFailure::Protocol { reason } => {
                write!(f, "TLS protocol error (SSL reason {reason})")
            }
            HandshakeFailure::Io(kind) => write!(f, "socket: {kind}"),
            HandshakeFailure::Other => f.write_str("other"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: X509VerifyResult = X509VerifyResult::OK;

    fn label(f: HandshakeFailure) -> &'static str {
        f.label().as_str()
    }

    #[test]
    fn each_failure_maps_to_its_metric_label() {
        use CertificateFailure::*;
        use HandshakeFailure::*;
        let cases = [
            (Timeout, "timeout"),
            (Certificate(Verify(OK)), "certificate"),
            (Certificate(Missing), "certificate"),
            (Certificate(RefusedByPeer(48)), "certificate"),
            (UnrecognizedName, "unrecognized_name"),
            (DomainLimit, "other"),
            (Protocol { reason: 267 }, "other"),
            (Io(io::ErrorKind::ConnectionReset), "other"),
            (Other, "other"),
        ];
        for (f, l) in cases {
            assert_eq!(label(f), l, "{f:?}");
        }
    }

    #[test]
    fn the_callbacks_refusal_wins_over_its_callback_failed_reason() {
        // SSL_R_CALLBACK_FAILED (234) is all the stack says when the ClientHello callback
        // refuses.
        assert_eq!(
            classify(Some(Refusal::UnrecognizedName), OK, &[234], None),
            HandshakeFailure::UnrecognizedName
        );
        assert_eq!(
            classify(Some(Refusal::DomainLimit), OK, &[234], None),
            HandshakeFailure::DomainLimit
        );
        assert_eq!(
            classify(None, OK, &[234], None),
            HandshakeFailure::Protocol { reason: 234 }
        );
    }

    #[test]
    fn certificate_failures_by_reason_code_and_alert() {
        let v = X509VerifyResult::APPLICATION_VERIFICATION;
        assert_eq!(
            classify(None, v, &[R_CERTIFICATE_VERIFY_FAILED], None),
            HandshakeFailure::Certificate(CertificateFailure::Verify(v))
        );
        assert_eq!(
            classify(None, OK, &[R_PEER_DID_NOT_RETURN_A_CERTIFICATE], None),
            HandshakeFailure::Certificate(CertificateFailure::Missing)
        );
        // tlsv13 alert certificate required, tlsv1 alert unknown ca, sslv3 alert bad
        // certificate: the peer refused ours.
        for alert in [116, 48, 42] {
            assert_eq!(
                classify(None, OK, &[1000 + alert], None),
                HandshakeFailure::Certificate(CertificateFailure::RefusedByPeer(alert as u8))
            );
        }
        // A verify result alone (verify_client = optional keeps going) is no refusal.
        assert_eq!(
            classify(None, v, &[267], None),
            HandshakeFailure::Protocol { reason: 267 }
        );
    }

    #[test]
    fn names_protocol_and_socket_failures() {
        assert_eq!(
            classify(None, OK, &[1000 + 112], None),
            HandshakeFailure::UnrecognizedName
        );
        // handshake_failure alert: a protocol matter, not a certificate one.
        assert_eq!(
            classify(None, OK, &[1040], None),
            HandshakeFailure::Protocol { reason: 1040 }
        );
        assert_eq!(
            classify(None, OK, &[R_UNEXPECTED_EOF_WHILE_READING], None),
            HandshakeFailure::Io(io::ErrorKind::UnexpectedEof)
        );
        assert_eq!(
            classify(None, OK, &[], Some(io::ErrorKind::ConnectionReset)),
            HandshakeFailure::Io(io::ErrorKind::ConnectionReset)
        );
        assert_eq!(classify(None, OK, &[], None), HandshakeFailure::Other);
    }
}
