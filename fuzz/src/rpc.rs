//! Shared drivers of the management-RPC fuzz targets: frame HTTP requests, decode JSON-RPC
//! and XML-RPC bodies, serve them on the management path and on the SIP-listener path, and
//! check what must hold whatever the bytes. Must never panic on any input; the only panics
//! allowed are the `assert!`s that state those properties.

use bytes::BytesMut;
use siprox::rpc::{
    self, jsonrpc, xmlrpc, CallResult, Fault, FaultKind, Handler, HttpFramer, HttpRequest,
    HttpResponse, Protocol, Value,
};

/// The fault kinds a fuzzed method can fail with.
const KINDS: [FaultKind; 8] = [
    FaultKind::Parse,
    FaultKind::InvalidRequest,
    FaultKind::MethodNotFound,
    FaultKind::InvalidParams,
    FaultKind::Internal,
    FaultKind::Forbidden,
    FaultKind::NotAvailable,
    FaultKind::NotFound,
];

/// What a fuzzed method answers, decided by its name so that the same call gets the same
/// answer every time: an echo of its parameters, its own name, or a fault whose message is
/// the name (so that arbitrary text goes through the fault encoders too).
pub fn answer(method: &str, params: &[Value]) -> CallResult {
    let h = method.bytes().fold(0usize, |a, b| {
        a.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    match h % 3 {
        0 => Ok(Value::Array(params.to_vec())),
        1 => Ok(Value::from(method)),
        _ => Err(Fault::new(KINDS[(h / 3) % KINDS.len()], method)),
    }
}

/// A [`Handler`] that records what it is asked and answers with [`answer`]. With `only`,
/// it is the SIP listener's gate (`actors/src/rpc.rs`, `Logged`): any other method is
/// refused in `before_call`, and recorded as refused.
#[derive(Debug, Default)]
pub struct Recorder {
    pub only: Option<String>,
    /// Every method `before_call` saw, in order.
    pub asked: Vec<String>,
    /// Methods the gate refused.
    pub refused: Vec<String>,
    /// Methods that ran (`call`), with their parameters.
    pub ran: Vec<(String, Vec<Value>)>,
}

impl Handler for Recorder {
    fn before_call(&mut self, method: &str) -> Result<(), Fault> {
        self.asked.push(method.to_owned());
        if self.only.as_deref().is_some_and(|m| m != method) {
            self.refused.push(method.to_owned());
            return Err(Fault::forbidden());
        }
        Ok(())
    }

    fn call(&mut self, method: &str, params: &[Value]) -> CallResult {
        self.ran.push((method.to_owned(), params.to_vec()));
        answer(method, params)
    }
}

/// Read a request through every accessor.
pub fn touch_request(r: &HttpRequest) {
    let _ = (r.header("content-type"), r.header("Content-Length"));
    let _ = (r.media_type(), r.path(), r.keep_alive());
    let _ = Protocol::of(r);
    let _ = format!("{r:?}");
}

/// Check that a response serialises as a well-formed HTTP/1.1 response whose
/// `Content-Length` is its body.
pub fn check_response(r: &HttpResponse) {
    let bytes = r.to_bytes();
    let Some(end) = memchr_find(&bytes, b"\r\n\r\n") else {
        panic!("response without a blank line");
    };
    assert_eq!(&bytes[end + 4..], &r.body[..], "response body");
    let head = std::str::from_utf8(&bytes[..end]).expect("response head is UTF-8");
    assert!(head.starts_with(&format!("HTTP/1.1 {} ", r.status)));
    if r.status != 204 {
        let cl = format!("\r\nContent-Length: {}\r\n", r.body.len());
        assert!(format!("{head}\r\n").contains(&cl), "{head}");
    }
    assert!((100..=599).contains(&r.status), "status {}", r.status);
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The management listener: `serve` with and without the allow-list's consent.
///
/// Properties: a caller not on the allow-list runs nothing; every response is well formed.
pub fn management(req: &HttpRequest) {
    let mut denied = Recorder::default();
    let r = rpc::serve(req, false, &mut denied);
    assert!(
        denied.asked.is_empty() && denied.ran.is_empty(),
        "{denied:?}"
    );
    check_response(&r);
    let mut h = Recorder::default();
    let r = rpc::serve(req, true, &mut h);
    check_response(&r);
    if r.status == 200 || r.status == 204 {
        assert_eq!(req.method, "POST");
    }
}

/// The SIP-listener path (`actors/src/connection.rs`, `process_http`): a batch is refused
/// before anything; otherwise the script sees `method_any(body)` and the call runs behind a
/// gate that admits that method only. Then the two answers the script can make itself.
///
/// Properties: a refused batch runs nothing; whatever the decoders make of the body, the
/// only method they ask to run is the one the script saw (the gate never has to refuse), at
/// most once; and the raw request is what the script parses.
pub fn sip_listener(req: &HttpRequest) {
    let _ = rpc::sip::caller("127.0.0.1:5060".parse().expect("literal"), None);
    let _ = rpc::sip::admitted(&["admin".to_owned()], None);
    if let Some(r) = rpc::sip::refuse_batch(req) {
        assert_eq!(r.status, 400);
        assert!(jsonrpc::is_batch(&req.body));
        assert_eq!(rpc::method_any(&req.body), None, "a batch names no method");
        check_response(&r);
        return;
    }
    // What the route script sees; its parse must never panic either.
    if let Ok(m) = siprox::sip::Message::parse(req.raw.clone()) {
        let _ = (m.method(), m.body().len());
    }
    let method = rpc::method_any(&req.body);
    if let Some(m) = &method {
        let by_json = jsonrpc::method_name(&req.body);
        let by_xml = xmlrpc::method_name(&req.body);
        assert!(by_json.as_ref() == Some(m) || by_xml.as_ref() == Some(m));
    }
    let mut gate = Recorder {
        only: Some(method.clone().unwrap_or_default()),
        ..Recorder::default()
    };
    let r = rpc::serve(req, true, &mut gate);
    check_response(&r);
    assert!(
        gate.refused.is_empty(),
        "the decoders asked for {:?} but the script saw {method:?}",
        gate.refused
    );
    assert!(
        gate.asked.len() <= 1,
        "one call per request: {:?}",
        gate.asked
    );
    if !gate.asked.is_empty() {
        assert!(method.is_some());
    }
    for code in [0u16, 200, 403, 404, 486, 503, 600] {
        let r = rpc::sip::script_reply(req, code, "Reason <&>");
        assert!(r.close);
        check_response(&r);
    }
    check_response(&rpc::sip::undispatched(req));
}

/// A request carrying `body`, labelled by `label` (0: JSON, 1: XML, 2: no Content-Type,
/// else an unrelated type), as the framer would build it; `None` for a body over the
/// framer's limit (it never reaches the decoders).
pub fn request_with(label: u8, body: &[u8]) -> Option<HttpRequest> {
    if body.len() > siprox::rpc::HttpLimits::default().max_body {
        return None;
    }
    let ct = match label % 4 {
        0 => Some("application/json"),
        1 => Some("text/xml; charset=utf-8"),
        2 => None,
        _ => Some("text/plain"),
    };
    let mut raw = format!("POST /RPC2 HTTP/1.1\r\nContent-Length: {}\r\n", body.len());
    if let Some(ct) = ct {
        raw.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    raw.push_str("\r\n");
    let mut buf = BytesMut::from(raw.as_bytes());
    buf.extend_from_slice(body);
    match HttpFramer::default().next_request(&mut buf) {
        Ok(Some(r)) => Some(r),
        other => panic!("a well-formed request does not frame: {other:?}"),
    }
}

/// JSON-RPC: `handle`, `method_name`, `is_batch`, `error_for` on one body.
///
/// Properties: the response is JSON; a single request runs at most one call, the one
/// `method_name` reports; a batch runs at most `MAX_BATCH`; every response carries the id
/// of its request (in order, notifications unanswered) and the result or fault of its call.
pub fn json_body(body: &[u8]) {
    let mut calls: Vec<(String, Vec<Value>)> = Vec::new();
    let out = jsonrpc::handle(body, &mut |m, p| {
        calls.push((m.to_owned(), p.to_vec()));
        answer(m, p)
    });
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let name = jsonrpc::method_name(body);
    let batch = jsonrpc::is_batch(body);
    let _ = jsonrpc::error_for(body, &Fault::forbidden());

    let Some(parsed) = parsed else {
        assert!(calls.is_empty(), "{calls:?}");
        assert_eq!(name, None);
        let v: Value = decode(out.as_deref());
        assert_eq!(v["error"]["code"], -32700);
        assert_eq!(v["id"], Value::Null);
        return;
    };
    assert_eq!(
        batch,
        parsed.is_array(),
        "is_batch disagrees with the parser"
    );
    let items: Vec<&Value> = match &parsed {
        Value::Array(a) => {
            assert_eq!(name, None, "a batch names no single method");
            if a.is_empty() || a.len() > jsonrpc::MAX_BATCH {
                assert!(calls.is_empty());
                let v: Value = decode(out.as_deref());
                assert_eq!(v["error"]["code"], -32600);
                return;
            }
            a.iter().collect()
        }
        single => {
            assert!(calls.len() <= 1);
            if let Some((m, _)) = calls.first() {
                assert_eq!(name.as_deref(), Some(m.as_str()), "method_name lies");
            }
            vec![single]
        }
    };
    // What each item must get back: `None` for a notification that ran.
    let mut expected: Vec<(Value, Option<CallResult>)> = Vec::new();
    let mut ran = calls.iter();
    for item in &items {
        let Some(obj) = item.as_object() else {
            expected.push((Value::Null, None));
            continue;
        };
        let id = obj.get("id");
        let id_ok = matches!(
            id,
            None | Some(Value::Null | Value::Number(_) | Value::String(_))
        );
        let reply_id = if id_ok {
            id.cloned().unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let method = obj.get("method").and_then(Value::as_str);
        let params_ok = matches!(
            obj.get("params"),
            None | Some(Value::Null | Value::Array(_) | Value::Object(_))
        );
        let runs = id_ok
            && obj.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
            && method.is_some()
            && params_ok;
        if !runs {
            expected.push((reply_id, None));
            continue;
        }
        let Some((m, p)) = ran.next() else {
            panic!("a valid call did not run: {item}");
        };
        assert_eq!(Some(m.as_str()), method);
        let want_params = match obj.get("params") {
            Some(Value::Array(a)) => a.clone(),
            Some(o @ Value::Object(_)) => vec![o.clone()],
            _ => Vec::new(),
        };
        assert_eq!(p, &want_params);
        if id.is_some() {
            expected.push((reply_id, Some(answer(m, p))));
        }
    }
    assert!(ran.next().is_none(), "more calls than valid requests");

    if expected.is_empty() {
        assert_eq!(out, None, "only notifications: no body");
        return;
    }
    let v: Value = decode(out.as_deref());
    let responses: Vec<&Value> = match (&parsed, &v) {
        (Value::Array(_), Value::Array(r)) => r.iter().collect(),
        (Value::Array(_), _) => panic!("a batch answered with a non-array: {v}"),
        _ => vec![&v],
    };
    assert_eq!(responses.len(), expected.len(), "one response per request");
    for (resp, (id, result)) in responses.iter().zip(&expected) {
        assert_eq!(resp["jsonrpc"], "2.0");
        assert_eq!(&resp["id"], id, "the response carries the request's id");
        let has_result = resp.get("result").is_some();
        assert_ne!(has_result, resp.get("error").is_some());
        match result {
            None => assert_eq!(resp["error"]["code"], -32600),
            Some(Ok(r)) => assert_eq!(&resp["result"], r),
            Some(Err(f)) => {
                assert_eq!(resp["error"]["code"], f.kind.json_code());
                assert_eq!(resp["error"]["message"], f.message.as_str());
            }
        }
    }
}

fn decode(out: Option<&[u8]>) -> Value {
    let Some(b) = out else {
        panic!("no response body where one is due");
    };
    match serde_json::from_slice(b) {
        Ok(v) => v,
        Err(e) => panic!(
            "the response is not JSON ({e}): {}",
            String::from_utf8_lossy(b)
        ),
    }
}

/// What an XML-RPC client reads back of `v` (`xmlrpc::encode_response` then
/// `parse_response`): the same value, except that an unsigned integer beyond `i64` travels
/// as a double and a float that is not finite cannot travel at all.
pub fn xml_image(v: &Value) -> Value {
    match v {
        Value::Number(n) if n.as_i64().is_none() => match n.as_u64() {
            Some(u) => serde_json::Number::from_f64(u as f64).map_or(Value::Null, Value::Number),
            None => v.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(xml_image).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), xml_image(v))).collect())
        }
        _ => v.clone(),
    }
}

/// How many `<value>`s deep `v` is.
fn nesting(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(nesting).max().unwrap_or(0),
        Value::Object(o) => o.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

/// XML-RPC: `parse_call`, `method_name`, `handle`, and the response and call encoders read
/// back through `parse_response` / `parse_call` (the client's side); `parse_response` on
/// the raw body too.
///
/// Properties: `method_name` is the method `handle` runs (and the only one); the response
/// is a `methodResponse` a client reads back as exactly the result or fault of the call; a
/// call re-encoded by `encode_call` parses back to the same method and parameters.
pub fn xml_body(body: &[u8]) {
    let _ = xmlrpc::parse_response(body);
    let parsed = xmlrpc::parse_call(body);
    let name = xmlrpc::method_name(body);
    let mut calls: Vec<(String, Vec<Value>)> = Vec::new();
    let doc = xmlrpc::handle(body, &mut |m, p| {
        calls.push((m.to_owned(), p.to_vec()));
        answer(m, p)
    });
    let back = xmlrpc::parse_response(doc.as_bytes());
    match parsed {
        Err(f) => {
            assert!(calls.is_empty());
            assert!(
                name.as_deref().is_none_or(str::is_empty),
                "{name:?} but {f}"
            );
            assert_eq!(back, Err((f.kind.xml_code(), f.message)));
        }
        Ok((m, p)) => {
            // The depth check holds: nothing deeper reaches the (recursive) parser.
            let deepest = p.iter().map(nesting).max().unwrap_or(0);
            assert!(
                deepest <= xmlrpc::MAX_DEPTH,
                "a call nested {deepest} deep parsed"
            );
            assert_eq!(name.as_deref(), Some(m.as_str()), "method_name lies");
            assert_eq!(calls, vec![(m.clone(), p.clone())]);
            match answer(&m, &p) {
                Ok(v) => assert_eq!(back, Ok(xml_image(&v)), "response: {doc}"),
                Err(f) => assert_eq!(back, Err((f.kind.xml_code(), f.message)), "{doc}"),
            }
            let call = xmlrpc::encode_call(&m, &p);
            match xmlrpc::parse_call(call.as_bytes()) {
                Ok(again) => assert_eq!(again, (m, p), "call: {call}"),
                Err(f) => panic!("an encoded call does not parse ({f}): {call}"),
            }
        }
    }
}

/// Feed an HTTP stream to an [`HttpFramer`] in chunks, with the same input layout as
/// [`crate::framed`] (the first byte says how many chunk-size bytes follow). Every framed
/// request is read through its accessors and served on both paths.
///
/// Properties: the framer consumes only the stream, in order: blank lines between requests,
/// then each request exactly (its `raw` is the bytes taken, its body the `Content-Length`
/// bytes at the end of `raw`); nothing it frames breaks its own limits.
pub fn http_stream(data: &[u8]) {
    use siprox::rpc::HttpLimits;

    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 17).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    let limits = HttpLimits::default();
    let framer = HttpFramer::new(limits);
    let mut buf = BytesMut::new();
    let (mut fed, mut consumed, mut i) = (0, 0, 0);
    while fed < stream.len() {
        let size = sizes
            .get(i % sizes.len().max(1))
            .map_or(stream.len(), |&s| usize::from(s.max(1)));
        i += 1;
        let end = (fed + size).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            let before = buf.len();
            let res = framer.next_request(&mut buf);
            let taken = before - buf.len();
            // Whatever it returns, what it took off the front is whole blank lines and, with
            // a request, then the request.
            let raw_len = match &res {
                Ok(Some(r)) => r.raw.len(),
                _ => 0,
            };
            assert!(taken >= raw_len);
            let skipped = &stream[consumed..consumed + taken - raw_len];
            assert!(
                skipped.chunks(2).all(|c| c == b"\r\n"),
                "the framer dropped bytes that are not blank lines: {skipped:?}"
            );
            consumed += taken - raw_len;
            match res {
                Ok(Some(r)) => {
                    assert_eq!(&r.raw[..], &stream[consumed..consumed + raw_len]);
                    consumed += raw_len;
                    check_request(&r, &limits);
                    touch_request(&r);
                    management(&r);
                    sip_listener(&r);
                }
                Ok(None) => break,
                Err(e) => {
                    // The connection closes with this answer.
                    let resp = e.response();
                    assert!(resp.close);
                    assert_eq!(resp.status, e.status());
                    check_response(&resp);
                    return;
                }
            }
        }
    }
}

/// What every framed request satisfies.
fn check_request(r: &HttpRequest, limits: &siprox::rpc::HttpLimits) {
    assert!(!r.method.is_empty() && r.method.bytes().all(|b| b.is_ascii_uppercase()));
    assert!(!r.target.is_empty() && !r.target.contains(' '));
    assert!(r.minor <= 1);
    assert!(r.headers.len() <= limits.max_headers);
    assert!(r.body.len() <= limits.max_body);
    let head_len = r.raw.len() - r.body.len();
    assert!(head_len <= limits.max_head);
    assert_eq!(
        &r.raw[head_len..],
        &r.body[..],
        "the body ends the raw request"
    );
    assert!(r.raw[..head_len].ends_with(b"\r\n\r\n"));
    // Exactly one blank line: the head ends at the first one.
    assert_eq!(
        memchr_find(&r.raw[..head_len], b"\r\n\r\n"),
        Some(head_len - 4)
    );
    let start = format!("{} {} HTTP/1.{}\r\n", r.method, r.target, r.minor);
    assert!(r.raw.starts_with(start.as_bytes()), "request line");
    let cl = r.header("content-length").map(str::parse::<usize>);
    match cl {
        Some(Ok(l)) => assert_eq!(l, r.body.len()),
        Some(Err(e)) => panic!("a framed request with a bad Content-Length: {e}"),
        None => assert!(r.body.is_empty()),
    }
    for (n, v) in &r.headers {
        assert!(!n.is_empty() && !n.contains(':') && !n.bytes().any(|b| b <= b' '));
        assert_eq!(v.trim(), v);
        assert!(!v.contains("\r\n"));
        assert!(!n.eq_ignore_ascii_case("transfer-encoding"));
    }
}
