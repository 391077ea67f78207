//! HTTP on a SIP stream (SER-style RPC): each request is handed to the route script, which
//! dispatches it to the `Rpc` actor (`dispatch_rpc()`), answers it, or leaves it refused.
//! Must never leave a request unanswered, and never wait for the answer on this thread.

use bytes::Bytes;
use tracing::info;

use super::Connection;
use crate::state::messages::{CloseReason, RpcRequest};
use siprox::script::host::HttpDecision;

impl Connection {
    /// HTTP requests on a SIP stream: the route script decides (`dispatch_rpc()`, a reply,
    /// or neither, which is refused); a request never goes unanswered.
    pub(super) fn process_http(
        &mut self,
        framer: siprox::rpc::HttpFramer,
    ) -> Result<(), CloseReason> {
        loop {
            let req = match framer.next_request(&mut self.rbuf) {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.enqueue(Bytes::from(e.response().to_bytes()));
                    return Err(CloseReason::FramingError);
                }
            };
            let inbound = self.inbound();
            let caller = siprox::rpc::sip::caller(inbound.source, self.tls.as_deref());
            if let Some(mut r) = siprox::rpc::sip::refuse_batch(&req) {
                info!(%caller, "RPC batch refused on a SIP listener");
                r.close = !req.keep_alive();
                self.enqueue(Bytes::from(r.to_bytes()));
                if r.close {
                    return Err(CloseReason::Shutdown);
                }
                continue;
            }
            let Ok(msg) = siprox::sip::Message::parse(req.raw.clone()) else {
                let r = siprox::rpc::HttpResponse::text(400, "malformed request\n");
                self.enqueue(Bytes::from(r.to_bytes()));
                return Err(CloseReason::FramingError);
            };
            // The method the script decided on; the RPC layer runs that one and no other.
            let method = siprox::rpc::method_any(&req.body);
            match self.worker.on_http(&msg, &inbound, self.tls.as_deref()) {
                HttpDecision::Dispatch { trusted } => {
                    let allowed = trusted || {
                        let snap = self.worker.shared.snapshot.load();
                        siprox::rpc::sip::admitted(
                            &snap.config.management.allow,
                            self.tls.as_deref(),
                        )
                    };
                    let rpc = self.worker.shared.rpc.get().cloned();
                    let handle = self.worker.shared.table.get(self.id());
                    match (rpc, handle) {
                        (Some(rpc), Some(h)) => {
                            let call = rpc.send(RpcRequest {
                                req: Box::new(req),
                                allowed,
                                caller,
                                only: Some(method.unwrap_or_default()),
                            });
                            // The answer comes from the control arbiter; it is queued like
                            // any other write, so this connection never waits for it.
                            actix::spawn(async move {
                                match call.await {
                                    Ok(resp) => {
                                        let _ = h.send(Bytes::from(resp.to_bytes()));
                                        // It said `Connection: close`: written, then closed.
                                        if resp.close {
                                            h.drain();
                                        }
                                    }
                                    Err(_) => h.close(),
                                }
                            });
                        }
                        _ => {
                            let r = siprox::rpc::HttpResponse::text(503, "RPC not available\n");
                            self.enqueue(Bytes::from(r.to_bytes()));
                        }
                    }
                }
                HttpDecision::Reply(code, reason) => {
                    info!(%caller, method = method.as_deref().unwrap_or(""), code, "RPC call answered by the route script");
                    let r = siprox::rpc::sip::script_reply(&req, code, &reason);
                    self.enqueue(Bytes::from(r.to_bytes()));
                    if r.close {
                        return Err(CloseReason::Shutdown);
                    }
                }
                HttpDecision::Refuse => {
                    info!(%caller, method = method.as_deref().unwrap_or(""), "RPC call not dispatched by the route script");
                    let r = siprox::rpc::sip::undispatched(&req);
                    self.enqueue(Bytes::from(r.to_bytes()));
                    if r.close {
                        return Err(CloseReason::Shutdown);
                    }
                }
            }
        }
    }
}
