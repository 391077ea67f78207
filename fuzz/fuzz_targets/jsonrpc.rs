//! Fuzz target: a JSON-RPC body through `jsonrpc::handle`, `method_name`, `is_batch` and
//! `error_for`, then as a request (first byte: its Content-Type label) on the management
//! and SIP-listener paths. Must never panic.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use siprox_fuzz::rpc;

fuzz_target!(|data: &[u8]| {
    let Some((&label, body)) = data.split_first() else {
        return;
    };
    rpc::json_body(body);
    if let Some(req) = rpc::request_with(label, body) {
        rpc::management(&req);
        rpc::sip_listener(&req);
    }
});
