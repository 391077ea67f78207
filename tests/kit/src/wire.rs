//! Raw SIP text on the wire, for tests that craft exactly the bytes they send (malformed,
//! oversized, stalled) and read exactly what comes back: request and response builders,
//! a framed reader, and two bare peers (a UDP UAS whose 200s carry the body size a request
//! asks for, a TLS UAS that counts connections). Test-only: may panic, but must never wait
//! without a bound (every read has a timeout).

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_openssl::SslStream;

/// A request. `via` is `TRANSPORT host:port`.
pub fn request(
    method: &str,
    ruri: &str,
    via: &str,
    call_id: &str,
    extra: &str,
    body: &str,
) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/{via};branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@127.0.0.1>;tag=a-{call_id}\r\n\
         To: <{ruri}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 {method}\r\n\
         {extra}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// OPTIONS addressed to siprox itself at `addr`.
pub fn options_to(addr: SocketAddr, transport: &str, call_id: &str) -> String {
    let param = if transport == "UDP" {
        String::new()
    } else {
        format!(";transport={}", transport.to_lowercase())
    };
    request(
        "OPTIONS",
        &format!("sip:{addr}{param}"),
        &format!("{transport} 127.0.0.1:9"),
        call_id,
        "",
        "",
    )
}

/// The value of the first header `name` (case-insensitive, full names only).
pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    let head = msg.split("\r\n\r\n").next()?;
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Status code of a response.
pub fn status(msg: &str) -> Option<u16> {
    let line = msg.split("\r\n").next()?;
    line.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// A response to `req` with `body_len` bytes of body: copies every Via, From, To (with a
/// tag), Call-ID and CSeq.
pub fn response_for(req: &str, code: u16, body_len: usize) -> String {
    let head = req.split("\r\n\r\n").next().unwrap_or("");
    let mut out = format!("SIP/2.0 {code} OK\r\n");
    for l in head.split("\r\n").skip(1) {
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => {
                out.push_str(l);
                out.push_str("\r\n");
            }
            "to" | "t" => {
                out.push_str(l);
                out.push_str(";tag=uas\r\n");
            }
            _ => {}
        }
    }
    out.push_str(&format!("Content-Length: {body_len}\r\n\r\n"));
    out.push_str(&"x".repeat(body_len));
    out
}

/// Reads one SIP message from a stream (head + Content-Length body), within `within`.
pub async fn read_message<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    within: Duration,
) -> std::io::Result<String> {
    tokio::time::timeout(within, async {
        loop {
            // Skip keepalive CRLFs between messages.
            while buf.starts_with(b"\r\n") {
                buf.drain(..2);
            }
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = format!("{}\r\n\r\n", String::from_utf8_lossy(&buf[..end]));
                let cl: usize = header(&head, "Content-Length")
                    .or_else(|| header(&head, "l"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let total = end + 4 + cl;
                if buf.len() >= total {
                    let msg = String::from_utf8_lossy(&buf[..total]).to_string();
                    buf.drain(..total);
                    return Ok(msg);
                }
            }
            let mut chunk = [0u8; 16384];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no message in time"))?
}

/// Writes a whole message.
pub async fn send<S: AsyncWrite + Unpin>(s: &mut S, msg: &str) {
    s.write_all(msg.as_bytes()).await.expect("write");
}

/// A peer that stops reading: sends up to `tries` requests, each drawing a ~60 KB response
/// from `uas` (see [`udp_uas`]), and never reads, so its window and siprox's socket buffer
/// fill. True when a write failed: siprox closed the connection. Stops early when `stop`.
pub async fn draw_without_reading<S: AsyncWrite + Unpin>(
    s: &mut S,
    uas: SocketAddr,
    tag: &str,
    tries: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> bool {
    for i in 0..tries {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let req = request(
            "MESSAGE",
            &format!("sip:bob@{uas}"),
            "TLS 127.0.0.1:9",
            &format!("stall-{tag}-{i}"),
            "X-Body-Size: 60000\r\n",
            "",
        );
        if s.write_all(req.as_bytes()).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

/// A UDP user agent server: answers every request with 200, with a body of the size the
/// request's `X-Body-Size` header asks for (default 0). Returns its address and a counter
/// of requests received.
pub async fn udp_uas() -> (SocketAddr, Arc<AtomicUsize>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind uas");
    let addr = sock.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            if status(&req).is_some() || req.starts_with("ACK ") {
                continue;
            }
            c.fetch_add(1, Ordering::SeqCst);
            let size = header(&req, "X-Body-Size")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let _ = sock
                .send_to(response_for(&req, 200, size).as_bytes(), from)
                .await;
        }
    });
    (addr, count)
}

/// A TLS user agent server with `cert`/`key`: answers every request with 200 on the same
/// connection. Returns its address and a counter of accepted connections.
pub async fn tls_uas(cert: &Path, key: &Path) -> (SocketAddr, Arc<AtomicUsize>) {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).expect("acceptor");
    b.set_certificate_chain_file(cert).expect("cert");
    b.set_private_key_file(key, SslFiletype::PEM).expect("key");
    let acceptor = Arc::new(b.build());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(ssl) = openssl::ssl::Ssl::new(acceptor.context()) else {
                    return;
                };
                let Ok(mut s) = SslStream::new(ssl, tcp) else {
                    return;
                };
                if Pin::new(&mut s).accept().await.is_err() {
                    return;
                }
                let mut buf = Vec::new();
                while let Ok(req) = read_message(&mut s, &mut buf, Duration::from_secs(30)).await {
                    if status(&req).is_some() {
                        continue;
                    }
                    if s.write_all(response_for(&req, 200, 0).as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}
