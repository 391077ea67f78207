//! JSON-RPC 2.0 (<https://www.jsonrpc.org/specification>): single calls, batches and
//! notifications, with the standard error codes. Must never panic on any body; a body that
//! is only notifications gets no response body at all (HTTP 204), as the spec requires.

use serde_json::{json, Map, Value};

use super::{CallResult, Fault, FaultKind};

/// Most calls in one batch: more is a client bug or an attack, not management.
pub const MAX_BATCH: usize = 256;

/// Runs every call of `body` through `call`; the response body, or `None` when nothing is
/// to be answered (only notifications).
pub fn handle(body: &[u8], call: &mut dyn FnMut(&str, &[Value]) -> CallResult) -> Option<Vec<u8>> {
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Some(encode(&error_response(
                Value::Null,
                &Fault::new(FaultKind::Parse, format!("parse error: {e}")),
            )))
        }
    };
    match parsed {
        Value::Array(items) => {
            if items.is_empty() {
                return Some(encode(&error_response(
                    Value::Null,
                    &Fault::new(FaultKind::InvalidRequest, "empty batch"),
                )));
            }
            if items.len() > MAX_BATCH {
                return Some(encode(&error_response(
                    Value::Null,
                    &Fault::new(
                        FaultKind::InvalidRequest,
                        format!("batch of more than {MAX_BATCH} calls"),
                    ),
                )));
            }
            let out: Vec<Value> = items.iter().filter_map(|i| one(i, call)).collect();
            if out.is_empty() {
                None
            } else {
                Some(encode(&Value::Array(out)))
            }
        }
        single => one(&single, call).map(|v| encode(&v)),
    }
}

/// One request object; `None` for a notification.
fn one(req: &Value, call: &mut dyn FnMut(&str, &[Value]) -> CallResult) -> Option<Value> {
    let Some(obj) = req.as_object() else {
        return Some(error_response(
            Value::Null,
            &Fault::new(FaultKind::InvalidRequest, "a request must be an object"),
        ));
    };
    // A request without "id" is a notification; "id": null is a (discouraged) call.
    let id = obj.get("id").cloned();
    let reply_id = match &id {
        Some(v @ (Value::Null | Value::Number(_) | Value::String(_))) => v.clone(),
        Some(_) => {
            return Some(error_response(
                Value::Null,
                &Fault::new(FaultKind::InvalidRequest, "id must be a string or a number"),
            ))
        }
        None => Value::Null,
    };
    let invalid = |msg: &str| {
        Some(error_response(
            reply_id.clone(),
            &Fault::new(FaultKind::InvalidRequest, msg),
        ))
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid("\"jsonrpc\" must be \"2.0\"");
    }
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        return invalid("\"method\" must be a string");
    };
    let params: Vec<Value> = match obj.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(o @ Value::Object(_)) => vec![o.clone()],
        Some(_) => return invalid("\"params\" must be an array or an object"),
    };
    let result = call(method, &params);
    id.as_ref()?;
    Some(match result {
        Ok(v) => json!({"jsonrpc": "2.0", "result": v, "id": reply_id}),
        Err(f) => error_response(reply_id, &f),
    })
}

/// An error response object.
pub fn error_response(id: Value, f: &Fault) -> Value {
    let mut e = Map::new();
    e.insert("code".into(), Value::from(f.kind.json_code()));
    e.insert("message".into(), Value::from(f.message.clone()));
    json!({"jsonrpc": "2.0", "error": Value::Object(e), "id": id})
}

/// An error response to `body` (its id when it is a single request that has one).
pub fn error_for(body: &[u8], f: &Fault) -> String {
    let id = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .filter(|v| v.is_number() || v.is_string())
        .unwrap_or(Value::Null);
    String::from_utf8(encode(&error_response(id, f))).unwrap_or_default()
}

/// The method of a single request; `None` for a batch, which names several (a guard that
/// read only one of them would let the others through).
pub fn method_name(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.as_object()?.get("method")?.as_str().map(str::to_owned)
}

/// Whether `body` is a JSON-RPC batch (a JSON array, however it is labelled).
pub fn is_batch(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// A request (for clients such as `siproxctl`).
pub fn request(id: u64, method: &str, params: &[Value]) -> Vec<u8> {
    encode(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
}

fn encode(v: &Value) -> Vec<u8> {
    // Serializing a Value cannot fail (string keys only); an empty body would be answered
    // as a client-visible error anyway.
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &str) -> Option<Value> {
        let mut f = |m: &str, p: &[Value]| -> CallResult {
            match m {
                "sum" => Ok(Value::from(p.iter().filter_map(Value::as_i64).sum::<i64>())),
                "named" => Ok(p.first().cloned().unwrap_or(Value::Null)),
                m => Err(Fault::method_not_found(m)),
            }
        };
        handle(body.as_bytes(), &mut f)
            .map(|b| serde_json::from_slice(&b).expect("response is JSON"))
    }

    #[test]
    fn spec_examples() {
        let v = run(r#"{"jsonrpc":"2.0","method":"sum","params":[1,2,4],"id":"1"}"#).expect("r");
        assert_eq!(v, json!({"jsonrpc":"2.0","result":7,"id":"1"}));
        let v = run(r#"{"jsonrpc":"2.0","method":"named","params":{"a":1},"id":2}"#).expect("r");
        assert_eq!(v["result"], json!({"a":1}));
        assert!(run(r#"{"jsonrpc":"2.0","method":"sum","params":[1]}"#).is_none());
        let v = run(r#"{"jsonrpc":"2.0","method":"foobar","id":"1"}"#).expect("r");
        assert_eq!(v["error"]["code"], -32601);
        let v = run(r#"{"jsonrpc":"2.0","method":"foobar,"params":"bar","baz]"#).expect("r");
        assert_eq!(v["error"]["code"], -32700);
        assert_eq!(v["id"], Value::Null);
        let v = run(r#"{"jsonrpc":"2.0","method":1,"params":"bar"}"#).expect("r");
        assert_eq!(v["error"]["code"], -32600);
        let v = run("[]").expect("r");
        assert_eq!(v["error"]["code"], -32600);
        let v = run("[1,2]").expect("r");
        assert_eq!(v.as_array().expect("batch").len(), 2);
        assert_eq!(v[0]["error"]["code"], -32600);
    }

    #[test]
    fn batches_mix_calls_and_notifications() {
        let v = run(
            r#"[{"jsonrpc":"2.0","method":"sum","params":[1,2],"id":"1"},
                {"jsonrpc":"2.0","method":"sum","params":[7]},
                {"foo":"boo"},
                {"jsonrpc":"2.0","method":"nope","id":"5"}]"#,
        )
        .expect("r");
        let a = v.as_array().expect("array");
        assert_eq!(a.len(), 3);
        assert_eq!(a[0]["result"], 3);
        assert_eq!(a[1]["error"]["code"], -32600);
        assert_eq!(a[2]["error"]["code"], -32601);
        assert!(run(
            r#"[{"jsonrpc":"2.0","method":"sum","params":[1]},{"jsonrpc":"2.0","method":"x"}]"#
        )
        .is_none());
    }

    #[test]
    fn wrong_version_and_params_are_invalid() {
        let v = run(r#"{"jsonrpc":"1.0","method":"sum","id":1}"#).expect("r");
        assert_eq!(v["error"]["code"], -32600);
        assert_eq!(v["id"], 1);
        let v = run(r#"{"jsonrpc":"2.0","method":"sum","params":3,"id":1}"#).expect("r");
        assert_eq!(v["error"]["code"], -32600);
        let v = run(r#"{"jsonrpc":"2.0","method":"sum","id":{}}"#).expect("r");
        assert_eq!(v["error"]["code"], -32600);
    }

    #[test]
    fn never_panics_on_garbage() {
        for b in [
            "",
            "null",
            "\"x\"",
            "{",
            "[[]]",
            "[{}]",
            "{\"jsonrpc\":\"2.0\"}",
        ] {
            let _ = run(b);
        }
    }
}
