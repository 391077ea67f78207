//! XML-RPC (<http://xmlrpc.com/spec.md>) as SER/Kamailio's `xmlrpc` module speaks it:
//! `methodCall` with `params`, `methodResponse` with one value, faults with an integer
//! `faultCode` and a `faultString`. The XML itself is `dxr`'s (quick-xml underneath); this
//! module maps its values to and from `serde_json::Value`. Must never panic on any body, and
//! refuses nesting deep enough to exhaust the stack before the parser sees it.

use std::collections::HashMap;

use dxr::{TryFromValue, TryToValue};
use serde_json::{Map, Number, Value};

use super::{CallResult, Fault, FaultKind};

/// Deepest `<value>` nesting accepted (management values are a few levels deep).
pub const MAX_DEPTH: usize = 32;

/// Deepest `<value>` nesting a client accepts in a response: a result may wrap values of
/// a call (an echo in an array), so twice a call's limit.
pub const MAX_RESPONSE_DEPTH: usize = 2 * MAX_DEPTH;

/// Runs the call in `body` through `call`; the `methodResponse` document (a fault included).
pub fn handle(body: &[u8], call: &mut dyn FnMut(&str, &[Value]) -> CallResult) -> String {
    match parse_call(body) {
        Ok((method, params)) => match call(&method, &params) {
            Ok(v) => encode_response(&v),
            Err(f) => encode_fault(&f),
        },
        Err(f) => encode_fault(&f),
    }
}

/// The method name and parameters of a `methodCall`.
pub fn parse_call(body: &[u8]) -> Result<(String, Vec<Value>), Fault> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Fault::new(FaultKind::Parse, "XML-RPC body is not UTF-8"))?;
    match depth(text) {
        usize::MAX => {
            return Err(Fault::new(
                FaultKind::InvalidRequest,
                "a DOCTYPE or another <! declaration in an XML-RPC call",
            ))
        }
        d if d > MAX_DEPTH => {
            return Err(Fault::new(
                FaultKind::InvalidRequest,
                format!("values nested deeper than {MAX_DEPTH}"),
            ))
        }
        _ => {}
    }
    let call: dxr::MethodCall<'_> = dxr::deserialize_xml(text)
        .map_err(|e| Fault::new(FaultKind::Parse, format!("not an XML-RPC methodCall: {e}")))?;
    let name = call.name().trim().to_owned();
    if name.is_empty() {
        return Err(Fault::new(FaultKind::InvalidRequest, "empty methodName"));
    }
    let params = call.params().iter().map(from_dxr).collect();
    Ok((name, params))
}

/// The `methodName` of a call, without converting its parameters.
pub fn method_name(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    if depth(text) > MAX_DEPTH {
        return None;
    }
    let call: dxr::MethodCall<'_> = dxr::deserialize_xml(text).ok()?;
    Some(call.name().trim().to_owned())
}

/// A `methodResponse` carrying `v`.
pub fn encode_response(v: &Value) -> String {
    let resp = dxr::MethodResponse::new(to_dxr(v));
    match dxr::serialize_xml(&resp) {
        Ok(s) => with_decl(s),
        Err(e) => encode_fault(&Fault::new(
            FaultKind::Internal,
            format!("cannot encode the result: {e}"),
        )),
    }
}

/// A `methodResponse` carrying a fault.
pub fn encode_fault(f: &Fault) -> String {
    encode_fault_code(f.kind.xml_code(), &f.message)
}

/// A `methodResponse` carrying a fault with this exact code.
pub fn encode_fault_code(code: i32, message: &str) -> String {
    let resp = dxr::FaultResponse::from(dxr::Fault::new(code, message.to_owned()));
    // A fault is two scalars: serializing it cannot fail; an empty body would still be a
    // (visible) client error rather than a panic.
    with_decl(dxr::serialize_xml(&resp).unwrap_or_default())
}

/// A `methodCall` document (for clients and tests).
pub fn encode_call(method: &str, params: &[Value]) -> String {
    let call = dxr::MethodCall::new(method, params.iter().map(to_dxr).collect());
    with_decl(dxr::serialize_xml(&call).unwrap_or_default())
}

/// The value of a `methodResponse`, or its fault.
pub fn parse_response(body: &[u8]) -> Result<Value, (i32, String)> {
    let text = std::str::from_utf8(body).map_err(|_| (0, "not UTF-8".to_owned()))?;
    // The client's side needs the same guard against a stack overflow: whatever answers
    // is not to be trusted to nest sensibly.
    if depth(text) > MAX_RESPONSE_DEPTH {
        return Err((0, "a methodResponse nested too deep".to_owned()));
    }
    if let Ok(f) = dxr::deserialize_xml::<dxr::FaultResponse>(text) {
        if let Ok(f) = dxr::Fault::try_from(f) {
            return Err((f.code(), f.string().to_owned()));
        }
    }
    let r: dxr::MethodResponse =
        dxr::deserialize_xml(text).map_err(|e| (0, format!("not a methodResponse: {e}")))?;
    Ok(from_dxr(&r.inner()))
}

fn with_decl(s: String) -> String {
    format!("<?xml version=\"1.0\"?>\n{s}")
}

/// Deepest nesting of `<value>` elements (a cheap scan, not a parse), or `usize::MAX` for a
/// body the scan cannot vouch for (a DOCTYPE or another `<!` declaration: an XML-RPC call
/// needs none). It reads markup as the parser does: a `</value>` inside a comment, a CDATA
/// section, a processing instruction or a quoted attribute closes nothing (counting those
/// let a body nest without bound behind the check, and overflow the stack).
fn depth(text: &str) -> usize {
    let b = text.as_bytes();
    let (mut d, mut max) = (0usize, 0usize);
    let mut i = 0;
    while let Some(lt) = memchr::memchr(b'<', &b[i..]) {
        let rest = &b[i + lt + 1..];
        // Where the scan resumes, relative to `rest`; a construct that never ends ends the
        // scan (the parser refuses it anyway).
        let skip_past = |close: &[u8], from: usize| {
            memchr::memmem::find(&rest[from.min(rest.len())..], close)
                .map(|e| from + e + close.len())
        };
        let next = if rest.starts_with(b"!--") {
            skip_past(b"-->", 3)
        } else if rest.starts_with(b"![CDATA[") {
            skip_past(b"]]>", 8)
        } else if rest.starts_with(b"?") {
            skip_past(b"?>", 1)
        } else if rest.starts_with(b"!") {
            return usize::MAX;
        } else {
            // A tag: its end is the first `>` outside quotes.
            let mut quote = None;
            let end = rest.iter().position(|&c| match quote {
                Some(q) => {
                    if c == q {
                        quote = None;
                    }
                    false
                }
                None => {
                    if c == b'"' || c == b'\'' {
                        quote = Some(c);
                    }
                    c == b'>'
                }
            });
            let Some(end) = end else {
                break;
            };
            let tag = &rest[..end];
            let (closing, tag) = match tag.strip_prefix(b"/") {
                Some(t) => (true, t),
                None => (false, tag),
            };
            let name_len = tag
                .iter()
                .position(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'/'))
                .unwrap_or(tag.len());
            let name = &tag[..name_len];
            // `x:value` too: whatever the parser makes of a prefix, count it.
            let local = name.rsplit(|&c| c == b':').next().unwrap_or(name);
            if local == b"value" {
                if closing {
                    d = d.saturating_sub(1);
                } else if !tag.ends_with(b"/") {
                    // `<value/>` opens nothing.
                    d += 1;
                    max = max.max(d);
                }
            }
            Some(end + 1)
        };
        let Some(next) = next else {
            break;
        };
        i += lt + 1 + next;
    }
    max
}

/// An XML-RPC value as JSON (see the module doc of `rpc` for the mapping).
pub fn from_dxr(v: &dxr::Value) -> Value {
    if let Ok(i) = i32::try_from_value(v) {
        return Value::from(i);
    }
    if let Ok(i) = i64::try_from_value(v) {
        return Value::from(i);
    }
    if let Ok(b) = bool::try_from_value(v) {
        return Value::from(b);
    }
    if let Ok(s) = String::try_from_value(v) {
        return Value::from(s);
    }
    if let Ok(f) = f64::try_from_value(v) {
        return Number::from_f64(f).map_or(Value::Null, Value::Number);
    }
    if let Ok(t) = dxr::chrono::NaiveDateTime::try_from_value(v) {
        return Value::from(t.format(dxr::XML_RPC_DATE_FORMAT).to_string());
    }
    if let Ok(bytes) = Vec::<u8>::try_from_value(v) {
        return Value::from(String::from_utf8_lossy(&bytes).into_owned());
    }
    if let Ok(m) = HashMap::<String, dxr::Value>::try_from_value(v) {
        let mut entries: Vec<_> = m.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut o = Map::new();
        for (k, v) in entries {
            o.insert(k, from_dxr(&v));
        }
        return Value::Object(o);
    }
    if let Ok(a) = Vec::<dxr::Value>::try_from_value(v) {
        return Value::Array(a.iter().map(from_dxr).collect());
    }
    // nil (and anything dxr adds later).
    Value::Null
}

/// JSON as an XML-RPC value: integers as `i4` when they fit, else `i8`.
pub fn to_dxr(v: &Value) -> dxr::Value {
    match v {
        Value::Null => dxr::Value::nil(),
        Value::Bool(b) => dxr::Value::boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(i) => dxr::Value::i4(i),
                    Err(_) => dxr::Value::i8(i),
                }
            } else if let Some(u) = n.as_u64() {
                i64::try_from(u).map_or(dxr::Value::double(u as f64), dxr::Value::i8)
            } else {
                dxr::Value::double(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => dxr::Value::string(s.clone()),
        Value::Array(a) => {
            let items: Vec<dxr::Value> = a.iter().map(to_dxr).collect();
            // Converting already-built values cannot fail (see dxr's TryToValue docs).
            items
                .try_to_value()
                .unwrap_or_else(|_| dxr::Value::string(String::new()))
        }
        Value::Object(o) => {
            let m: HashMap<String, dxr::Value> =
                o.iter().map(|(k, v)| (k.clone(), to_dxr(v))).collect();
            m.try_to_value()
                .unwrap_or_else(|_| dxr::Value::string(String::new()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PY_CALL: &str = "<?xml version='1.0'?>\n<methodCall>\n<methodName>ul.show</methodName>\n<params>\n<param>\n<value><string>alice@example.com</string></value>\n</param>\n<param>\n<value><int>3</int></value>\n</param>\n<param>\n<value><boolean>1</boolean></value>\n</param>\n<param>\n<value><double>1.5</double></value>\n</param>\n<param>\n<value><struct>\n<member>\n<name>a</name>\n<value><array><data>\n<value><i4>1</i4></value>\n<value>bare</value>\n</data></array></value>\n</member>\n</struct></value>\n</param>\n</params>\n</methodCall>\n";

    #[test]
    fn parses_a_python_style_call() {
        let (m, p) = parse_call(PY_CALL.as_bytes()).expect("parse");
        assert_eq!(m, "ul.show");
        assert_eq!(
            p,
            vec![
                json!("alice@example.com"),
                json!(3),
                json!(true),
                json!(1.5),
                json!({"a": [1, "bare"]}),
            ]
        );
        assert_eq!(method_name(PY_CALL.as_bytes()).as_deref(), Some("ul.show"));
    }

    #[test]
    fn round_trips_values_through_a_response() {
        let v = json!({"n": 5, "big": 5_000_000_000i64, "s": "x<&>", "b": false, "f": 2.5,
                       "a": [1, "two", null], "o": {"k": "v"}});
        let doc = encode_response(&v);
        assert!(doc.starts_with("<?xml"));
        assert_eq!(parse_response(doc.as_bytes()), Ok(v));
    }

    #[test]
    fn faults_carry_ser_codes() {
        let doc = encode_fault(&Fault::forbidden());
        assert_eq!(
            parse_response(doc.as_bytes()),
            Err((403, "forbidden".to_owned()))
        );
        let doc = handle(b"<methodCall><methodName>x</methodName>", &mut |_, _| {
            Ok(Value::Null)
        });
        assert!(matches!(parse_response(doc.as_bytes()), Err((400, _))));
    }

    #[test]
    fn calls_round_trip() {
        let doc = encode_call("tls.kill", &[json!(12)]);
        let (m, p) = parse_call(doc.as_bytes()).expect("parse");
        assert_eq!((m.as_str(), p), ("tls.kill", vec![json!(12)]));
    }

    /// Found by the `xmlrpc` fuzz target: `parse_response` (siproxctl's side) had no depth
    /// check, and dxr does not check the root element, so any deeply nested document (a
    /// `methodCall` too) overflowed the stack.
    #[test]
    fn deep_responses_are_refused() {
        let nest = |n: usize, root: &str| {
            let mut s = format!("<{root}><params><param>");
            for _ in 0..n {
                s.push_str("<value><array><data>");
            }
            s.push_str("<value><int>1</int></value>");
            for _ in 0..n {
                s.push_str("</data></array></value>");
            }
            s.push_str(&format!("</param></params></{root}>"));
            s
        };
        for root in ["methodResponse", "methodCall"] {
            let e = parse_response(nest(20_000, root).as_bytes()).expect_err(root);
            assert_eq!(e.0, 0, "{e:?}");
        }
        let mut v = json!(1);
        for _ in 0..MAX_RESPONSE_DEPTH - 1 {
            v = json!([v]);
        }
        assert_eq!(parse_response(encode_response(&v).as_bytes()), Ok(v));
    }

    /// Found by the `xmlrpc` fuzz target: `</value>` inside a comment counted as a close,
    /// so a body could nest without bound behind the depth check and overflow the stack
    /// (a segfault of the whole proxy, from any HTTP request on a SIP listener).
    #[test]
    fn closes_hidden_in_markup_do_not_hide_nesting() {
        let fake = [
            "<!--</value></value></value></value>-->",
            "<![CDATA[</value></value></value></value>]]>",
            "<?pi </value></value></value></value>?>",
        ];
        for f in fake {
            let mut s = String::from("<methodCall><methodName>x</methodName><params><param>");
            for i in 0..40 {
                s.push_str("<value><array><data>");
                if i % 3 == 2 {
                    s.push_str(f);
                }
            }
            s.push_str("<value><int>1</int></value>");
            for _ in 0..40 {
                s.push_str("</data></array></value>");
            }
            s.push_str("</param></params></methodCall>");
            let e = parse_call(s.as_bytes()).expect_err(f);
            assert_eq!(e.kind, FaultKind::InvalidRequest, "{f}");
            assert_eq!(method_name(s.as_bytes()), None, "{f}");
        }
        // A quoted `>` or `</value>` in an attribute neither ends a tag nor closes a value.
        assert_eq!(depth(r#"<value a="x>"><value b='</value>'><value>"#), 3);
        // Comments, CDATA and the declaration that do not hide anything are still fine.
        let ok = "<?xml version=\"1.0\"?><!-- c --><methodCall><methodName>a</methodName>\
                  <params><param><value><string><![CDATA[<b>]]></string></value></param>\
                  </params></methodCall>";
        assert_eq!(
            parse_call(ok.as_bytes()),
            Ok(("a".to_owned(), vec![json!("<b>")]))
        );
        // A DOCTYPE is refused: an XML-RPC call needs none, and the scan cannot vouch for it.
        let dt = "<!DOCTYPE m [<!ENTITY e \"</value>\">]><methodCall><methodName>a</methodName>\
                  </methodCall>";
        assert!(parse_call(dt.as_bytes()).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_and_garbage_never_panics() {
        let mut s = String::from("<methodCall><methodName>x</methodName><params><param>");
        for _ in 0..5000 {
            s.push_str("<value><array><data>");
        }
        s.push_str("</params></methodCall>");
        let e = parse_call(s.as_bytes()).expect_err("deep");
        assert_eq!(e.kind, FaultKind::InvalidRequest);
        for b in [
            &b""[..],
            b"<",
            b"<methodCall/>",
            b"\xff\xfe",
            b"<methodCall><methodName></methodName></methodCall>",
            b"<methodCall><methodName>a</methodName><params><param><value><int>x</int></value></param></params></methodCall>",
        ] {
            assert!(parse_call(b).is_err());
        }
    }
}
