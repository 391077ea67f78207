//! The management RPC, sans-IO: HTTP/1.1 framing and responses, JSON-RPC 2.0 and XML-RPC
//! (SER/Kamailio flavour) codecs, the method registry and its documentation, and the
//! client-certificate allow-list. The runtime (`siprox-actors`) owns the sockets and the
//! method implementations (a [`Handler`]); everything that decides what a request means and
//! what goes back lives here. Must never panic on a request, whatever its bytes.
//!
//! - [`http`]: [`looks_like_http`], [`HttpFramer`], [`HttpRequest`], [`HttpResponse`].
//! - [`jsonrpc`]: JSON-RPC 2.0 single calls, batches, notifications, standard errors.
//! - [`xmlrpc`]: `methodCall` / `methodResponse` / faults, through `dxr`.
//! - [`allow`]: [`AllowList`] of certificate subjects, CNs and SHA-256 fingerprints.
//! - [`sip`]: HTTP answers for RPC requests that arrived on a SIP listener (SER style) and
//!   that the route script refused or did not dispatch.
//! - [`methods`]: [`METHODS`], the documented method registry (`system.listMethods`).
//!
//! Values are `serde_json::Value` in both protocols: XML-RPC `int`/`i8` are numbers,
//! `double` a float, `boolean` a bool, `string`/`dateTime.iso8601` strings, `base64` a
//! string of the base64 text, `struct` an object, `array` an array and `nil` null.

pub mod allow;
pub mod http;
pub mod jsonrpc;
pub mod methods;
pub mod sip;
pub mod xmlrpc;

pub use allow::{AllowEntry, AllowList};
pub use http::{looks_like_http, HttpError, HttpFramer, HttpLimits, HttpRequest, HttpResponse};
pub use methods::{MethodDoc, METHODS};
pub use serde_json::Value;

/// The kind of a failed call; each has a JSON-RPC code and a SER-style (HTTP-like) XML-RPC
/// fault code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The body is not JSON / XML.
    Parse,
    /// Well-formed, but not a request.
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    Internal,
    /// The client certificate is not on the allow-list, or the script refused.
    Forbidden,
    /// The method exists but its subsystem is not there (yet).
    NotAvailable,
    /// A named thing (a connection id, a user) does not exist.
    NotFound,
}

impl FaultKind {
    /// JSON-RPC 2.0 error code (standard ones, and -32000..-32099 for the server's own).
    pub fn json_code(self) -> i64 {
        match self {
            FaultKind::Parse => -32700,
            FaultKind::InvalidRequest => -32600,
            FaultKind::MethodNotFound => -32601,
            FaultKind::InvalidParams => -32602,
            FaultKind::Internal => -32603,
            FaultKind::Forbidden => -32003,
            FaultKind::NotAvailable => -32001,
            FaultKind::NotFound => -32004,
        }
    }

    /// XML-RPC `faultCode`, HTTP-like as SER/Kamailio's RPC faults are.
    pub fn xml_code(self) -> i32 {
        match self {
            FaultKind::Parse | FaultKind::InvalidRequest | FaultKind::InvalidParams => 400,
            FaultKind::Forbidden => 403,
            FaultKind::MethodNotFound | FaultKind::NotFound => 404,
            FaultKind::Internal => 500,
            FaultKind::NotAvailable => 503,
        }
    }
}

/// A failed call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Fault {
    pub kind: FaultKind,
    pub message: String,
}

impl Fault {
    pub fn new(kind: FaultKind, message: impl Into<String>) -> Fault {
        Fault {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid_params(message: impl Into<String>) -> Fault {
        Fault::new(FaultKind::InvalidParams, message)
    }
    pub fn not_found(message: impl Into<String>) -> Fault {
        Fault::new(FaultKind::NotFound, message)
    }
    pub fn not_available(message: impl Into<String>) -> Fault {
        Fault::new(FaultKind::NotAvailable, message)
    }
    pub fn method_not_found(method: &str) -> Fault {
        Fault::new(
            FaultKind::MethodNotFound,
            format!("method not found: {method}"),
        )
    }
    pub fn forbidden() -> Fault {
        Fault::new(FaultKind::Forbidden, "forbidden")
    }
}

/// What a method call returns.
pub type CallResult = Result<Value, Fault>;

/// The method implementations (the runtime's). `system.*` methods are answered here, from
/// [`METHODS`], and never reach a handler.
pub trait Handler {
    /// Called for every call before it runs, `system.*` included: the runtime logs the
    /// caller here, and a gate may refuse the call (`Err`) so that it never runs.
    fn before_call(&mut self, method: &str) -> Result<(), Fault> {
        let _ = method;
        Ok(())
    }

    /// Run `method` with positional `params` (a JSON-RPC `params` object arrives as one
    /// object parameter).
    fn call(&mut self, method: &str, params: &[Value]) -> CallResult;
}

/// The RPC protocol of a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    JsonRpc,
    XmlRpc,
}

impl Protocol {
    /// The protocol of `req` by Content-Type (`application/json` or `text/xml`); without a
    /// usable Content-Type, by the first non-blank byte of the body (`<` is XML).
    pub fn of(req: &HttpRequest) -> Option<Protocol> {
        match req.media_type().as_deref() {
            Some("application/json") | Some("application/json-rpc") => Some(Protocol::JsonRpc),
            Some("text/xml") | Some("application/xml") => Some(Protocol::XmlRpc),
            Some(_) => None,
            None => match req.body.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'<') => Some(Protocol::XmlRpc),
                Some(b'{') | Some(b'[') => Some(Protocol::JsonRpc),
                _ => None,
            },
        }
    }
}

/// The method named by an RPC body in `protocol`, without running it. A JSON-RPC batch
/// names no single method: `None`.
pub fn method_of(protocol: Protocol, body: &[u8]) -> Option<String> {
    match protocol {
        Protocol::JsonRpc => jsonrpc::method_name(body),
        Protocol::XmlRpc => xmlrpc::method_name(body),
    }
}

/// The method of a single JSON-RPC or XML-RPC call, whatever the Content-Type says (for
/// the route script's `@rpc.method` / `@xmlrpc.method`). The body is tried with both
/// decoders that [`serve`] uses, so that a label on the request cannot make the script
/// see no method while a call runs; a body only one of them accepts names the method it
/// would run.
pub fn method_any(body: &[u8]) -> Option<String> {
    jsonrpc::method_name(body).or_else(|| xmlrpc::method_name(body))
}

/// Answers `system.*` from the registry, everything else through `handler`; every call
/// passes [`Handler::before_call`] first.
pub fn call(handler: &mut dyn Handler, method: &str, params: &[Value]) -> CallResult {
    handler.before_call(method)?;
    match method {
        "system.listMethods" => Ok(Value::Array(
            METHODS.iter().map(|m| Value::from(m.name)).collect(),
        )),
        "system.methodHelp" => {
            let Some(name) = params.first().and_then(Value::as_str) else {
                return Err(Fault::invalid_params(
                    "system.methodHelp needs a method name",
                ));
            };
            methods::find(name)
                .map(|m| Value::from(m.help_text()))
                .ok_or_else(|| Fault::method_not_found(name))
        }
        _ => handler.call(method, params),
    }
}

/// Serves one request of the management endpoint: `POST /` or `/RPC2` with a JSON-RPC or
/// XML-RPC body. (`GET /metrics` is the runtime's: it has the counters.) `allowed` is the
/// allow-list verdict on the client: when false every call is answered "forbidden", with
/// HTTP 403, in the request's own protocol.
pub fn serve(req: &HttpRequest, allowed: bool, handler: &mut dyn Handler) -> HttpResponse {
    if req.method != "POST" {
        let mut r = HttpResponse::text(405, "use POST for RPC calls\n");
        r.close = !req.keep_alive();
        return r;
    }
    if !matches!(req.path(), "/" | "/RPC2" | "/rpc" | "/RPC") {
        let mut r = HttpResponse::text(404, "no such endpoint (POST / or /RPC2)\n");
        r.close = !req.keep_alive();
        return r;
    }
    let Some(protocol) = Protocol::of(req) else {
        let mut r = HttpResponse::text(
            415,
            "Content-Type must be application/json (JSON-RPC) or text/xml (XML-RPC)\n",
        );
        r.close = !req.keep_alive();
        return r;
    };
    let mut resp = if !allowed {
        forbidden(protocol, &req.body)
    } else {
        match protocol {
            Protocol::JsonRpc => {
                match jsonrpc::handle(&req.body, &mut |m, p| call(handler, m, p)) {
                    Some(body) => HttpResponse::new(200, "application/json", body),
                    None => HttpResponse::no_content(),
                }
            }
            Protocol::XmlRpc => HttpResponse::new(
                200,
                "text/xml",
                xmlrpc::handle(&req.body, &mut |m, p| call(handler, m, p)).into_bytes(),
            ),
        }
    };
    resp.close = !req.keep_alive();
    resp
}

/// HTTP 403 carrying a "forbidden" error in `protocol` (for the request's id when it can be
/// read, so that JSON-RPC clients can match it).
pub fn forbidden(protocol: Protocol, body: &[u8]) -> HttpResponse {
    let f = Fault::forbidden();
    match protocol {
        Protocol::JsonRpc => HttpResponse::new(
            403,
            "application/json",
            jsonrpc::error_for(body, &f).into_bytes(),
        ),
        Protocol::XmlRpc => {
            HttpResponse::new(403, "text/xml", xmlrpc::encode_fault(&f).into_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    struct Echo;
    impl Handler for Echo {
        fn call(&mut self, method: &str, params: &[Value]) -> CallResult {
            match method {
                "core.version" => Ok(Value::from("siprox test")),
                "echo" => Ok(Value::Array(params.to_vec())),
                m => Err(Fault::method_not_found(m)),
            }
        }
    }

    fn req(ct: &str, body: &str) -> HttpRequest {
        let raw = format!(
            "POST /RPC2 HTTP/1.1\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut b = BytesMut::from(raw.as_bytes());
        HttpFramer::default()
            .next_request(&mut b)
            .expect("ok")
            .expect("complete")
    }

    #[test]
    fn json_and_xml_by_content_type() {
        let r = serve(
            &req(
                "application/json",
                r#"{"jsonrpc":"2.0","id":1,"method":"core.version"}"#,
            ),
            true,
            &mut Echo,
        );
        assert_eq!(r.status, 200);
        let v: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(v["result"], "siprox test");
        let r = serve(
            &req(
                "text/xml",
                "<?xml version=\"1.0\"?><methodCall><methodName>core.version</methodName></methodCall>",
            ),
            true,
            &mut Echo,
        );
        assert_eq!(r.status, 200);
        let s = String::from_utf8(r.body).expect("utf8");
        assert!(s.contains("<string>siprox test</string>"), "{s}");
    }

    #[test]
    fn forbidden_in_both_protocols() {
        let r = serve(
            &req(
                "application/json",
                r#"{"jsonrpc":"2.0","id":7,"method":"core.version"}"#,
            ),
            false,
            &mut Echo,
        );
        assert_eq!(r.status, 403);
        let v: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(v["error"]["message"], "forbidden");
        assert_eq!(v["id"], 7);
        let r = serve(
            &req(
                "text/xml",
                "<methodCall><methodName>core.kill</methodName></methodCall>",
            ),
            false,
            &mut Echo,
        );
        assert_eq!(r.status, 403);
        let s = String::from_utf8(r.body).expect("utf8");
        assert!(
            s.contains("<int>403</int>") || s.contains("<i4>403</i4>"),
            "{s}"
        );
        assert!(s.contains("forbidden"), "{s}");
    }

    #[test]
    fn system_methods_come_from_the_registry() {
        let v = call(&mut Echo, "system.listMethods", &[]).expect("list");
        let names: Vec<&str> = v
            .as_array()
            .expect("array")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(names.contains(&"tls.reload"));
        assert!(names.contains(&"system.methodHelp"));
        let h = call(&mut Echo, "system.methodHelp", &[Value::from("tls.kill")]).expect("help");
        assert!(h.as_str().expect("str").contains("id"));
        assert_eq!(
            call(&mut Echo, "system.methodHelp", &[Value::from("nope")])
                .expect_err("unknown")
                .kind,
            FaultKind::MethodNotFound
        );
    }

    #[test]
    fn wrong_method_path_or_type() {
        let mut r = req("application/json", "{}");
        r.method = "GET".into();
        assert_eq!(serve(&r, true, &mut Echo).status, 405);
        let mut r = req("application/json", "{}");
        r.target = "/nope".into();
        assert_eq!(serve(&r, true, &mut Echo).status, 404);
        let r = req("image/png", "{}");
        assert_eq!(serve(&r, true, &mut Echo).status, 415);
    }

    #[test]
    fn method_of_both_protocols() {
        assert_eq!(
            method_of(
                Protocol::XmlRpc,
                b"<methodCall><methodName>core.kill</methodName></methodCall>"
            )
            .as_deref(),
            Some("core.kill")
        );
        assert_eq!(
            method_of(
                Protocol::JsonRpc,
                br#"[{"jsonrpc":"2.0","method":"tls.list"}]"#
            )
            .as_deref(),
            None,
            "a batch names no single method"
        );
        assert_eq!(method_of(Protocol::JsonRpc, b"garbage"), None);
        assert_eq!(
            method_any(br#"{"jsonrpc":"2.0","id":1,"method":"core.kill"}"#).as_deref(),
            Some("core.kill")
        );
        assert_eq!(
            method_any(b"<methodCall><methodName>core.kill</methodName></methodCall>").as_deref(),
            Some("core.kill")
        );
    }
}
