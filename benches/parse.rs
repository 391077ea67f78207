//! Criterion benches of the SIP message core against rsip 0.4; they measure and never assert
//! beyond a one-time sanity check of the fixtures in `benches/data/` (CRLF, exact bodies).
//!
//! Run: `cargo bench --bench parse -- --warm-up-time 1 --measurement-time 3`.
//! Bench ids are stable (`parse/invite`, `parse+read/invite`, `forward/invite`, and the
//! same ids under `rsip/`) so that results can be compared across commits.
//! `forward/200ok` parses `200ok-proxied` and removes its top Via (a proxy forwarding a
//! response back).
//! `validated/invite` and `validated/200ok-proxied` time [`Message::validated`] alone on a
//! parsed message (the check a proxy runs on every request and response it forwards);
//! `200ok-proxied` is a 200 as a proxy receives it: 2 Vias, 2 Record-Routes, a Contact.
//! `200ok-siprox` (under `parse/`, `frame/`, `validated/`) is a 200 as siprox receives it
//! under the load test: its own Via and flow token on top, two Record-Routes of its own.
//! `frame/invite` and `frame/200ok-proxied` time [`StreamFramer::next_frame`] on a stream
//! read that holds one whole message (the TLS path's parse), the append of the read included.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rsip::headers::untyped::{ToTypedHeader, UntypedHeader};
use rsip::message::{HasHeaders, HeadersExt};
use siprox::sip::{Editor, Frame, Limits, Message, StreamFramer};

/// The Via and Record-Route a forwarding proxy adds; the branch is fixed so that every
/// iteration writes the same bytes.
const PROXY_VIA: &str = "SIP/2.0/UDP proxy.example.net:5060;branch=z9hG4bK3f1c9a7e.0";
const PROXY_RR: &str = "<sip:proxy.example.net;lr>";

/// A fixture loaded once and leaked, so that `Bytes::from_static` makes every per-iteration
/// clone free: the measurement is the parse, not a copy or a refcount.
struct Fixture {
    name: &'static str,
    bytes: Bytes,
}

fn load(name: &'static str) -> Fixture {
    let path = format!("{}/benches/data/{name}.sip", env!("CARGO_MANIFEST_DIR"));
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let bytes = Bytes::from_static(Box::leak(data.into_boxed_slice()));
    // The fixtures must be what both parsers accept, or the benches would time error paths.
    let m = Message::parse_datagram(bytes.clone(), &Limits::default())
        .unwrap_or_else(|e| panic!("{name}: siprox rejects the fixture: {e}"));
    m.validate()
        .unwrap_or_else(|e| panic!("{name}: siprox finds the fixture invalid: {e}"));
    assert_eq!(
        m.as_bytes().len(),
        bytes.len(),
        "{name}: Content-Length mismatch"
    );
    let r = rsip::SipMessage::try_from(&bytes[..])
        .unwrap_or_else(|e| panic!("{name}: rsip rejects the fixture: {e}"));
    // Both parsers must see the whole message, or the comparison is not like for like.
    assert_eq!(
        r.headers().iter().count(),
        m.header_count(),
        "{name}: header count"
    );
    assert_eq!(r.body().len(), m.body().len(), "{name}: body length");
    Fixture { name, bytes }
}

fn fixtures() -> Vec<Fixture> {
    vec![load("invite"), load("200ok"), load("register")]
}

/// The fields a proxy reads from nearly every message: top Via branch, From tag, To (URI
/// and tag), Call-ID, CSeq. siprox does not parse the To URI unless asked; neither do we.
fn read_siprox(m: &Message) {
    let via = m.top_via().ok();
    black_box(via.as_ref().and_then(|v| v.branch()));
    black_box(m.from().ok().and_then(|f| f.tag()));
    let to = m.to().ok();
    black_box(to.as_ref().map(|t| (t.uri_str, t.tag())));
    black_box(m.call_id().ok());
    black_box(m.cseq().ok().map(|c| (c.seq, c.method)));
}

/// The same fields through rsip's typed headers (its only way to get a branch or a tag).
fn read_rsip(m: &rsip::SipMessage) {
    let via = m.via_header().ok().and_then(|v| v.typed().ok());
    black_box(via.as_ref().and_then(|v| v.branch()));
    let from = m.from_header().ok().and_then(|f| f.typed().ok());
    black_box(from.as_ref().and_then(|f| f.tag()));
    let to = m.to_header().ok().and_then(|t| t.typed().ok());
    black_box(to.as_ref().map(|t| (&t.uri, t.tag())));
    black_box(m.call_id_header().ok().map(|c| c.value()));
    let cseq = m.cseq_header().ok().and_then(|c| c.typed().ok());
    black_box(cseq.as_ref().map(|c| (c.seq, &c.method)));
}

/// What rsip needs to do the forwarding edits of `forward/invite`: it has no in-place
/// editor, so the headers are rebuilt and the message re-serialised.
fn forward_rsip(m: rsip::SipMessage) -> Vec<u8> {
    let rsip::SipMessage::Request(mut req) = m else {
        return Vec::new();
    };
    if let Ok(mf) = req.max_forwards_header_mut() {
        let n = mf.num().unwrap_or(70).saturating_sub(1);
        mf.replace(n.to_string());
    }
    let old: Vec<rsip::Header> = std::mem::take(&mut req.headers).into();
    let mut headers = Vec::with_capacity(old.len() + 2);
    headers.push(rsip::Header::Via(rsip::headers::Via::new(PROXY_VIA)));
    headers.push(rsip::Header::RecordRoute(rsip::headers::RecordRoute::new(
        PROXY_RR,
    )));
    headers.extend(old);
    req.headers = headers.into();
    req.into()
}

fn bench_siprox(c: &mut Criterion, fx: &[Fixture]) {
    let limits = Limits::default();

    let mut g = c.benchmark_group("parse");
    for f in fx {
        g.throughput(Throughput::Bytes(f.bytes.len() as u64));
        g.bench_function(f.name, |b| {
            b.iter(|| Message::parse_datagram(black_box(f.bytes.clone()), &limits))
        });
    }
    // A 200 as siprox receives it in the load test (captured from /work/main's
    // benches/conf.d run): siprox's own Via with its flow token on top, two Record-Routes.
    let siprox200 = load("200ok-siprox");
    g.throughput(Throughput::Bytes(siprox200.bytes.len() as u64));
    g.bench_function(siprox200.name, |b| {
        b.iter(|| Message::parse_datagram(black_box(siprox200.bytes.clone()), &limits))
    });
    g.finish();

    let mut g = c.benchmark_group("parse+read");
    for f in fx {
        g.throughput(Throughput::Bytes(f.bytes.len() as u64));
        g.bench_function(f.name, |b| {
            b.iter(|| {
                if let Ok(m) = Message::parse_datagram(black_box(f.bytes.clone()), &limits) {
                    read_siprox(&m);
                }
            })
        });
    }
    g.finish();

    let invite = &fx[0];
    let mut g = c.benchmark_group("forward");
    g.throughput(Throughput::Bytes(invite.bytes.len() as u64));
    g.bench_function(invite.name, |b| {
        b.iter(|| {
            let m = Message::parse_datagram(black_box(invite.bytes.clone()), &limits).ok()?;
            let mut e = Editor::new(&m);
            e.prepend_via(PROXY_VIA);
            e.decrement_max_forwards().ok()?;
            e.prepend_record_route(PROXY_RR);
            Some(e.finish())
        })
    });
    // A response going back through a proxy: its own Via removed (the top line).
    let proxied = load("200ok-proxied");
    g.throughput(Throughput::Bytes(proxied.bytes.len() as u64));
    g.bench_function("200ok", |b| {
        b.iter(|| {
            let m = Message::parse_datagram(black_box(proxied.bytes.clone()), &limits).ok()?;
            let mut e = Editor::new(&m);
            e.remove_first_via().ok()?;
            Some(e.finish())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("frame");
    for f in [invite, &load("200ok-proxied"), &siprox200] {
        g.throughput(Throughput::Bytes(f.bytes.len() as u64));
        g.bench_function(f.name, |b| {
            let mut framer = StreamFramer::new(limits);
            let mut buf = bytes::BytesMut::with_capacity(16 * 1024);
            b.iter(|| {
                buf.extend_from_slice(black_box(&f.bytes[..]));
                match framer.next_frame(&mut buf) {
                    Ok(Some(Frame::Message(m))) => black_box(m.header_count()),
                    _ => 0,
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("validated");
    let proxied = load("200ok-proxied");
    for f in [invite, &proxied, &siprox200] {
        let m = Message::parse_datagram(f.bytes.clone(), &limits).expect("fixture parses");
        g.throughput(Throughput::Bytes(f.bytes.len() as u64));
        g.bench_function(f.name, |b| b.iter(|| black_box(&m).validated().is_ok()));
    }
    g.finish();
}

fn bench_rsip(c: &mut Criterion, fx: &[Fixture]) {
    let mut g = c.benchmark_group("rsip/parse");
    for f in fx {
        g.throughput(Throughput::Bytes(f.bytes.len() as u64));
        g.bench_function(f.name, |b| {
            b.iter(|| rsip::SipMessage::try_from(black_box(&f.bytes[..])))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("rsip/parse+read");
    for f in fx {
        g.throughput(Throughput::Bytes(f.bytes.len() as u64));
        g.bench_function(f.name, |b| {
            b.iter(|| {
                if let Ok(m) = rsip::SipMessage::try_from(black_box(&f.bytes[..])) {
                    read_rsip(&m);
                }
            })
        });
    }
    g.finish();

    let invite = &fx[0];
    let mut g = c.benchmark_group("rsip/forward");
    g.throughput(Throughput::Bytes(invite.bytes.len() as u64));
    g.bench_function(invite.name, |b| {
        b.iter(|| {
            rsip::SipMessage::try_from(black_box(&invite.bytes[..]))
                .ok()
                .map(forward_rsip)
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let fx = fixtures();
    bench_siprox(c, &fx);
    bench_rsip(c, &fx);
}

criterion_group!(parse, benches);
criterion_main!(parse);
