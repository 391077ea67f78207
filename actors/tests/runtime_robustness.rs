//! Runtime robustness tests: a peer that stops reading loses its own connection after
//! `send_timeout` and slows nobody else; connection limits refuse the excess; a stream that
//! loses framing gets a 400 and is closed; graceful shutdown drains and exits in time.
//! Real sockets on 127.0.0.1:0; must never wait on a fixed sleep.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use siprox::config::{ConfigDuration, Proto};
use siprox::proxy::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const T: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_peers_are_closed_after_send_timeout_and_a_normal_peer_is_not_delayed() {
    const STALLED: usize = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&[Proto::Udp, Proto::Tls]);
    cfg.connections.send_timeout = ConfigDuration::millis(800);
    // Large enough that the send timeout, not the queue bound, is what closes them.
    cfg.connections.max_write_queue = 256 * 1024 * 1024;
    let rt = start(cfg, dir.path());
    let tls_addr = rt.local_addr(Transport::Tls).expect("tls");
    let ca = ca_file(dir.path());
    let uas_peer = Uas::udp().await;
    let uas = uas_peer.addr;

    // Stalled peers: small receive windows, never read; each request draws a ~60 KB
    // response from the UAS, so their windows and siprox's socket buffers fill quickly.
    let done = Arc::new(AtomicBool::new(false));
    let mut stalled = Vec::new();
    for k in 0..STALLED {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("rcvbuf");
        let tcp = sock.connect(tls_addr).await.expect("connect");
        let mut s = tls_over(tcp, &ca).await;
        let done = done.clone();
        // Closed by siprox (a failed write) is what the test waits for.
        stalled.push(tokio::spawn(async move {
            draw_without_reading(&mut s, uas, &k.to_string(), 5000, &done).await
        }));
    }

    // The normal peer: transactions back to back; each must complete promptly.
    let mut normal = tls_connect(tls_addr, &ca).await;
    let mut buf = Vec::new();
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut n = 0;
    while rt.stats().send_timeouts < STALLED as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "stalled peers not closed in time: {:?}",
            rt.stats()
        );
        let t0 = Instant::now();
        send(
            &mut normal,
            &options_to(tls_addr, "TLS", &format!("normal-{n}")),
        )
        .await;
        let r = read_message(&mut normal, &mut buf, Duration::from_secs(1))
            .await
            .expect("normal transaction completes within 1 s");
        assert_eq!(status(&r), Some(200), "{r}");
        worst = worst.max(t0.elapsed());
        n += 1;
    }
    done.store(true, Ordering::Relaxed);
    assert!(n > 0);
    assert!(
        worst < Duration::from_millis(500),
        "normal peer delayed: worst {worst:?}"
    );
    let stats = rt.stats();
    assert_eq!(stats.send_timeouts, STALLED as u64, "{stats:?}");
    assert_eq!(stats.write_queue_overflows, 0, "{stats:?}");
    // Only the normal connection remains.
    assert_eventually!(rt.stats().connections_open == 1, T, "{:?}", rt.stats());
    for h in stalled {
        let _ = h.await;
    }
    // And it still works.
    send(&mut normal, &options_to(tls_addr, "TLS", "after")).await;
    let r = read_message(&mut normal, &mut buf, T).await.expect("after");
    assert_eq!(status(&r), Some(200));
    rt.shutdown();
}

#[tokio::test]
async fn a_full_write_queue_closes_the_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&[Proto::Udp, Proto::Tcp]);
    cfg.connections.send_timeout = ConfigDuration::secs(60);
    cfg.connections.max_write_queue = 256 * 1024;
    let rt = start(cfg, dir.path());
    let tcp_addr = rt.local_addr(Transport::Tcp).expect("tcp");
    let uas_peer = Uas::udp().await;
    let uas = uas_peer.addr;
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = sock.connect(tcp_addr).await.expect("connect");
    for i in 0..2000 {
        if rt.stats().write_queue_overflows >= 1 {
            break;
        }
        let req = request(
            "MESSAGE",
            &format!("sip:bob@{uas}"),
            "TCP 127.0.0.1:9",
            &format!("q-{i}"),
            "X-Body-Size: 60000\r\n",
            "",
        );
        if s.write_all(req.as_bytes()).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eventually!(rt.stats().write_queue_overflows == 1, T, "{:?}", rt.stats());
    assert_eventually!(rt.stats().connections_open == 0, T, "{:?}", rt.stats());
    rt.shutdown();
}

/// True when the server closed `s` (EOF or reset) within the timeout.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(T, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn connections_over_the_per_ip_and_total_limits_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&[Proto::Tcp]);
    cfg.connections.max_connections_per_ip = 2;
    let rt = start(cfg, dir.path());
    let addr = rt.local_addr(Transport::Tcp).expect("tcp");

    let mut a = TcpStream::connect(addr).await.expect("a");
    let mut b = TcpStream::connect(addr).await.expect("b");
    for (s, id) in [(&mut a, "a"), (&mut b, "b")] {
        let mut buf = Vec::new();
        send(s, &options_to(addr, "TCP", id)).await;
        let r = read_message(s, &mut buf, T).await.expect("served");
        assert_eq!(status(&r), Some(200));
    }
    let mut c = TcpStream::connect(addr).await.expect("c (kernel accepts)");
    assert!(
        closed_by_server(&mut c).await,
        "third connection from one IP must be closed"
    );
    assert_eq!(rt.stats().refused_ip_limit, 1);

    // A slot freed is a slot usable again.
    drop(a);
    assert_eventually!(rt.stats().connections_open == 1, T, "{:?}", rt.stats());
    let mut d = TcpStream::connect(addr).await.expect("d");
    let mut buf = Vec::new();
    send(&mut d, &options_to(addr, "TCP", "d")).await;
    let r = read_message(&mut d, &mut buf, T).await.expect("d served");
    assert_eq!(status(&r), Some(200));
    rt.shutdown();

    // The total limit.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&[Proto::Tcp]);
    cfg.connections.max_connections = 1;
    let rt = start(cfg, dir.path());
    let addr = rt.local_addr(Transport::Tcp).expect("tcp");
    let mut a = TcpStream::connect(addr).await.expect("a");
    let mut buf = Vec::new();
    send(&mut a, &options_to(addr, "TCP", "a")).await;
    read_message(&mut a, &mut buf, T).await.expect("a served");
    let mut b = TcpStream::connect(addr).await.expect("b");
    assert!(closed_by_server(&mut b).await);
    assert_eq!(rt.stats().refused_total_limit, 1);
    rt.shutdown();
}

#[tokio::test]
async fn a_stream_that_loses_framing_is_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&[Proto::Tcp]);
    cfg.limits.max_message_size = 2048;
    let rt = start(cfg, dir.path());
    let addr = rt.local_addr(Transport::Tcp).expect("tcp");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // A head that never ends, over the message size limit; it names itself (Via, From, To,
    // Call-ID, CSeq), so it is answered before the close.
    let junk = format!(
        "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK-j\r\n\
         From: <sip:a@127.0.0.1>;tag=j\r\nTo: <sip:{addr}>\r\nCall-ID: junk\r\nCSeq: 1 OPTIONS\r\n{}",
        "X-Junk: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(64)
    );
    let _ = s.write_all(junk.as_bytes()).await;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut all)).await;
    let answer = String::from_utf8_lossy(&all);
    assert_eq!(status(&answer), Some(400), "{answer}");
    assert!(answer.contains("larger than 2048 bytes"), "{answer}");
    assert!(answer.contains("Call-ID: junk"), "{answer}");
    assert_eq!(
        answer.matches("SIP/2.0 ").count(),
        1,
        "one answer, then the close: {answer}"
    );
    assert_eventually!(rt.stats().framing_errors == 1, T, "{:?}", rt.stats());
    assert_eventually!(rt.stats().connections_open == 0, T, "{:?}", rt.stats());
    rt.shutdown();
}

#[tokio::test]
async fn graceful_shutdown_closes_connections_and_returns_within_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&[Proto::Udp, Proto::Tls]);
    cfg.runtime.shutdown_grace = ConfigDuration::secs(2);
    let rt = start(cfg, dir.path());
    let tls_addr = rt.local_addr(Transport::Tls).expect("tls");
    let mut c = tls_connect(tls_addr, &ca_file(dir.path())).await;
    let mut buf = Vec::new();
    send(&mut c, &options_to(tls_addr, "TLS", "sd")).await;
    read_message(&mut c, &mut buf, T).await.expect("served");

    let t0 = Instant::now();
    tokio::task::spawn_blocking(move || rt.shutdown())
        .await
        .expect("shutdown");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    // The client sees the TLS close (close_notify then EOF), not a hang.
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(T, c.read(&mut b))
        .await
        .expect("closed in time");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    // The port is free again.
    assert!(TcpStream::connect(tls_addr).await.is_err());
}

/// Idle means quiet for the whole `idle_timeout`: a peer that keeps talking (CRLF
/// keepalives, RFC 5626) is never closed for idleness however long it stays, and is once
/// it falls silent.
#[tokio::test]
async fn activity_keeps_a_connection_past_its_idle_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&[Proto::Tcp]);
    cfg.connections.idle_timeout = ConfigDuration::millis(300);
    let rt = start(cfg, dir.path());
    let addr = rt.local_addr(Transport::Tcp).expect("tcp");

    let mut c = TcpStream::connect(addr).await.expect("connect");
    // A keepalive every 100 ms for 1.2 s: four idle timeouts long, never 300 ms quiet.
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(1200) {
        c.write_all(b"\r\n\r\n").await.expect("ping");
        let mut pong = [0u8; 2];
        tokio::time::timeout(T, c.read_exact(&mut pong))
            .await
            .expect("pong in time")
            .expect("pong, not a close");
        assert_eq!(&pong, b"\r\n");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut buf = Vec::new();
    send(&mut c, &options_to(addr, "TCP", "kept")).await;
    read_message(&mut c, &mut buf, T)
        .await
        .expect("still served after the keepalives");
    assert_eq!(rt.stats().idle_timeouts, 0);

    // Silent now: closed for idleness.
    assert!(closed_by_server(&mut c).await);
    assert_eventually!(rt.stats().idle_timeouts == 1, T, "{:?}", rt.stats());
    rt.shutdown();
}

#[tokio::test]
async fn idle_and_handshake_timeouts_close_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&[Proto::Tcp, Proto::Tls]);
    cfg.connections.idle_timeout = ConfigDuration::millis(300);
    cfg.connections.handshake_timeout = ConfigDuration::millis(300);
    let rt = start(cfg, dir.path());
    let tcp_addr = rt.local_addr(Transport::Tcp).expect("tcp");
    let tls_addr = rt.local_addr(Transport::Tls).expect("tls");

    let mut idle = TcpStream::connect(tcp_addr).await.expect("connect");
    let mut buf = Vec::new();
    send(&mut idle, &options_to(tcp_addr, "TCP", "idle")).await;
    read_message(&mut idle, &mut buf, T).await.expect("served");
    // A TCP connection to the TLS port that never says hello.
    let mut silent = TcpStream::connect(tls_addr).await.expect("connect");

    assert!(closed_by_server(&mut idle).await);
    assert!(closed_by_server(&mut silent).await);
    // The socket closes a moment before the counters move: poll.
    assert_eventually!(
        {
            let s = rt.stats();
            (s.idle_timeouts, s.handshake_failures, s.connections_open) == (1, 1, 0)
        },
        T,
        "{:?}",
        rt.stats()
    );
    rt.shutdown();
}

/// An outgoing connect that gets no answer is given up after `connect_timeout`: the request
/// waiting for it is dropped and counted, and siprox goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_connect_is_given_up_after_connect_timeout() {
    // A next hop whose accept queue is full (backlog 1, never accepting): the kernel drops
    // further SYNs, so a connect to it hangs.
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = sock.listen(1).expect("listen");
    let hop = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(hop)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            Err(_) => break, // this connect hangs: the queue is full
        }
        assert!(fillers.len() < 64, "the accept queue never filled");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&[Proto::Udp]);
    cfg.connections.connect_timeout = ConfigDuration::millis(500);
    let rt = start(cfg, dir.path());
    let udp = rt.local_addr(Transport::Udp).expect("udp");
    let uac = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let me = uac.local_addr().expect("addr");
    let req = request(
        "OPTIONS",
        &format!("sip:bob@{hop};transport=tcp"),
        &format!("UDP {me}"),
        "no-answer",
        "",
        "",
    );
    uac.send_to(req.as_bytes(), udp).await.expect("send");
    assert_eventually!(rt.stats().connect_failures == 1, T, "{:?}", rt.stats());
    assert_eq!(rt.stats().connections_open, 0);

    // Still serving: an OPTIONS to siprox itself is answered; and the request whose next
    // hop never answered got 503, not silence.
    uac.send_to(options_to(udp, "UDP", "alive").as_bytes(), udp)
        .await
        .expect("send");
    let mut answers = std::collections::HashMap::new();
    let mut buf = vec![0u8; 65536];
    while answers.len() < 2 {
        let n = tokio::time::timeout(T, uac.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("answers so far: {answers:?}"))
            .expect("recv");
        let r = String::from_utf8_lossy(&buf[..n]).into_owned();
        let call = header(&r, "Call-ID").unwrap_or_default().to_owned();
        answers.insert(call, status(&r));
    }
    assert_eq!(answers.get("alive"), Some(&Some(200)), "{answers:?}");
    assert_eq!(answers.get("no-answer"), Some(&Some(503)), "{answers:?}");
    drop(fillers);
    rt.shutdown();
}

#[tokio::test]
async fn a_rise_then_a_fall_in_open_connections_each_trim_the_heap_once() {
    const OPEN: usize = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&[Proto::Tcp]);
    cfg.runtime.trim_memory_after = OPEN / 2;
    let rt = start(cfg, dir.path());
    let addr = rt.local_addr(Transport::Tcp).expect("tcp");
    let mut held = Vec::with_capacity(OPEN);
    for _ in 0..OPEN {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    assert_eventually!(
        rt.stats().connections_open == OPEN as u64,
        T,
        "{:?}",
        rt.stats()
    );
    // The rise, once no connection has arrived for a second: what the handshakes freed
    // between the connections' own objects goes back to the OS. Once only.
    assert_eventually!(
        rt.stats().memory_trims == 1,
        T,
        "no trim after the rise: {:?}",
        rt.stats()
    );
    held.push(TcpStream::connect(addr).await.expect("connect"));
    assert_eventually!(
        rt.stats().connections_open == OPEN as u64 + 1,
        T,
        "{:?}",
        rt.stats()
    );
    drop(held);
    assert_eventually!(rt.stats().connections_open == 0, T, "{:?}", rt.stats());
    assert_eventually!(
        rt.stats().memory_trims == 2,
        T,
        "no trim after the fall: {:?}",
        rt.stats()
    );
    rt.shutdown();
}
