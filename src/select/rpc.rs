//! `@rpc.method` and `@xmlrpc.method`: the RPC method an HTTP request carries when it
//! arrived on a SIP listener (SER style: the request is parsed as a message whose method is
//! `POST` and whose body is the call). Both give the method of a JSON-RPC or an XML-RPC
//! call, read from the body whatever its Content-Type, so that a guard written with either
//! covers both protocols; a JSON-RPC batch (refused on a SIP listener before the script
//! runs) and anything that is not an RPC call yield the empty string, never an error.

use super::{Env, Seg, SelectError, Value};
use crate::rpc;

/// An RPC select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcSelect {
    /// `@rpc.method`: the method of a JSON-RPC or XML-RPC call.
    Method,
    /// `@xmlrpc.method`: SER's name for the same thing. It used to be empty for a JSON-RPC
    /// body, which let JSON-RPC through a guard written for XML-RPC.
    XmlrpcMethod,
}

pub(crate) fn build(segs: &[Seg<'_>]) -> Result<RpcSelect, SelectError> {
    let (first, rest) = segs
        .split_first()
        .ok_or_else(|| SelectError::at(0, "empty select"))?;
    first.no_index()?;
    let xml = first.is(&["xmlrpc"]);
    match rest {
        [m] if m.is(&["method"]) => {
            m.no_index()?;
            Ok(if xml {
                RpcSelect::XmlrpcMethod
            } else {
                RpcSelect::Method
            })
        }
        [] => Err(SelectError::at(
            first.at,
            format!("`@{}` needs `.method`", first.name),
        )),
        [m, ..] => Err(SelectError::at(
            m.at,
            format!(
                "unknown select `{}` after `{}` (only `method`)",
                m.name, first.name
            ),
        )),
    }
}

impl RpcSelect {
    pub fn eval<'a>(&self, env: &Env<'a>) -> Value<'a> {
        let Some(msg) = env.msg else {
            return Value::EMPTY;
        };
        rpc::method_any(msg.body()).map_or(Value::EMPTY, Value::from)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Select;
    use super::*;
    use crate::proxy::{Inbound, Transport};
    use crate::sip::Message;

    fn eval(path: &str, raw: &str) -> String {
        let msg = Message::parse(bytes::Bytes::copy_from_slice(raw.as_bytes())).expect("parses");
        let rx = Inbound {
            transport: Transport::Tls,
            source: "127.0.0.1:5000".parse().expect("addr"),
            local: "127.0.0.1:5061".parse().expect("addr"),
            conn: None,
        };
        let env = Env {
            msg: Some(&msg),
            rx: &rx,
            tls: None,
            now_unix: 0,
        };
        Select::parse(path).expect("valid").eval(&env).to_string()
    }

    fn http(ct: &str, body: &str) -> String {
        format!(
            "POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn methods_of_http_rpc_requests() {
        let x = http(
            "text/xml",
            "<?xml version=\"1.0\"?><methodCall><methodName>core.kill</methodName></methodCall>",
        );
        assert_eq!(eval("xmlrpc.method", &x), "core.kill");
        assert_eq!(eval("rpc.method", &x), "core.kill");
        let j = http(
            "application/json",
            r#"{"jsonrpc":"2.0","id":1,"method":"tls.list"}"#,
        );
        assert_eq!(eval("rpc.method", &j), "tls.list");
        assert_eq!(eval("xmlrpc.method", &j), "tls.list", "both protocols");
        // The label does not hide the method from the script.
        let lying = http(
            "text/plain",
            r#"{"jsonrpc":"2.0","id":1,"method":"core.kill"}"#,
        );
        assert_eq!(eval("xmlrpc.method", &lying), "core.kill");
        let batch = http(
            "application/json",
            r#"[{"jsonrpc":"2.0","id":1,"method":"core.version"},{"jsonrpc":"2.0","id":2,"method":"core.kill"}]"#,
        );
        assert_eq!(eval("rpc.method", &batch), "");
        let sip = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\n\
                   From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\
                   Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(eval("rpc.method", sip), "");
    }

    #[test]
    fn bad_paths_are_compile_errors() {
        for p in [
            "rpc",
            "rpc.nope",
            "xmlrpc.method.x",
            "rpc[1].method",
            "xmlrpc.method[2]",
        ] {
            assert!(Select::parse(p).is_err(), "{p}");
        }
    }
}
