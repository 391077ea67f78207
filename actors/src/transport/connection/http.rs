//! HTTP on a SIP stream (SER-style RPC): each request is handed to the route script, which
//! dispatches it to the `Rpc` actor (`dispatch_rpc()`), answers it, or leaves it refused.
//! Must never leave a request unanswered, and never wait for the answer on this thread.

use bytes::Bytes;

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
            let Ok(msg) = siprox::sip::Message::parse(req.raw.clone()) else {
                let r = siprox::rpc::HttpResponse::text(400, "malformed request\n");
                self.enqueue(Bytes::from(r.to_bytes()));
                return Err(CloseReason::FramingError);
            };
            match self.worker.on_http(&msg, &inbound, self.tls.as_deref()) {
                HttpDecision::Dispatch => {
                    let rpc = self.worker.shared.rpc.get().cloned();
                    let handle = self.worker.shared.table.get(self.id());
                    match (rpc, handle) {
                        (Some(rpc), Some(h)) => {
                            let call = rpc.send(RpcRequest {
                                req: Box::new(req),
                                allowed: true,
                            });
                            // The answer comes from the control arbiter; it is queued like
                            // any other write, so this connection never waits for it.
                            actix::spawn(async move {
                                match call.await {
                                    Ok(resp) => {
                                        let _ = h.send(Bytes::from(resp.to_bytes()));
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
                    let r = siprox::rpc::sip::script_reply(&req, code, &reason);
                    self.enqueue(Bytes::from(r.to_bytes()));
                }
                HttpDecision::Refuse => {
                    let r = siprox::rpc::sip::undispatched(&req);
                    self.enqueue(Bytes::from(r.to_bytes()));
                }
            }
        }
    }
}
