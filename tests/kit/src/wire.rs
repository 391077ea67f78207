//! Raw SIP text on the wire, for tests that craft exactly the bytes they send (malformed,
//! oversized, stalled) and read exactly what comes back: request and response builders and
//! a framed reader. The peers that answer are [`crate::ua`]'s. Test-only: may panic, but
//! must never wait without a bound (every read has a timeout).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
/// from `uas` (see [`crate::ua::Uas::udp`], which honours `X-Body-Size`), and never reads, so its window and siprox's socket buffer
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

/// Writes one HTTP request and reads its answer: the head and `Content-Length` bytes of body
/// (or up to EOF), within 5 s. For RPC over a SIP listener.
pub async fn http_exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, req: &str) -> String {
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut chunk = [0u8; 8192];
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let cl: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + cl {
                    break;
                }
            }
        }
    })
    .await
    .expect("an HTTP answer in time");
    String::from_utf8_lossy(&buf).to_string()
}
