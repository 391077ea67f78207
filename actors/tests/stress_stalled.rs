//! Stalled peers: 200 TLS clients send requests whose answers are large and then never
//! read, while a normal TLS client keeps calling. Every normal transaction must succeed,
//! and siprox must close each stalled connection itself, after `send_timeout` and not
//! before. Must never wait with a bare sleep, and never let a stalled client read before
//! its connection is counted as closed.
//!
//! Filling a window on loopback takes some care: Linux grows a sender's buffer to MBs
//! (loopback MSS is 64 KiB). The stalled clients therefore announce a small MSS (536) and
//! a small receive buffer, as a slow mobile peer would; then ~100 KiB is all the kernel
//! absorbs, and 12 answers of 16 KiB each overflow it.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::inproc::{Options, Siprox};
use siprox_testkit::pki::Tls;
use siprox_testkit::ua::{
    call_id, invite_flow, options_flow, tls_handshake, unique, FlowOpts, Transport, Uas, UasOpts,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_openssl::SslStream;

const STALLED: usize = 200;
const REQUESTS_EACH: usize = 12;
const BODY: usize = 16 * 1024;
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// A TCP connection with a small MSS and receive buffer (a peer with a small window).
async fn slow_tcp(to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_recv_buffer_size(4096)?;
    s.set_mss(536)?;
    s.set_nonblocking(true)?;
    let sock = TcpSocket::from_std_stream(s.into());
    sock.connect(to).await
}

fn request(local: SocketAddr, ruri: &str) -> Vec<u8> {
    let id = call_id();
    format!(
        "OPTIONS {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK-st{};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:stalled@siprox.test>;tag={}\r\nTo: <{ruri}>\r\n\
         Call-ID: {id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        unique(),
        unique()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_peers_lose_their_own_connections_and_nobody_else_waits() {
    siprox_testkit::require_nofile(2 * STALLED as u64 + 100);
    let sx = Siprox::start(Options {
        udp: true,
        tcp: true,
        tls: true,
        send_timeout: SEND_TIMEOUT,
        // The 2,400 requests of the stalled clients go out in one burst over siprox's one
        // connection to the UAS; 1 MiB (the default) would close that shared trunk. The
        // stalled connections hold ~200 KiB each, far below either bound, so what closes
        // them is still send_timeout (asserted below via write_queue_overflows == 0).
        max_write_queue: 16 << 20,
        ..Options::default()
    })
    .await;
    // The stalled clients' answers come over TCP (reliable: every big answer arrives).
    let big = Uas::start(
        Transport::Tcp,
        UasOpts {
            body_size: BODY,
            ..UasOpts::default()
        },
    )
    .await
    .unwrap();
    big.count_only();
    let normal_uas = Uas::start(Transport::Udp, UasOpts::default())
        .await
        .unwrap();
    normal_uas.count_only();
    let normal = sx.client(Transport::Tls).await;

    // The normal client calls until told to stop, recording every failure and its slowest.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let normal_task = tokio::spawn({
        let ruri = normal_uas.uri("bob");
        async move {
            // A worker blocked on a stalled peer would hold calls up for send_timeout and
            // more, again and again; a debug build under this load answers within ~1 s.
            let opts = FlowOpts {
                timeout: Duration::from_secs(3),
                retransmit: false,
            };
            let (mut ok, mut failed, mut slowest) = (0u32, Vec::new(), Duration::ZERO);
            let mut i = 0u32;
            while !*stop_rx.borrow_and_update() {
                let t = Instant::now();
                let r = if i.is_multiple_of(2) {
                    options_flow(&normal, &ruri, opts).await.map(|_| ())
                } else {
                    invite_flow(&normal, &ruri, opts).await.map(|_| ())
                };
                slowest = slowest.max(t.elapsed());
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                i += 1;
            }
            (ok, failed, slowest)
        }
    });

    // 200 stalled TLS clients: handshake (that much they read), send, then never read.
    let conn = sx.connector(Tls::Any);
    let tls_addr = sx.tls();
    let ruri = big.uri("big");
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..STALLED {
        let (conn, ruri) = (conn.clone(), ruri.clone());
        set.spawn(async move {
            let tcp = slow_tcp(tls_addr).await?;
            let local = tcp.local_addr()?;
            let mut s = tls_handshake(&conn, tls_addr, tcp).await?;
            for _ in 0..REQUESTS_EACH {
                s.write_all(&request(local, &ruri)).await?;
            }
            s.flush().await?;
            Ok::<SslStream<TcpStream>, std::io::Error>(s)
        });
    }
    let mut stalled = Vec::new();
    while let Some(r) = set.join_next().await {
        stalled.push(r.unwrap().expect("stalled client setup"));
    }
    assert_eq!(stalled.len(), STALLED);

    // siprox closes each one, and none before send_timeout has passed since it could
    // first have stalled (the first request was written after `start`).
    let deadline = Instant::now() + SEND_TIMEOUT + Duration::from_secs(20);
    let mut first_close = None;
    loop {
        let s = sx.stats();
        if s.send_timeouts > 0 && first_close.is_none() {
            first_close = Some(start.elapsed());
        }
        if s.send_timeouts >= STALLED as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {STALLED} stalled connections closed by send_timeout ({s:?}); UAS answered {}",
            s.send_timeouts,
            big.count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_closed = start.elapsed();
    let first_close = first_close.unwrap();
    assert!(
        first_close >= SEND_TIMEOUT,
        "a stalled connection was closed after {first_close:?}, before send_timeout {SEND_TIMEOUT:?}"
    );
    stop_tx.send(true).unwrap();
    let (ok, failed, slowest) = normal_task.await.unwrap();
    eprintln!(
        "stalled: first closed after {first_close:?}, all {STALLED} after {all_closed:?}; \
         normal client: {ok} transactions ok, slowest {slowest:?}, stats {:?}",
        sx.stats()
    );
    assert!(failed.is_empty(), "normal transactions failed: {failed:?}");
    assert!(
        ok >= 10,
        "the normal client completed only {ok} transactions"
    );
    assert_eq!(sx.stats().write_queue_overflows, 0);

    // Now the stalled clients read: what is left in their buffers, then the end of stream.
    let mut set = JoinSet::new();
    for mut s in stalled {
        set.spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return true,
                        Ok(_) => {}
                    }
                }
            })
            .await
            .unwrap_or(false)
        });
    }
    let mut open = 0;
    while let Some(r) = set.join_next().await {
        if !r.unwrap() {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "{open} stalled connections are still open from the client's side"
    );
    sx.shutdown().await;
}
