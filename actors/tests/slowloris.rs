//! `[connections] message_timeout`: a peer that trickles a message a byte at a time (each
//! byte resets the idle timer) is disconnected once the message has been arriving for
//! `message_timeout`, over TCP and TLS, while a peer that sends whole messages just as often
//! is served on. Real sockets on 127.0.0.1:0, real TLS.

mod common;

use std::time::Duration;

use common::*;
use siprox::config::{ConfigDuration, Proto};
use siprox::proxy::Transport;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

/// Sends `msg` one byte every 50 ms until the stream is closed; the bytes it got out.
async fn trickle<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) -> usize {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for (i, b) in msg.iter().enumerate() {
        tick.tick().await;
        if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
            return i;
        }
        // A close shows as EOF (or an error) on a read that does not block.
        let mut one = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut one)).await {
            if matches!(r, Ok(0) | Err(_)) {
                return i + 1;
            }
        }
    }
    msg.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_trickled_in_is_cut_off_at_message_timeout_over_tcp_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&[Proto::Tcp, Proto::Tls]);
    cfg.connections.message_timeout = ConfigDuration::millis(600);
    cfg.connections.idle_timeout = ConfigDuration::secs(30);
    let rt = start(cfg, dir.path());
    let tcp = rt.local_addr(Transport::Tcp).unwrap();
    let tls = rt.local_addr(Transport::Tls).unwrap();

    // A steady peer: whole OPTIONS every 50 ms for longer than message_timeout.
    let steady = tokio::spawn(async move {
        let mut s = TcpStream::connect(tcp).await.unwrap();
        let mut buf = Vec::new();
        for i in 0..30 {
            send(&mut s, &options_to(tcp, "TCP", &format!("steady-{i}"))).await;
            let r = read_message(&mut s, &mut buf, T).await.expect("served");
            assert_eq!(status(&r), Some(200), "{r}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // 50 ms a byte: the ~250-byte OPTIONS would take ~12 s; message_timeout is 600 ms.
    let msg = options_to(tcp, "TCP", "slow-tcp");
    let mut s = TcpStream::connect(tcp).await.unwrap();
    let sent = trickle(&mut s, msg.as_bytes()).await;
    assert!(sent < msg.len(), "TCP trickle was never cut off");

    let msg = options_to(tls, "TLS", "slow-tls");
    let mut s = tls_connect(tls, &ca_file(dir.path())).await;
    let sent = trickle(&mut s, msg.as_bytes()).await;
    assert!(sent < msg.len(), "TLS trickle was never cut off");

    assert_eventually!(rt.stats().message_timeouts == 2, T, "{:?}", rt.stats());
    steady.await.expect("the steady peer is served throughout");
    assert_eq!(rt.stats().message_timeouts, 2, "{:?}", rt.stats());
    drop(rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_messages_are_bounded_per_source_ip() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&[Proto::Tcp]);
    cfg.connections.max_partial_bytes_per_ip = 5000;
    cfg.connections.message_timeout = ConfigDuration::secs(60);
    let rt = start(cfg, dir.path());
    let tcp = rt.local_addr(Transport::Tcp).unwrap();
    // ~2 KB of an OPTIONS head, all but its final CRLF.
    let msg = |call: &str| {
        options_to(tcp, "TCP", call).replace(
            "Content-Length: 0",
            &format!("X-Pad: {}\r\nContent-Length: 0", "p".repeat(2000)),
        )
    };
    let msgs = [msg("held-a"), msg("held-b"), msg("held-c")];
    let mut conns = Vec::new();
    for m in &msgs {
        let mut s = TcpStream::connect(tcp).await.unwrap();
        s.write_all(&m.as_bytes()[..m.len() - 2]).await.unwrap();
        conns.push(s);
    }
    // Two fit under the bound; whichever is read last takes the IP over it and is closed.
    assert_eventually!(rt.stats().message_timeouts == 1, T, "{:?}", rt.stats());
    let (mut served, mut closed) = (0, 0);
    for (s, m) in conns.iter_mut().zip(&msgs) {
        let _ = s.write_all(&m.as_bytes()[m.len() - 2..]).await;
        let mut buf = Vec::new();
        match read_message(s, &mut buf, T).await {
            Ok(r) => {
                assert_eq!(status(&r), Some(200), "{r}");
                served += 1;
            }
            Err(_) => closed += 1,
        }
    }
    assert_eq!((served, closed), (2, 1));
    drop(rt);
}
