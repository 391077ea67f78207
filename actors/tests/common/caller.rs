//! A UDP caller for the transaction tests: one socket, and every message it received.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use siprox_testkit::wire::{header, status};
use tokio::net::UdpSocket;

/// A caller's socket and what it received.
pub struct Caller {
    sock: Arc<UdpSocket>,
    got: Arc<Mutex<Vec<String>>>,
}

impl Caller {
    pub async fn new() -> Caller {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let (s, g) = (sock.clone(), got.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            while let Ok((n, _)) = s.recv_from(&mut buf).await {
                g.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_string());
            }
        });
        Caller { sock, got }
    }

    /// The Via sent-by of this caller (`UDP ip:port`).
    pub fn via(&self) -> String {
        format!("UDP {}", self.sock.local_addr().unwrap())
    }

    pub async fn send(&self, to: SocketAddr, m: &str) {
        self.sock.send_to(m.as_bytes(), to).await.unwrap();
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }

    /// Statuses received for `cseq_method` so far (any call), in order.
    pub fn statuses(&self, cseq_method: &str) -> Vec<u16> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| header(r, "CSeq").is_some_and(|c| c.ends_with(cseq_method)))
            .filter_map(|r| status(r))
            .collect()
    }

    /// Responses received for call `call`, in order.
    pub fn responses(&self, call: &str) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| header(r, "Call-ID") == Some(call))
            .cloned()
            .collect()
    }

    /// Statuses received for call `call` (any CSeq method), in order.
    pub fn call_statuses(&self, call: &str) -> Vec<u16> {
        self.responses(call)
            .iter()
            .filter_map(|r| status(r))
            .collect()
    }

    /// The first final response of `call`.
    pub fn final_of(&self, call: &str) -> Option<String> {
        self.responses(call)
            .into_iter()
            .find(|r| status(r).is_some_and(|s| s >= 200))
    }
}
