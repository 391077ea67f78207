//! The core's transaction table (`siprox::transaction::Table`): memory per live transaction
//! and the cost of a ringing call's two transactions (issue 15). Measures only.
//!
//! Memory, printed before the benches run: 10,000 ringing calls, each a server INVITE
//! transaction (an INVITE as baresip sends it over TLS, about 910 bytes, that sent its 100
//! Trying and the callee's 180, the last kept for retransmissions) and the client INVITE transaction of the same
//! INVITE as siprox forwards it (its Via and two Record-Routes on top), reported two ways:
//! - computed: `Table::approx_size` (slots, boxed machines, keys, stored messages, index
//!   and heap entries; allocator overhead not counted);
//! - measured: the growth of the process's resident set (`/proc/self/statm`, Linux only)
//!   while the 10,000 calls are inserted, messages parsed for them included (the table keeps
//!   the parsed messages), divided by 20,000 transactions. It includes allocator overhead
//!   and the index's spare capacity: the honest figure.
//!
//! Time: one ringing call through the table (insert the server transaction, which queues
//! its 100 Trying; the TU sends the 180; insert the client transaction; drain the queued
//! actions), into a table that already holds 10,000 ringing calls.
//!
//! Run: `cargo bench --bench transaction -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use siprox::proxy::{ConnId, Destination, Inbound, Transport};
use siprox::sip::Message;
use siprox::transaction::{ClientOpts, Table, TableConfig};

const CALLS: usize = 10_000;

const SDP: &str = "v=0\r\no=- 3867393553 3867393553 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 10490 RTP/AVP 9 0 8 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\na=label:1\r\na=ssrc:1234 cname:abc\r\na=rtcp-mux\r\n";

/// A baresip INVITE of call `i`, with `extra` header lines on top (siprox's Via and
/// Record-Routes when forwarded).
fn invite(i: usize, extra: &str) -> Message {
    let s = format!(
        "INVITE sip:bob@example.com SIP/2.0\r\n{extra}\
         Via: SIP/2.0/TLS 192.0.2.10:40123;branch=z9hG4bK{i:08x}c0ffee;alias;rport\r\n\
         Contact: <sip:alice-0x55d0@192.0.2.10:40123;transport=tls>;+sip.instance=\"<urn:uuid:12345678-1234-1234-1234-123456789abc>\"\r\n\
         Max-Forwards: 70\r\n\
         To: <sip:bob@example.com>\r\n\
         From: \"Alice\" <sip:alice@example.com>;tag=0a1b2c3d{i:08x}\r\n\
         Call-ID: 5f9e8d7c6b5a4f3e{i:016x}\r\n\
         CSeq: 23612 INVITE\r\n\
         User-Agent: baresip v3.10.1 (x86_64/linux)\r\n\
         Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,REFER,UPDATE,PRACK\r\n\
         Supported: replaces,norefersub,100rel\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    );
    Message::parse(Bytes::from(s)).expect("a valid INVITE")
}

/// The 180 from the callee as it goes upstream (siprox's Via removed).
fn ringing(i: usize) -> Bytes {
    Bytes::from(format!(
        "SIP/2.0 180 Ringing\r\n\
         Via: SIP/2.0/TLS 192.0.2.10:40123;branch=z9hG4bK{i:08x}c0ffee;alias;rport;received=192.0.2.10\r\n\
         Record-Route: <sip:198.51.100.1:5061;transport=tls;lr;fl=abcdefabcdefabcdefabcdef>\r\n\
         Record-Route: <sip:198.51.100.1:5060;lr;fl=abcdefabcdefabcdefabcdef>\r\n\
         To: <sip:bob@example.com>;tag=9f8e7d6c\r\n\
         From: \"Alice\" <sip:alice@example.com>;tag=0a1b2c3d{i:08x}\r\n\
         Call-ID: 5f9e8d7c6b5a4f3e{i:016x}\r\n\
         CSeq: 23612 INVITE\r\n\
         Contact: <sip:bob@192.0.2.20:5060>\r\n\
         Content-Length: 0\r\n\r\n"
    ))
}

fn rx(conn: u64) -> Inbound {
    Inbound {
        transport: Transport::Tls,
        source: "192.0.2.10:40123".parse().expect("literal"),
        local: "198.51.100.1:5061".parse().expect("literal"),
        conn: Some(ConnId(conn)),
    }
}

fn dest() -> Destination {
    Destination::addr(Transport::Udp, "192.0.2.20:5060".parse().expect("literal"))
}

/// The request siprox forwards for call `i`: its Via (a branch of this table) and two
/// Record-Routes (TLS in, UDP out) on top of the caller's INVITE.
fn forwarded(t: &mut Table, i: usize) -> Message {
    let branch = t.new_branch();
    let ours = format!(
        "Via: SIP/2.0/UDP 198.51.100.1:5060;branch={branch}\r\n\
         Record-Route: <sip:198.51.100.1:5060;lr;fl=abcdefabcdefabcdefabcdef>\r\n\
         Record-Route: <sip:198.51.100.1:5061;transport=tls;lr;fl=abcdefabcdefabcdefabcdef>\r\n"
    );
    invite(i, &ours)
}

/// One ringing call through the table: both transactions, the 100 and the 180.
fn ring(t: &mut Table, i: usize, now: Instant) {
    let s = t
        .insert_server(&invite(i, ""), &rx(i as u64 % 4), now)
        .expect("room for the server transaction");
    t.respond(s, 180, ringing(i), now).expect("180 accepted");
    let fwd = forwarded(t, i);
    t.insert_client(fwd, dest(), ClientOpts::default(), now)
        .expect("room for the client transaction");
    t.drain_actions().for_each(drop);
}

fn rss_bytes() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn memory_report() {
    let now = Instant::now();
    let mut t = Table::new(TableConfig::default(), 7);
    let empty = t.approx_size();
    let before = rss_bytes();
    for i in 0..CALLS {
        ring(&mut t, i, now);
    }
    let after = rss_bytes();
    let txs = 2 * CALLS;
    assert_eq!(t.len(), txs, "every call holds two live transactions");
    let computed = (t.approx_size() - empty) / txs;
    let received = invite(0, "").as_bytes().len();
    let sent = forwarded(&mut t, 0).as_bytes().len();
    println!(
        "transaction memory: {CALLS} ringing calls ({txs} live transactions; INVITE {received} B as received, {sent} B as forwarded, SDP {} B; 180 {} B): approx_size {computed} B per transaction, {} B per call",
        SDP.len(),
        ringing(0).len(),
        computed * 2
    );
    match (before, after) {
        (Some(b), Some(a)) => {
            let per = a.saturating_sub(b) / txs;
            println!(
                "transaction memory: RSS growth {} KiB, {per} B per transaction, {} B per call",
                a.saturating_sub(b) / 1024,
                per * 2
            );
        }
        _ => println!("transaction memory: RSS unavailable (no /proc/self/statm)"),
    }
    // Nothing is left after the last timer.
    t.on_timer(now + t.config().server_guard + Duration::from_secs(300));
    t.drain_actions().for_each(drop);
    println!(
        "transaction memory: after every timer ran: {} live transactions",
        t.len()
    );
}

fn bench_ring(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("transaction");
    // Parsing the two INVITEs is in the measurement (the runtime parses both anyway: the
    // request it reads and the one it builds). Each batch starts from a table holding
    // 10,000 ringing calls (built outside the measurement) and adds at most 30,000 more,
    // within the default limit of 100,000 live transactions.
    g.bench_function(
        "ringing call: server + 100 + 180 + client, 10,000+ live",
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    let mut t = Table::new(TableConfig::default(), 7);
                    for i in 0..CALLS {
                        ring(&mut t, i, now);
                    }
                    let batch = (iters - done).min(30_000);
                    let start = Instant::now();
                    for k in 0..batch as usize {
                        ring(black_box(&mut t), CALLS + k, now);
                    }
                    total += start.elapsed();
                    done += batch;
                }
                total
            })
        },
    );
    g.finish();
}

fn main() {
    memory_report();
    let mut c = Criterion::default().configure_from_args();
    bench_ring(&mut c);
    c.final_summary();
}
