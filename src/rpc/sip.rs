//! RPC over a SIP listener, SER style: an HTTP request that arrives on a SIP TCP/TLS stream
//! ([`super::looks_like_http`] on the first bytes, then [`super::HttpFramer`]) is shown to
//! the route script as a message (`@rpc.method`, `@xmlrpc.method`), and the script either
//! calls `dispatch_rpc()`, answers with `sl_send_reply()`, or does neither. This module
//! builds the HTTP answers for the last two cases, so that such a request always gets an
//! HTTP answer and never hangs. Sans-IO; must never panic on a request.

use super::{http::HttpRequest, jsonrpc, xmlrpc, Fault, FaultKind, HttpResponse, Protocol};

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
