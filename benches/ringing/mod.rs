//! loadgen's ringing mode (`--ringing N --hold D`, benches/stateful.sh): N calls that ring
//! and are never answered, held for D, so that a stateful proxy holds 2N live transactions
//! (the caller's server transaction and the callee's client transaction of each INVITE).
//! With `--pid P` (repeatable: every process of a multi-process proxy) it samples the
//! memory of those processes before the first INVITE and at the end of the hold. Then it
//! releases every call: CANCEL, 487, ACK. It measures and prints; it must never assert.
//!
//! The callee is a UDP UAS of its own here: it answers INVITE with 180 only, CANCEL with
//! 200 and the INVITE's 487, anything else but ACK with 200.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use siprox::sip::{Limits, Message};
use siprox_testkit::ua::{self, Client, Req, Transport};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Semaphore};

/// What the ringing run needs from loadgen's arguments.
pub struct Ringing {
    pub calls: usize,
    pub hold: Duration,
    pub concurrency: usize,
    pub timeout: Duration,
    pub pids: Vec<u32>,
    pub uas_bind: SocketAddr,
}

/// Memory of a set of processes, summed: VmRSS (shared pages counted in each process)
/// and Pss (shared pages split among the processes that map them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    let l = text.lines().find(|l| l.starts_with(key))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

/// `None` when a process is gone or unreadable.
pub fn mem_of(pids: &[u32]) -> Option<Mem> {
    let mut m = Mem::default();
    for p in pids {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
        m.rss_kib += kib_field(&status, "VmRSS:")?;
        let rollup = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok()?;
        m.pss_kib += kib_field(&rollup, "Pss:")?;
    }
    Some(m)
}

/// The callee: 180 to every INVITE (again to a retransmission), 200 and the INVITE's 487
/// to a CANCEL, nothing to ACK, 200 to anything else. Answers go where the request came
/// from (the proxy's UDP socket).
async fn ringing_uas(sock: Arc<UdpSocket>, contact: String) {
    let mut buf = vec![0u8; 65_536];
    let limits = Limits {
        max_message_size: 1 << 20,
        ..Limits::default()
    };
    let mut invites: HashMap<String, Message> = HashMap::new();
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(m) = Message::parse_datagram(Bytes::copy_from_slice(&buf[..n]), &limits) else {
            continue;
        };
        if !m.is_request() {
            continue;
        }
        let call_id = m.call_id().unwrap_or("").to_owned();
        let mut out = Vec::new();
        match m.method() {
            Some("INVITE") => {
                out.push(ua::response(&m, 180, "Ringing", &contact, 0));
                invites.insert(call_id, m);
            }
            Some("CANCEL") => {
                out.push(ua::response(&m, 200, "OK", &contact, 0));
                if let Some(inv) = invites.remove(&call_id) {
                    out.push(ua::response(&inv, 487, "Request Terminated", &contact, 0));
                }
            }
            Some("ACK") | None => {}
            Some(_) => out.push(ua::response(&m, 200, "OK", &contact, 0)),
        }
        for o in out {
            let _ = sock.send_to(&o, from).await;
        }
    }
}

/// How one call ended.
enum Outcome {
    /// Rang, then was released: 487 received and acknowledged.
    Released,
    /// Rang, but the release failed (reason).
    ReleaseFailed(String),
    /// Never rang (reason).
    NoRing(String),
}

/// One call: INVITE until 180 (under the gate), report, wait for the release, then
/// CANCEL (under the gate), wait for the 487 and ACK it.
async fn one_call(
    client: Arc<Client>,
    ruri: String,
    gate: Arc<Semaphore>,
    rung: tokio::sync::mpsc::UnboundedSender<bool>,
    mut release: watch::Receiver<bool>,
    timeout: Duration,
) -> Outcome {
    let ids = ua::CallIds::new();
    let branch = ua::branch();
    let mut sub = client.subscribe(&ids.call_id);
    let sdp = b"v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let invite = ua::build_request(
        &client,
        &Req {
            extra: "Content-Type: application/sdp\r\n",
            body: sdp,
            branch: Some(&branch),
            ..Req::new("INVITE", &ruri, &ids)
        },
    );
    {
        let Ok(_permit) = gate.acquire().await else {
            return Outcome::NoRing("gate closed".to_owned());
        };
        if let Err(e) = client.send(&invite).await {
            let _ = rung.send(false);
            return Outcome::NoRing(format!("send INVITE: {e}"));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let r = sub
            .recv_until(deadline, |m| {
                m.is_response()
                    && ua::cseq_method(m).as_deref() == Some("INVITE")
                    && m.status().is_some_and(|s| s >= 180)
            })
            .await;
        match r.and_then(|m| m.status()) {
            Some(180) => {}
            Some(s) => {
                let _ = rung.send(false);
                return Outcome::NoRing(format!("INVITE: {s} instead of 180"));
            }
            None => {
                let _ = rung.send(false);
                return Outcome::NoRing(format!("no 180 within {timeout:?}"));
            }
        }
    }
    let _ = rung.send(true);
    if release.wait_for(|r| *r).await.is_err() {
        return Outcome::ReleaseFailed("released without a signal".to_owned());
    }
    let Ok(_permit) = gate.acquire().await else {
        return Outcome::ReleaseFailed("gate closed".to_owned());
    };
    let cancel = ua::build_request(
        &client,
        &Req {
            branch: Some(&branch),
            ..Req::new("CANCEL", &ruri, &ids)
        },
    );
    if let Err(e) = client.send(&cancel).await {
        return Outcome::ReleaseFailed(format!("send CANCEL: {e}"));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let Some(fin) = sub
        .recv_until(deadline, |m| {
            m.is_response()
                && ua::cseq_method(m).as_deref() == Some("INVITE")
                && m.status().is_some_and(|s| s >= 200)
        })
        .await
    else {
        return Outcome::ReleaseFailed(format!("no final response within {timeout:?} of CANCEL"));
    };
    // The ACK of a non-2xx final response: the INVITE's branch, the response's To tag.
    let tag = fin
        .to()
        .ok()
        .and_then(|t| t.tag().map(str::to_owned))
        .unwrap_or_default();
    let ack = ua::build_request(
        &client,
        &Req {
            branch: Some(&branch),
            to_tag: Some(&tag),
            ..Req::new("ACK", &ruri, &ids)
        },
    );
    let _ = client.send(&ack).await;
    match fin.status() {
        Some(487) => Outcome::Released,
        s => Outcome::ReleaseFailed(format!("{s:?} instead of 487 after CANCEL")),
    }
}

fn mem_line(label: &str, pids: &[u32], m: Option<Mem>) {
    let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    match m {
        Some(m) => println!(
            "mem at={label} pids={} rss_kib={} pss_kib={}",
            pids.join(","),
            m.rss_kib,
            m.pss_kib
        ),
        None => println!("mem at={label} pids={} unavailable", pids.join(",")),
    }
}

/// The ringing run over already connected `clients`.
pub async fn run_ringing(r: Ringing, clients: Vec<Arc<Client>>) -> Result<(), String> {
    // A 4 MiB receive buffer: with the kernel default (208 KiB) the callee, sharing the
    // cores with the proxy, lost CANCELs while 10,000 calls were released through a
    // stateless proxy, which does not retransmit them.
    let sock =
        ua::udp_bind(r.uas_bind).map_err(|e| format!("ringing UAS on {}: {e}", r.uas_bind))?;
    let uas = sock.local_addr().map_err(|e| e.to_string())?;
    let contact = format!("<sip:bob@{uas};transport=udp>");
    let uas_task = tokio::spawn(ringing_uas(Arc::new(sock), contact));
    let ruri = format!("sip:bob@{uas};transport=udp");
    let before = mem_of(&r.pids);
    let gate = Arc::new(Semaphore::new(r.concurrency.max(1)));
    let (rung_tx, mut rung_rx) = tokio::sync::mpsc::unbounded_channel();
    let (release_tx, release_rx) = watch::channel(false);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(r.calls);
    for i in 0..r.calls {
        let c = clients[i % clients.len()].clone();
        tasks.push(tokio::spawn(one_call(
            c,
            ruri.clone(),
            gate.clone(),
            rung_tx.clone(),
            release_rx.clone(),
            r.timeout,
        )));
    }
    drop(rung_tx);
    let (mut rung, mut failed) = (0u64, 0u64);
    // Every call reports once (rang or not); the senders live on until the release.
    while rung + failed < r.calls as u64 {
        let Some(ok) = rung_rx.recv().await else {
            break;
        };
        if ok {
            rung += 1;
        } else {
            failed += 1;
        }
    }
    let ring_s = start.elapsed().as_secs_f64();
    println!(
        "ringing rung={rung} failed={failed} ring_s={ring_s:.3} rung_per_s={:.1}",
        rung as f64 / ring_s
    );
    mem_line("before", &r.pids, before);
    tokio::time::sleep(r.hold).await;
    let held = mem_of(&r.pids);
    mem_line("held", &r.pids, held);
    if let (Some(b), Some(h)) = (before, held) {
        let per = |a: u64, b: u64| (a.saturating_sub(b) * 1024) / rung.max(1);
        println!(
            "held_delta rss_kib={} pss_kib={} rss_per_call_bytes={} pss_per_call_bytes={}",
            h.rss_kib.saturating_sub(b.rss_kib),
            h.pss_kib.saturating_sub(b.pss_kib),
            per(h.rss_kib, b.rss_kib),
            per(h.pss_kib, b.pss_kib)
        );
    }
    let released_at = Instant::now();
    let _ = release_tx.send(true);
    let mut released = 0u64;
    let mut failures: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        match t.await {
            Ok(Outcome::Released) => released += 1,
            Ok(Outcome::ReleaseFailed(e)) | Ok(Outcome::NoRing(e)) => {
                *failures.entry(e).or_default() += 1
            }
            Err(e) => *failures.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    println!(
        "released ok={} failed={} release_s={:.3}",
        released,
        failures.values().sum::<u64>(),
        released_at.elapsed().as_secs_f64()
    );
    let mut f: Vec<_> = failures.into_iter().collect();
    f.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    for (reason, count) in f {
        println!("failure count={count} reason={reason:?}");
    }
    mem_line("released", &r.pids, mem_of(&r.pids));
    uas_task.abort();
    Ok(())
}

/// Connect `n` UAC streams to `proxy`.
pub async fn connect(
    transport: Transport,
    proxy: SocketAddr,
    tls: &openssl::ssl::SslConnector,
    n: usize,
) -> Result<Vec<Arc<Client>>, String> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let c = Client::connect(transport, proxy, Some(tls))
            .await
            .map_err(|e| format!("connect to {proxy}: {e}"))?;
        v.push(Arc::new(c));
    }
    Ok(v)
}
