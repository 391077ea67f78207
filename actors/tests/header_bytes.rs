//! Header bytes as phones send them: a Latin-1 display name and Subject (not UTF-8) over
//! UDP, TCP and TLS reach the callee byte for byte and the stream stays open; a NUL or a
//! bare CR in a header value is answered 400 on every transport, and on a stream that kept
//! its framing the connection stays open; framing errors on a stream (negative, duplicate or
//! missing Content-Length) are answered 400 before the close. Real sockets on 127.0.0.1:0.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use siprox::config::Proto;
use siprox::proxy::Transport;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const T: Duration = Duration::from_secs(5);

/// A MESSAGE to the callee at `callee` (UDP), with `from_display` as From's display name.
fn message(callee: SocketAddr, via: &str, call: &str, from_display: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "MESSAGE sip:bob@{callee} SIP/2.0\r\n\
         Via: SIP/2.0/{via};branch=z9hG4bK-{call};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \""
    )
    .into_bytes();
    m.extend_from_slice(from_display);
    m.extend_from_slice(
        format!(
            "\" <sip:mueller@127.0.0.1>;tag=m-{call}\r\n\
             To: <sip:bob@{callee}>\r\n\
             Call-ID: {call}\r\n\
             CSeq: 1 MESSAGE\r\n\
             Subject: Gr\u{fc}\u{df}e\r\n\
             Content-Type: text/plain\r\n\
             Content-Length: 2\r\n\r\nhi"
        )
        .as_bytes(),
    );
    // The Subject above is UTF-8; make it Latin-1 (ü = FC, ß = DF) like an old phone.
    let utf8 = "Gr\u{fc}\u{df}e".as_bytes().to_vec();
    let at = m
        .windows(utf8.len())
        .position(|w| w == utf8.as_slice())
        .expect("subject");
    m.splice(at..at + utf8.len(), b"Gr\xfc\xdfe".iter().copied());
    m
}

fn line_of<'a>(msg: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    msg.split(|&b| b == b'\n')
        .find(|l| l.len() > name.len() && l[..name.len()].eq_ignore_ascii_case(name))
}

async fn callee_gets(callee: &UdpSocket, call: &str) -> Vec<u8> {
    let mut b = vec![0u8; 65536];
    loop {
        let (n, _) = tokio::time::timeout(T, callee.recv_from(&mut b))
            .await
            .expect("the callee receives the request")
            .expect("recv");
        let got = b[..n].to_vec();
        if got.windows(call.len()).any(|w| w == call.as_bytes()) {
            return got;
        }
    }
}

async fn stream_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    bytes: &[u8],
) -> String {
    s.write_all(bytes).await.expect("write");
    read_message(s, buf, T).await.expect("an answer")
}

async fn still_open<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    siprox: SocketAddr,
    tr: &str,
    call: &str,
) {
    let r = stream_exchange(s, buf, options_to(siprox, tr, call).as_bytes()).await;
    assert_eq!(status(&r), Some(200), "the stream is still served: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latin1_reaches_the_callee_unchanged_and_nul_is_refused_on_every_transport() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(config(&[Proto::Udp, Proto::Tcp, Proto::Tls]), dir.path());
    let udp = rt.local_addr(Transport::Udp).unwrap();
    let tcp = rt.local_addr(Transport::Tcp).unwrap();
    let tls = rt.local_addr(Transport::Tls).unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let callee_addr = callee.local_addr().unwrap();

    // UDP.
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sent = message(callee_addr, "UDP 127.0.0.1:9", "latin-udp", b"M\xfcller");
    c.send_to(&sent, udp).await.unwrap();
    let got = callee_gets(&callee, "latin-udp").await;
    assert_eq!(line_of(&got, b"From:"), line_of(&sent, b"From:"));
    assert_eq!(line_of(&got, b"Subject:"), line_of(&sent, b"Subject:"));
    let nul = message(callee_addr, "UDP 127.0.0.1:9", "nul-udp", b"a\0b");
    c.send_to(&nul, udp).await.unwrap();
    let mut b = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(T, c.recv_from(&mut b))
        .await
        .expect("a 400 in time")
        .unwrap();
    let r = String::from_utf8_lossy(&b[..n]).to_string();
    assert_eq!(status(&r), Some(400), "{r}");
    assert!(r.contains("Call-ID: nul-udp"), "{r}");

    // TCP and TLS.
    let mut tcp_s = TcpStream::connect(tcp).await.unwrap();
    let mut tls_s = tls_connect(tls, &ca_file(dir.path())).await;
    for (name, via, siprox) in [("tcp", "TCP", tcp), ("tls", "TLS", tls)] {
        let mut buf = Vec::new();
        let call = format!("latin-{name}");
        let sent = message(
            callee_addr,
            &format!("{via} 127.0.0.1:9"),
            &call,
            b"M\xfcller",
        );
        let nul = message(
            callee_addr,
            &format!("{via} 127.0.0.1:9"),
            &format!("nul-{name}"),
            b"a\0b",
        );
        let cr = message(
            callee_addr,
            &format!("{via} 127.0.0.1:9"),
            &format!("cr-{name}"),
            b"a\rX-Injected: 1",
        );
        macro_rules! run {
            ($s:expr) => {{
                $s.write_all(&sent).await.unwrap();
                let got = callee_gets(&callee, &call).await;
                assert_eq!(line_of(&got, b"From:"), line_of(&sent, b"From:"), "{name}");
                assert_eq!(
                    line_of(&got, b"Subject:"),
                    line_of(&sent, b"Subject:"),
                    "{name}"
                );
                still_open($s, &mut buf, siprox, via, &format!("after-latin-{name}")).await;
                for bad in [&nul, &cr] {
                    let r = stream_exchange($s, &mut buf, bad).await;
                    assert_eq!(status(&r), Some(400), "{name}: {r}");
                }
                still_open($s, &mut buf, siprox, via, &format!("after-nul-{name}")).await;
            }};
        }
        if name == "tcp" {
            run!(&mut tcp_s);
        } else {
            run!(&mut tls_s);
        }
    }
    drop(rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_head_with_a_known_end_is_answered_and_the_stream_kept() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(config(&[Proto::Tcp]), dir.path());
    let tcp = rt.local_addr(Transport::Tcp).unwrap();
    let mut s = TcpStream::connect(tcp).await.unwrap();
    let mut buf = Vec::new();
    // A header line without a colon: the head does not index, Content-Length is readable.
    let bad =
        "OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK-m\r\n\
               From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: malformed\r\n\
               CSeq: 1 OPTIONS\r\nthis line has no colon\r\nContent-Length: 3\r\n\r\nabc";
    let r = stream_exchange(&mut s, &mut buf, bad.as_bytes()).await;
    assert_eq!(status(&r), Some(400), "{r}");
    assert!(r.contains("Call-ID: malformed"), "{r}");
    still_open(&mut s, &mut buf, tcp, "TCP", "after-malformed").await;
    drop(rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_errors_on_a_stream_are_answered_400_then_closed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = start(config(&[Proto::Tcp]), dir.path());
    let tcp = rt.local_addr(Transport::Tcp).unwrap();
    for (name, cl) in [
        ("negative", "Content-Length: -5\r\n"),
        ("duplicate", "Content-Length: 0\r\nContent-Length: 5\r\n"),
        ("missing", ""),
    ] {
        let mut s = TcpStream::connect(tcp).await.unwrap();
        let req = format!(
            "OPTIONS sip:{tcp};transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK-{name}\r\n\
             From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:{tcp}>\r\nCall-ID: cl-{name}\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n{cl}\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut all))
            .await
            .expect("closed in time")
            .expect("read");
        let r = String::from_utf8_lossy(&all);
        assert_eq!(status(&r), Some(400), "{name}: {r}");
        assert!(r.contains(&format!("Call-ID: cl-{name}")), "{name}: {r}");
    }
    drop(rt);
}
