//! Criterion benches of the registrar and digest core: one REGISTER with digest per
//! operation (parse + `authorize` + `save` + the 200 OK's headers), lookups with 100,000
//! bindings in the `MemoryStore`, and the memory each binding costs. Measures only; a
//! one-time check makes sure each path succeeds (a failing authorize would measure the
//! wrong thing).
//!
//! Memory per binding is reported two ways, printed before the benches run:
//! - computed: `Binding::approx_size` (the struct plus every owned string's capacity) plus
//!   the per-AoR map entry (boxed key, `Vec` header, hashbrown's control byte) divided by
//!   the table's load;
//! - measured: the growth of the process's resident set (`/proc/self/statm`, Linux only)
//!   while 100,000 AoRs with one binding each are saved, divided by 100,000. It includes
//!   allocator overhead and the hash tables' spare capacity, so it is the honest figure.
//!
//! Run: `cargo bench --bench registrar -- --warm-up-time 1 --measurement-time 3`.

use std::cell::Cell;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput};
use siprox::auth::{
    ha1, response, Algorithm, AuthKind, AuthParams, AuthSettings, Authenticator, ResponseInput,
    Users,
};
use siprox::proxy::{ConnId, Inbound, Transport};
use siprox::registrar::{lookup, save, LocationStore, LookupResult, MemoryStore, Settings};
use siprox::sip::{Message, Uri};

const NOW: i64 = 1_700_000_000;
const REALM: &str = "example.com";
const BINDINGS: usize = 100_000;

fn rx(conn: u64) -> Inbound {
    Inbound {
        transport: Transport::Tls,
        source: "203.0.113.7:40000".parse().expect("literal"),
        local: "192.0.2.1:5061".parse().expect("literal"),
        conn: Some(ConnId(conn)),
    }
}

fn register_bytes(user: &str, call_id: &str, cseq: u32, auth: &str) -> Bytes {
    Bytes::from(format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/TLS 192.168.1.20:5061;branch=z9hG4bK{cseq}x{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@example.com>;tag=8f7e6d\r\n\
         To: <sip:{user}@example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@192.168.1.20:5061;transport=tls;ob>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1\r\n\
         Supported: outbound, path\r\n\
         Expires: 3600\r\n\
         User-Agent: bench-phone/1.0\r\n\
         {auth}Content-Length: 0\r\n\r\n"
    ))
}

/// The client's Authorization line for `nc` on `nonce`.
fn authorization(alg: Algorithm, nonce: &str, nc: u32) -> String {
    let nc_s = format!("{nc:08x}");
    let h1 = ha1("alice", REALM, "secret", alg).expect("ha1");
    let r = response(
        &h1,
        &ResponseInput {
            algorithm: alg,
            nonce,
            cnonce: Some("0a4f113b"),
            nc: Some(&nc_s),
            qop: Some("auth"),
            method: "REGISTER",
            uri: "sip:example.com",
        },
    )
    .expect("response");
    format!(
        "Authorization: Digest username=\"alice\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"sip:example.com\", response=\"{r}\", algorithm={alg}, cnonce=\"0a4f113b\", qop=auth, nc={nc_s}\r\n"
    )
}

fn bench_register(c: &mut Criterion) {
    let auth = Authenticator::new(b"bench secret", AuthSettings::default()).expect("auth");
    let mut users = Users::default();
    users
        .insert_password("alice", REALM, "secret")
        .expect("users");
    let settings = Settings::default();
    let mut g = c.benchmark_group("register");
    g.throughput(Throughput::Elements(1));
    for alg in [Algorithm::Sha256, Algorithm::Md5] {
        let store = MemoryStore::new();
        let ch = auth
            .challenge(AuthKind::Www, REALM, false, NOW)
            .expect("challenge");
        let line = ch.headers.lines().next().expect("a challenge line");
        let nonce = AuthParams::parse(line.split_once(": ").expect("header").1)
            .expect("challenge parses")
            .get("nonce")
            .expect("nonce")
            .to_owned();
        // Every iteration is a new request: next CSeq, next nonce count (else it would be
        // refused as out of order / replayed and measure the failure path).
        let n = Cell::new(0u32);
        let next = || {
            n.set(n.get() + 1);
            register_bytes(
                "alice",
                "bench-call",
                n.get(),
                &authorization(alg, &nonce, n.get()),
            )
        };
        {
            let m = Message::parse(next()).expect("parses");
            assert!(auth
                .authorize(&m, AuthKind::Www, REALM, &users, NOW)
                .is_ok());
            assert!(save(&m, &rx(1), NOW, &settings, &store).is_ok());
        }
        g.bench_function(format!("digest_{alg}_parse_authorize_save"), |b| {
            b.iter_batched(
                next,
                |bytes| {
                    let m = Message::parse(bytes).expect("parses");
                    let ok = auth
                        .authorize(&m, AuthKind::Www, REALM, &users, NOW)
                        .is_ok();
                    let saved = save(&m, &rx(1), NOW, &settings, &store);
                    black_box((ok, saved.map(|s| s.reply(NOW).headers.len())))
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn fill(store: &MemoryStore) {
    let settings = Settings::default();
    for i in 0..BINDINGS {
        let user = format!("user{i}");
        let m = Message::parse(register_bytes(&user, &format!("call-{i}"), 1, "")).expect("parses");
        let _ = save(&m, &rx(i as u64), NOW, &settings, store);
    }
}

fn bench_lookup(c: &mut Criterion) {
    let store = MemoryStore::new();
    fill(&store);
    assert_eq!(store.len(), BINDINGS);
    let settings = Settings::default();
    let ruris: Vec<String> = (0..4096)
        .map(|i| format!("sip:user{}@example.com", (i * 7919) % BINDINGS))
        .collect();
    let alive = |_: ConnId| true;
    {
        let u = Uri::parse(&ruris[0]).expect("uri");
        assert!(matches!(
            lookup(&u, NOW, &settings, &store, &alive),
            Ok(LookupResult::Found(_))
        ));
    }
    let mut g = c.benchmark_group("lookup");
    g.throughput(Throughput::Elements(1));
    let i = Cell::new(0usize);
    g.bench_function("100k_bindings", |b| {
        b.iter(|| {
            let k = i.get();
            i.set((k + 1) % ruris.len());
            let u = Uri::parse(&ruris[k]).expect("uri");
            black_box(lookup(&u, NOW, &settings, &store, &alive).is_ok())
        })
    });
    g.bench_function("100k_miss", |b| {
        let u = Uri::parse("sip:nobody@example.com").expect("uri");
        b.iter(|| black_box(lookup(&u, NOW, &settings, &store, &alive).is_ok()))
    });
    g.finish();
}

fn rss_bytes() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn memory_report() {
    let before = rss_bytes();
    let store = MemoryStore::new();
    fill(&store);
    let after = rss_bytes();
    let mut bindings = 0usize;
    let mut bytes = 0usize;
    store
        .for_each(&mut |aor, v| {
            bindings += v.len();
            // Map entry: Box<str> key (16) + Vec header (24) + 1 control byte, at the
            // table's worst-case 7/8 load; plus the key's and the Vec's heap buffers.
            bytes += (16 + 24 + 1) * 8 / 7
                + aor.len()
                + v.iter().map(|b| b.approx_size()).sum::<usize>();
        })
        .expect("for_each");
    println!(
        "memory per binding (one contact per AoR, {bindings} AoRs): computed {} bytes; \
         struct Binding alone {} bytes",
        bytes / bindings.max(1),
        std::mem::size_of::<siprox::registrar::Binding>()
    );
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "memory per binding, measured RSS growth: {} bytes",
            a.saturating_sub(b) / BINDINGS
        );
    }
    drop(store);
}

fn main() {
    memory_report();
    let mut c = Criterion::default().configure_from_args();
    bench_register(&mut c);
    bench_lookup(&mut c);
    c.final_summary();
}
