//! RPC over a SIP listener, SER style: an HTTP request that arrives on a SIP TCP/TLS stream
//! ([`super::looks_like_http`] on the first bytes, then [`super::HttpFramer`]) is shown to
//! the route script as a message (`@rpc.method`, `@xmlrpc.method`), and the script either
//! calls `dispatch_rpc()`, answers with `sl_send_reply()`, or does neither. This module
//! builds the HTTP answers for the last two cases, so that such a request always gets an
//! HTTP answer and never hangs, and the two rules that hold whatever the script says: a
//! JSON-RPC batch is refused before the script runs ([`refuse_batch`]), and a dispatched
//! call runs only for a TLS peer on `[management] allow` ([`admitted`]) unless the script
//! used `dispatch_rpc_trusted()`. Sans-IO; must never panic on a request.

use super::{
    http::HttpRequest, jsonrpc, xmlrpc, AllowList, Fault, FaultKind, HttpResponse, Protocol,
};
use crate::tls::TlsFacts;

/// A JSON-RPC batch on a SIP listener is answered 400 before the route script sees it:
/// the script decides on one method (`@rpc.method`), so one request carries one call.
pub fn refuse_batch(req: &HttpRequest) -> Option<HttpResponse> {
    if !jsonrpc::is_batch(&req.body) {
        return None;
    }
    let f = Fault::new(
        FaultKind::InvalidRequest,
        "JSON-RPC batches are not accepted on a SIP listener: one call per request",
    );
    let body = jsonrpc::error_for(b"null", &f);
    Some(HttpResponse::new(
        400,
        "application/json",
        body.into_bytes(),
    ))
}

/// Whether a call the script dispatched with `dispatch_rpc()` may run: the peer presented
/// a certificate that verified against the listener's CAs and that `[management] allow`
/// (`allow`, its raw entries) names. No TLS, no certificate, an unverified one, or an
/// allow-list that does not parse: no.
pub fn admitted(allow: &[String], tls: Option<&TlsFacts>) -> bool {
    let Some(t) = tls.filter(|t| t.peer_verified) else {
        return false;
    };
    AllowList::parse(allow).is_ok_and(|l| l.permits(t.peer.as_deref()))
}

/// Who made an RPC call, for the log: `peer` and the TLS subject, or `anonymous`.
pub fn caller(peer: std::net::SocketAddr, tls: Option<&TlsFacts>) -> String {
    match tls.and_then(|t| t.peer.as_deref()) {
        Some(c) => format!("{peer} {}", c.subject.line),
        None => format!("{peer} anonymous"),
    }
}

/// The script answered the HTTP request with `sl_send_reply(code, reason)`: that HTTP
/// status, with the reason as an RPC error in the request's protocol (XML-RPC `faultCode`
/// = `code`, as SER's xmlrpc module replies). The connection closes after it (SIP framing
/// resumes on a clean stream only).
pub fn script_reply(req: &HttpRequest, code: u16, reason: &str) -> HttpResponse {
    let code = if (200..=599).contains(&code) {
        code
    } else {
        500
    };
    let kind = match code {
        403 => FaultKind::Forbidden,
        404 => FaultKind::MethodNotFound,
        400..=499 => FaultKind::InvalidRequest,
        503 => FaultKind::NotAvailable,
        _ => FaultKind::Internal,
    };
    let f = Fault::new(kind, reason);
    let mut r = match Protocol::of(req) {
        Some(Protocol::JsonRpc) => HttpResponse::new(
            code,
            "application/json",
            jsonrpc::error_for(&req.body, &f).into_bytes(),
        ),
        Some(Protocol::XmlRpc) => {
            let doc = xmlrpc::encode_fault_code(i32::from(code), reason);
            HttpResponse::new(code, "text/xml", doc.into_bytes())
        }
        None => HttpResponse::text(code, &format!("{reason}\n")),
    };
    r.close = true;
    r
}

/// The script finished without `dispatch_rpc()` or a reply: 403, the RPC was not let
/// through.
pub fn undispatched(req: &HttpRequest) -> HttpResponse {
    script_reply(req, 403, "the route script did not dispatch this RPC")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::HttpFramer;
    use bytes::BytesMut;

    fn req(ct: &str, body: &str) -> HttpRequest {
        let raw = format!(
            "POST /RPC2 HTTP/1.1\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        HttpFramer::default()
            .next_request(&mut BytesMut::from(raw.as_bytes()))
            .expect("ok")
            .expect("complete")
    }

    #[test]
    fn replies_in_the_request_protocol() {
        let r = script_reply(
            &req(
                "text/xml",
                "<methodCall><methodName>core.kill</methodName></methodCall>",
            ),
            403,
            "Forbidden",
        );
        assert_eq!(r.status, 403);
        assert!(r.close);
        assert_eq!(
            xmlrpc::parse_response(&r.body),
            Err((403, "Forbidden".to_owned()))
        );
        let r = undispatched(&req(
            "application/json",
            r#"{"jsonrpc":"2.0","id":3,"method":"x"}"#,
        ));
        assert_eq!(r.status, 403);
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(v["id"], 3);
        assert_eq!(script_reply(&req("text/plain", "x"), 99, "odd").status, 500);
    }

    #[test]
    fn batches_are_refused_and_the_allow_list_needs_a_verified_peer() {
        let b = req(
            "application/json",
            r#" [{"jsonrpc":"2.0","id":1,"method":"core.version"},{"jsonrpc":"2.0","id":2,"method":"core.kill"}]"#,
        );
        let r = refuse_batch(&b).expect("a batch is refused");
        assert_eq!(r.status, 400);
        // Labelled as XML, still a batch.
        assert!(refuse_batch(&req("text/xml", "[{}]")).is_some());
        assert!(refuse_batch(&req("application/json", r#"{"method":"x"}"#)).is_none());

        let cert = |cn: &str| crate::tls::CertFacts {
            subject: crate::tls::DnFacts {
                line: format!("/CN={cn}"),
                cn: Some(cn.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        let facts = |cn: &str, verified: bool| TlsFacts {
            peer: Some(std::sync::Arc::new(cert(cn))),
            peer_verified: verified,
            ..Default::default()
        };
        let allow = vec!["admin".to_owned()];
        assert!(admitted(&allow, Some(&facts("admin", true))));
        assert!(!admitted(&allow, Some(&facts("admin", false))));
        assert!(!admitted(&allow, Some(&facts("user", true))));
        assert!(!admitted(&allow, None));
        assert!(!admitted(&[], Some(&facts("admin", true))));
        assert!(!admitted(
            &["sha256:zz".to_owned()],
            Some(&facts("admin", true))
        ));
        let peer = "127.0.0.1:5".parse().expect("addr");
        assert_eq!(caller(peer, None), "127.0.0.1:5 anonymous");
        assert_eq!(
            caller(peer, Some(&facts("admin", true))),
            "127.0.0.1:5 /CN=admin"
        );
    }

    #[test]
    fn the_raw_request_parses_as_a_message_for_the_script() {
        let r = req(
            "text/xml",
            "<methodCall><methodName>core.kill</methodName></methodCall>",
        );
        let m = crate::sip::Message::parse(r.raw.clone()).expect("parses as a message");
        assert_eq!(m.method(), Some("POST"));
        assert_eq!(m.body(), &r.body[..]);
    }
}
