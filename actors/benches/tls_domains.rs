//! Figures for issue 4: 1,000 tenant domains with SNI on one listener. Measures (1) the
//! handshake rate through the dispatch context (ClientHello callback, SNI parse, matcher,
//! context switch, policy) against one fixed context, (2) the time to reload when 1 of the
//! 1,000 changes (the other 999 reused), (3) memory per domain. In-process, over memory
//! pipes (no sockets: the figures are OpenSSL + siprox, not the kernel). Measures, never
//! asserts. Run: `cargo bench -p siprox-actors --bench tls_domains` (N=... to change counts).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::{
    HandshakeError, MidHandshakeSslStream, Ssl, SslConnector, SslContext, SslMethod, SslVerifyMode,
};
use siprox::config::{Config, DomainConfig, ServerTls};
use siprox_actors::tls::{
    build_domains, dispatch_context, server_ssl, unix_now, BuildOptions, TlsDomains,
};
use siprox_testkit::pki::{self_signed, Spec};

/// One direction of an in-memory pipe.
type Buf = Rc<RefCell<VecDeque<u8>>>;

/// A non-blocking in-memory stream: reads `rx`, writes `tx`.
#[derive(Debug)]
struct Pipe {
    rx: Buf,
    tx: Buf,
}

impl Read for Pipe {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut q = self.rx.borrow_mut();
        if q.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = out.len().min(q.len());
        for (o, b) in out.iter_mut().zip(q.drain(..n)) {
            *o = b;
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.tx.borrow_mut().extend(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn pair() -> (Pipe, Pipe) {
    let (a, b): (Buf, Buf) = Default::default();
    (
        Pipe {
            rx: a.clone(),
            tx: b.clone(),
        },
        Pipe { rx: b, tx: a },
    )
}

enum Side {
    Mid(MidHandshakeSslStream<Pipe>),
    Done,
}

fn step(r: Result<openssl::ssl::SslStream<Pipe>, HandshakeError<Pipe>>) -> Side {
    match r {
        Ok(_) => Side::Done,
        Err(HandshakeError::WouldBlock(m)) => Side::Mid(m),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// One full handshake between `client` and `server`, pumped on this thread.
fn handshake(client: Ssl, server: Ssl) {
    let (c, s) = pair();
    let mut cs = step(client.connect(c));
    let mut ss = step(server.accept(s));
    loop {
        if let Side::Mid(m) = cs {
            cs = step(m.handshake());
        }
        if let Side::Mid(m) = ss {
            ss = step(m.handshake());
        }
        if matches!((&cs, &ss), (Side::Done, Side::Done)) {
            return;
        }
    }
}

fn write_domain(dir: &Path, i: usize, generation: usize) {
    let cn = format!("t{i}.tenants.example");
    // A bare self-signed certificate (no extensions), as a tenant might drop in.
    let spec = Spec::leaf(&format!("{cn} g{generation}")).no_san();
    let id = self_signed(&spec.valid_days(0, 90));
    std::fs::write(dir.join(format!("certs/t{i}.pem")), id.cert_pem()).expect("write");
    std::fs::write(dir.join(format!("certs/t{i}.key")), id.key_pem()).expect("write");
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

fn opts(base: &Path) -> BuildOptions<'_> {
    BuildOptions {
        base,
        has_tls: false,
        dev_certs_pending: false,
        now: unix_now(),
        read: &siprox_actors::reload::files::FILES,
    }
}

fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let hs: usize = std::env::var("HANDSHAKES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    std::fs::create_dir_all(base.join("certs")).expect("mkdir");
    std::fs::create_dir_all(base.join("conf.d/domains")).expect("mkdir");
    let mut domains = BTreeMap::new();
    for i in 0..n {
        write_domain(base, i, 0);
        let name = format!("t{i}");
        let d = DomainConfig {
            names: vec![format!("t{i}.tenants.example")],
            server: Some(ServerTls {
                certificate: format!("certs/t{i}.pem").into(),
                private_key: format!("certs/t{i}.key").into(),
                ..ServerTls::default()
            }),
            ..DomainConfig::default()
        };
        std::fs::write(
            base.join(format!("conf.d/domains/{name}.toml")),
            format!(
                "[domains.{name}]\nnames = [\"t{i}.tenants.example\"]\n[domains.{name}.server]\n\
                 certificate = \"certs/t{i}.pem\"\nprivate_key = \"certs/t{i}.key\"\n"
            ),
        )
        .expect("write");
        domains.insert(name, d);
    }
    std::fs::write(
        base.join("conf.d/00-core.toml"),
        "[[listen]]\nproto = \"tls\"\naddr = \"127.0.0.1:5061\"\n[tls]\ndefault_server = false\n",
    )
    .expect("write");
    // The files it came from, as loading conf.d lists them: a build names each domain's
    // file from these.
    let mut sources = vec![base.join("conf.d/00-core.toml")];
    let mut names: Vec<String> = domains.keys().cloned().collect();
    names.sort();
    sources.extend(
        names
            .iter()
            .map(|d| base.join(format!("conf.d/domains/{d}.toml"))),
    );
    let config = Config {
        domains,
        sources,
        ..Config::default()
    };

    // Memory: RSS growth while building every domain (contexts, certificates, facts).
    let before = rss_kib();
    let t0 = Instant::now();
    let built: TlsDomains = build_domains(&config, None, opts(base)).expect("build");
    let first_build = t0.elapsed();
    let after = rss_kib();
    println!(
        "build {n} domains from scratch: {:.1} ms; RSS +{} KiB = {:.1} KiB per domain",
        first_build.as_secs_f64() * 1e3,
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / n as f64
    );

    // Reload with 1 of n changed.
    write_domain(base, n / 2, 1);
    let mut best = Duration::MAX;
    let mut reused = 0;
    let mut prev = built;
    for round in 0..5 {
        if round > 0 {
            write_domain(base, n / 2, round + 1);
        }
        let t0 = Instant::now();
        let next = build_domains(&config, Some(&prev), opts(base)).expect("rebuild");
        best = best.min(t0.elapsed());
        reused = prev
            .servers
            .iter()
            .zip(next.servers.iter())
            .filter(|(a, b)| Arc::ptr_eq(&a.ctx, &b.ctx))
            .count();
        prev = next;
    }
    println!(
        "reload, 1 of {n} changed (build_domains, best of 5): {:.1} ms; {reused} contexts reused",
        best.as_secs_f64() * 1e3
    );
    // A certificate rotation leaves conf.d as it is: the reload only checks that (digest of
    // every file) and reuses the running configuration.
    let t0 = Instant::now();
    let digest = siprox_actors::reload::config_digest(&base.join("conf.d"));
    let digest_time = t0.elapsed();
    assert!(digest.is_some());
    println!(
        "  + checking that conf.d did not change (digest of its files): {:.1} ms",
        digest_time.as_secs_f64() * 1e3
    );
    let t0 = Instant::now();
    let loaded = siprox_actors::reload::files::load(&base.join("conf.d")).expect("load");
    let load_time = t0.elapsed();
    println!(
        "  + when a domain file changed, re-reading conf.d ({} files, figment): {:.1} ms",
        loaded.sources.len(),
        load_time.as_secs_f64() * 1e3
    );
    let domains = Arc::new(prev);

    // Handshakes: dispatch (random SNI among n) vs one fixed context.
    let dispatch = dispatch_context().expect("dispatch");
    let listener: SocketAddr = "127.0.0.1:5061".parse().expect("addr");
    let mut cb = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    cb.set_verify(SslVerifyMode::NONE);
    let client_ctx: SslContext = cb.build().into_context();
    let fixed = domains.servers[0].clone();
    let client = |sni: &str| {
        let mut s = Ssl::new(&client_ctx).expect("ssl");
        s.set_hostname(sni).expect("sni");
        s
    };
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let (mut t_dispatch, mut t_fixed) = (Duration::ZERO, Duration::ZERO);
    // Interleaved rounds so drift (frequency, other load) hits both alike.
    let rounds = 10;
    for _ in 0..rounds {
        let t0 = Instant::now();
        for _ in 0..hs / rounds {
            let i = next();
            let server = server_ssl(&dispatch, domains.clone(), listener).expect("server ssl");
            handshake(client(&format!("t{i}.tenants.example")), server);
        }
        t_dispatch += t0.elapsed();
        let t0 = Instant::now();
        for _ in 0..hs / rounds {
            let mut server = Ssl::new(&fixed.ctx.ctx).expect("ssl");
            fixed.ctx.policy.apply(&mut server).expect("policy");
            handshake(client("t0.tenants.example"), server);
        }
        t_fixed += t0.elapsed();
    }
    let rate = |d: Duration| hs as f64 / d.as_secs_f64();
    println!(
        "handshakes (TLS 1.3, P-256, client+server on one thread): dispatch {:.0}/s, fixed context {:.0}/s, overhead {:+.1}%",
        rate(t_dispatch),
        rate(t_fixed),
        (t_dispatch.as_secs_f64() / t_fixed.as_secs_f64() - 1.0) * 100.0
    );
}
