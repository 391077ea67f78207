//! loadgen: a SIP load generator (UAC and UAS over UDP, TCP or TLS) that measures a proxy
//! (siprox, Kamailio, ...) from the outside. It measures and prints; it must never assert,
//! and never change its output format without bumping the `# loadgen v` line below.
//!
//! Run: `cargo bench --bench loadgen -- <args>` (release build; cargo appends `--bench`,
//! which is ignored).
//!
//! # What it does
//! - Call mode (default): starts a UAS on `--uas-bind` (`--uas-transport`), connects
//!   `--connections` UAC sockets/streams to `--proxy` (`--transport`), and runs `--calls`
//!   calls (or for `--duration`) with `--concurrency` calls in flight, flat out or paced at
//!   `--rate` calls/s. A call is `--flow options` (OPTIONS-200) or `--flow invite`
//!   (INVITE-100-180-200-ACK-BYE-200; ACK and BYE follow the Record-Route route set). The
//!   Request-URI is `sip:bob@<uas>;transport=<uas-transport>`, so any proxy that routes by
//!   Request-URI forwards it. `--new-conn-per-call` opens (and closes) one TCP/TLS
//!   connection per call: the handshake rate. UDP requests are retransmitted (RFC 3261
//!   timers A/E).
//! - Ringing mode (`--ringing N --hold D`, benches/stateful.sh): N INVITEs to a UDP UAS of
//!   loadgen's own that answers 180 and nothing more, `--concurrency` at a time, over
//!   `--connections` UAC streams; held for D; with `--pid P` (repeatable: every process of
//!   a multi-process proxy) the memory (VmRSS and Pss, summed) before the first INVITE and
//!   at the end of the hold; then every call is released (CANCEL, 487, ACK). A stateful
//!   proxy holds two live transactions per ringing call. See benches/ringing/mod.rs.
//! - Idle mode (`--idle N --hold D`): opens N TCP/TLS connections to `--proxy`, holds them
//!   idle for D, and with `--pid P` reports the proxy process's RSS before and after. With
//!   `--warm` each connection first completes one OPTIONS to the proxy itself (a phone that
//!   spoke, then went quiet) before it is held.
//!
//! # Arguments
//! ```text
//! --proxy ADDR            proxy to load (ip:port), required
//! --transport T           udp | tcp | tls (UAC side)                    [udp]
//! --uas-transport T       udp | tcp | tls (UAS side)                    [udp]
//! --uas-bind ADDR         where the UAS listens                         [127.0.0.1:0]
//! --uas-cert PEM --uas-key PEM   certificate of a TLS UAS (the proxy must trust its CA)
//! --flow F                options | invite                              [invite]
//! --calls N               stop after N calls                            [10000 unless --duration]
//! --duration D            stop after D (10s, 500ms, 2m)
//! --concurrency N         calls in flight                               [64]
//! --connections N         UAC sockets/streams, calls spread over them   [4]
//! --rate N                start N calls per second (default: flat out)
//! --new-conn-per-call     one new TCP/TLS connection per call
//! --source-ips N          spread UAC connections over 127.0.0.1..N (loopback proxies)  [1]
//! --ca PEM                verify the proxy's certificate (else: no verification)
//! --tls-version V         1.2 | 1.3 | any                               [any]
//! --timeout D             per transaction                               [5s]
//! --threads N             tokio worker threads       [CPU count; lean engine: 1]
//! --engine E              auto | kit | lean: the call engine (below)    [auto]
//! --flow register        REGISTER with digest (user bob@siprox.test, realm siprox.test)
//! --digest MD5|SHA-256    register flow: algorithm (default SHA-256)
//! --password P            register flow: bob's password (default bench)
//! --idle N --hold D       idle mode
//! --ringing N --hold D    ringing mode
//! --pid P                 idle mode: proxy pid whose VmRSS is sampled; ringing mode:
//!                         a proxy process to sample (repeatable)
//! --warm                  idle mode: one OPTIONS transaction per connection first
//! --phone ADDR            call mode: first register a phone over TLS at ADDR (digest,
//!                         `--phone-user`, `--password`), which answers what reaches it
//! --phone-user U          the phone's user                              [bob]
//! --phone-domain D        the phone's AoR domain                        [ADDR's IP]
//! --ruri T                call mode: the Request-URI instead of the UAS's; `{n}` in it
//!                         becomes a pseudo-random number below --ruri-n for each call
//! --ruri-n N              see --ruri                                    [1]
//! --failover-kill PID     failover mode (needs --phone, --reregister): see below
//! --reregister ADDR       failover mode: where the phone registers again
//! --poll-also ADDR        failover mode: another node callers enter (repeatable)
//! --interval D            failover mode: one OPTIONS per node this often  [20ms]
//! --self-test             only check the lean engine against its oracle (benches/lean/
//!                         selftest.rs) and exit: `selftest ok ...` or status 1
//! ```
//!
//! Failover mode (`benches/cluster_failover.sh`): the phone registers at `--phone`; one
//! TLS caller per node (`--proxy` and each `--poll-also`) sends an OPTIONS to
//! `sip:<user>@<node>` every `--interval` (each waits `--timeout`); once every node reaches
//! the phone, loadgen sends SIGKILL to `--failover-kill` (the node the phone is on), waits
//! for a 480 on every node, registers the phone at `--reregister` and waits for a 200 on
//! every node. It prints `phone`, `failover ... event=first_480 after_kill_ms=...` and
//! `failover ... event=reachable after_register_ms=...` lines (key=value, as below).
//!
//! # Call engines
//! `lean` (benches/lean/mod.rs) runs `--flow options|invite` over persistent TCP/TLS
//! connections to a UDP UAS (no `--rate`, `--phone`, `--new-conn-per-call`): one task per
//! connection runs its calls, reads responses only as far as the flow needs and writes
//! the requests of a burst at once, so that loadgen costs less CPU per call than the proxy
//! it measures. `kit` is the test kit's UA (tests/kit/src/ua.rs: a task per call, every
//! message parsed by siprox's parser); it runs every other combination. `auto` takes
//! `lean` where it applies. The output is the same.
//!
//! # Output (stable; one record per line, `key=value` fields separated by one space)
//! ```text
//! # loadgen v2
//! config mode=calls flow=invite transport=tls uas_transport=udp proxy=127.0.0.1:5061 concurrency=64 connections=4 rate=max new_conn_per_call=false calls=20000 duration_s=- engine=lean
//! result calls=20000 ok=20000 failed=0 elapsed_s=3.214 calls_per_s=6222.9 handshakes=0 handshakes_per_s=0.0 cpu_s=1.230 cpu_us_per_call=61.5
//! latency name=call unit=ms n=20000 p50=1.234 p90=2.345 p99=5.678 max=12.345
//! latency name=setup unit=ms n=20000 p50=0.800 p90=1.500 p99=3.000 max=9.000
//! failure count=3 reason="no final response to INVITE within 5s"
//! ```
//! `call` = first request sent to last final response (for `--new-conn-per-call` the
//! connect and handshake included); `setup` = INVITE (or OPTIONS) sent to its 200.
//! `handshakes` counts the connections opened during the run (new-conn-per-call, where the
//! config line says `connections=0`). `rate=max` means flat out. `cpu_s` is loadgen's own
//! CPU time (user + system, every thread: its UAC and its UAS) over the calls, and
//! `cpu_us_per_call` that divided by the calls completed (v2 added both).
//! `failure` lines (zero or more) group failed calls by reason, most frequent first.
//! With `--phone`, call mode also prints `phone registrar=ADDR register_ms=F` and
//! `phone reachable_ms=F` (until an OPTIONS to the first Request-URI through `--proxy`
//! got a 200; the calls start then) after the config line, and `phone reached=N`
//! (requests that reached it) at the end.
//! Ringing mode prints instead (`mem` lines at `before`, `held`, `released`):
//! ```text
//! config mode=ringing transport=tls proxy=127.0.0.1:25161 ringing=10000 hold_s=10 concurrency=64 connections=4
//! ringing rung=10000 failed=0 ring_s=2.345 rung_per_s=4264.4
//! mem at=before pids=1234 rss_kib=12000 pss_kib=11000
//! mem at=held pids=1234 rss_kib=40000 pss_kib=39000
//! held_delta rss_kib=28000 pss_kib=28000 rss_per_call_bytes=2867 pss_per_call_bytes=2867
//! released ok=10000 failed=0 release_s=3.456
//! mem at=released pids=1234 rss_kib=41000 pss_kib=40000
//! ```
//! Idle mode prints instead:
//! ```text
//! config mode=idle transport=tls proxy=127.0.0.1:5061 idle=10000 hold_s=30 source_ips=1 warm=false
//! idle opened=10000 failed=0 open_s=4.321 opened_per_s=2314.2
//! rss pid=1234 before_kib=10240 after_kib=150000 delta_kib=139760 per_conn_bytes=14311
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use siprox_testkit::ua;
use tokio::sync::Semaphore;
use ua::{invite_flow, options_flow, Client, FlowOpts, Transport, Uas, UasOpts};

mod cluster_ua;
use cluster_ua::{Failover, Phone, PhoneId, Ruri};
mod lean;
mod ringing;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Options,
    Invite,
    /// REGISTER, 401, REGISTER with digest, 200 (user `bob`, `--password`, `--digest`).
    Register,
}

#[derive(Debug, Clone)]
struct Args {
    proxy: SocketAddr,
    transport: Transport,
    uas_transport: Transport,
    uas_bind: SocketAddr,
    uas_cert: Option<PathBuf>,
    uas_key: Option<PathBuf>,
    flow: Flow,
    calls: Option<u64>,
    duration: Option<Duration>,
    concurrency: usize,
    connections: usize,
    rate: Option<f64>,
    /// `--flow register`: digest algorithm (`MD5` or `SHA-256`) and bob's password.
    digest: String,
    password: String,
    new_conn_per_call: bool,
    warm: bool,
    source_ips: u8,
    ca: Option<PathBuf>,
    tls_version: (SslVersion, SslVersion),
    timeout: Duration,
    threads: Option<usize>,
    /// `--engine`: None = auto, Some(true) = lean, Some(false) = kit.
    lean: Option<bool>,
    idle: Option<usize>,
    hold: Duration,
    pid: Option<u32>,
    /// Every `--pid` (ringing mode samples them all).
    pids: Vec<u32>,
    ringing: Option<usize>,
    /// A phone registered before the calls (and the failover run's first registrar).
    phone: Option<SocketAddr>,
    phone_user: String,
    phone_domain: Option<String>,
    ruri: Option<Ruri>,
    failover_kill: Option<u32>,
    reregister: Option<SocketAddr>,
    poll_also: Vec<SocketAddr>,
    interval: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let digits = t
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (num, unit) = t.split_at(digits);
    let n: f64 = num.parse().map_err(|_| format!("bad duration `{s}`"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in `{s}`")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_transport(s: &str) -> Result<Transport, String> {
    Transport::parse(s).ok_or_else(|| format!("unknown transport `{s}` (udp, tcp, tls)"))
}

fn usage() -> &'static str {
    "usage: cargo bench --bench loadgen -- --proxy IP:PORT [--transport udp|tcp|tls] \
     [--uas-transport udp|tcp|tls] [--flow options|invite] [--calls N] [--duration D] \
     [--concurrency N] [--connections N] [--rate N] [--new-conn-per-call] [--source-ips N] \
     [--ca PEM] [--tls-version 1.2|1.3|any] [--uas-bind ADDR] [--uas-cert PEM --uas-key PEM] \
     [--timeout D] [--threads N] [--engine auto|kit|lean] [--phone ADDR [--phone-user U] [--password P]] \
     [--ruri T [--ruri-n N]] | --idle N --hold D [--pid P] | --ringing N --hold D [--pid P]... | --failover-kill PID --phone ADDR \
     --reregister ADDR [--poll-also ADDR]... [--interval D]  (see the top of benches/loadgen.rs)"
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        proxy: "127.0.0.1:5060".parse().unwrap(),
        transport: Transport::Udp,
        uas_transport: Transport::Udp,
        uas_bind: "127.0.0.1:0".parse().unwrap(),
        uas_cert: None,
        uas_key: None,
        flow: Flow::Invite,
        calls: None,
        duration: None,
        concurrency: 64,
        connections: 4,
        rate: None,
        digest: "SHA-256".to_owned(),
        password: "bench".to_owned(),
        new_conn_per_call: false,
        warm: false,
        source_ips: 1,
        ca: None,
        tls_version: (SslVersion::TLS1_2, SslVersion::TLS1_3),
        timeout: Duration::from_secs(5),
        threads: None,
        lean: None,
        idle: None,
        hold: Duration::from_secs(10),
        pid: None,
        pids: Vec::new(),
        ringing: None,
        phone: None,
        phone_user: "bob".to_owned(),
        phone_domain: None,
        ruri: None,
        failover_kill: None,
        reregister: None,
        poll_also: Vec::new(),
        interval: Duration::from_millis(20),
    };
    let mut ruri_n = 1;
    let mut proxy_given = false;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{k} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|_| format!("bad number `{s}`"));
        match k.as_str() {
            // Added by `cargo bench`.
            "--bench" => {}
            "--proxy" => {
                a.proxy = v()?.parse().map_err(|e| format!("--proxy: {e}"))?;
                proxy_given = true;
            }
            "--transport" => a.transport = parse_transport(&v()?)?,
            "--uas-transport" => a.uas_transport = parse_transport(&v()?)?,
            "--uas-bind" => a.uas_bind = v()?.parse().map_err(|e| format!("--uas-bind: {e}"))?,
            "--uas-cert" => a.uas_cert = Some(v()?.into()),
            "--uas-key" => a.uas_key = Some(v()?.into()),
            "--flow" => {
                a.flow = match v()?.as_str() {
                    "options" => Flow::Options,
                    "invite" => Flow::Invite,
                    "register" => Flow::Register,
                    f => return Err(format!("unknown flow `{f}` (options, invite, register)")),
                }
            }
            "--calls" => a.calls = Some(num(v()?)?),
            "--duration" => a.duration = Some(parse_duration(&v()?)?),
            "--concurrency" => a.concurrency = num(v()?)?.max(1) as usize,
            "--connections" => a.connections = num(v()?)?.max(1) as usize,
            "--digest" => a.digest = v()?,
            "--password" => a.password = v()?,
            "--rate" => {
                let r: f64 = v()?.parse().map_err(|_| "bad --rate".to_owned())?;
                a.rate = (r > 0.0).then_some(r);
            }
            "--new-conn-per-call" => a.new_conn_per_call = true,
            "--warm" => a.warm = true,
            "--source-ips" => a.source_ips = num(v()?)?.clamp(1, 250) as u8,
            "--ca" => a.ca = Some(v()?.into()),
            "--tls-version" => {
                a.tls_version = match v()?.as_str() {
                    "1.2" => (SslVersion::TLS1_2, SslVersion::TLS1_2),
                    "1.3" => (SslVersion::TLS1_3, SslVersion::TLS1_3),
                    "any" => (SslVersion::TLS1_2, SslVersion::TLS1_3),
                    t => return Err(format!("unknown TLS version `{t}`")),
                }
            }
            "--timeout" => a.timeout = parse_duration(&v()?)?,
            "--threads" => a.threads = Some(num(v()?)?.max(1) as usize),
            "--engine" => {
                a.lean = match v()?.as_str() {
                    "auto" => None,
                    "lean" => Some(true),
                    "kit" => Some(false),
                    e => return Err(format!("unknown engine `{e}` (auto, kit, lean)")),
                }
            }
            "--idle" => a.idle = Some(num(v()?)? as usize),
            "--hold" => a.hold = parse_duration(&v()?)?,
            "--pid" => {
                let p = num(v()?)? as u32;
                a.pid = Some(p);
                a.pids.push(p);
            }
            "--ringing" => a.ringing = Some(num(v()?)? as usize),
            "--phone" => a.phone = Some(v()?.parse().map_err(|e| format!("--phone: {e}"))?),
            "--phone-user" => a.phone_user = v()?,
            "--phone-domain" => a.phone_domain = Some(v()?),
            "--ruri" => {
                a.ruri = Some(Ruri {
                    template: v()?,
                    n: 1,
                })
            }
            "--ruri-n" => ruri_n = num(v()?)?.max(1),
            "--failover-kill" => a.failover_kill = Some(num(v()?)? as u32),
            "--reregister" => {
                a.reregister = Some(v()?.parse().map_err(|e| format!("--reregister: {e}"))?)
            }
            "--poll-also" => a
                .poll_also
                .push(v()?.parse().map_err(|e| format!("--poll-also: {e}"))?),
            "--interval" => a.interval = parse_duration(&v()?)?,
            "-h" | "--help" => return Err(usage().to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{}", usage())),
        }
    }
    if let Some(r) = &mut a.ruri {
        r.n = ruri_n;
    }
    if a.failover_kill.is_some() && (a.phone.is_none() || a.reregister.is_none()) {
        return Err("--failover-kill needs --phone and --reregister".to_owned());
    }
    if !proxy_given {
        return Err(format!("--proxy is required\n{}", usage()));
    }
    if a.calls.is_none() && a.duration.is_none() {
        a.calls = Some(10_000);
    }
    if a.new_conn_per_call && a.transport == Transport::Udp {
        return Err("--new-conn-per-call needs --transport tcp or tls".to_owned());
    }
    Ok(a)
}

fn connector(a: &Args) -> Result<SslConnector, String> {
    connector_with(a, false)
}

/// With `read_ahead` (the lean engine), OpenSSL reads what the socket holds at once
/// instead of each record's 5-byte header and then its body: one recv per burst instead
/// of two per record.
fn connector_with(a: &Args, read_ahead: bool) -> Result<SslConnector, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    b.set_read_ahead(read_ahead);
    match &a.ca {
        Some(ca) => b
            .set_ca_file(ca)
            .map_err(|e| format!("--ca {}: {e}", ca.display()))?,
        None => b.set_verify(SslVerifyMode::NONE),
    }
    b.set_min_proto_version(Some(a.tls_version.0))
        .map_err(|e| e.to_string())?;
    b.set_max_proto_version(Some(a.tls_version.1))
        .map_err(|e| e.to_string())?;
    Ok(b.build())
}

fn acceptor(a: &Args) -> Result<Option<SslAcceptor>, String> {
    if a.uas_transport != Transport::Tls {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&a.uas_cert, &a.uas_key) else {
        return Err("--uas-transport tls needs --uas-cert and --uas-key".to_owned());
    };
    let mut b =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(|e| e.to_string())?;
    b.set_certificate_chain_file(cert)
        .map_err(|e| format!("--uas-cert: {e}"))?;
    b.set_private_key_file(key, SslFiletype::PEM)
        .map_err(|e| format!("--uas-key: {e}"))?;
    Ok(Some(b.build()))
}

/// The local address of the n-th UAC connection: spread over 127.0.0.1..=source_ips.
fn source(a: &Args, n: usize) -> Option<SocketAddr> {
    if a.source_ips <= 1 {
        return None;
    }
    let last = 1 + (n % a.source_ips as usize) as u8;
    Some(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
        0,
    ))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn print_latency(name: &str, mut v: Vec<u64>) {
    v.sort_unstable();
    println!(
        "latency name={name} unit=ms n={} p50={:.3} p90={:.3} p99={:.3} max={:.3}",
        v.len(),
        percentile(&v, 50.0),
        percentile(&v, 90.0),
        percentile(&v, 99.0),
        v.last().map_or(0.0, |m| *m as f64 / 1000.0)
    );
}

/// This process's CPU time so far (user + system, all threads), in seconds: utime and
/// stime of /proc/self/stat (fields 14 and 15, after the command name, which may hold
/// spaces), in clock ticks of 1/100 s (USER_HZ, fixed on Linux). 0 when unreadable.
fn cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
        return 0.0;
    };
    let mut f = rest.split_whitespace().skip(11);
    let mut tick = || f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (tick() + tick()) as f64 / 100.0
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

/// What one worker measured.
#[derive(Default)]
struct Tally {
    call_us: Vec<u64>,
    setup_us: Vec<u64>,
    failures: HashMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, t: Tally) {
        self.call_us.extend(t.call_us);
        self.setup_us.extend(t.setup_us);
        for (k, v) in t.failures {
            *self.failures.entry(k).or_default() += v;
        }
    }
}

/// Whether the lean engine can run these calls.
fn lean_fits(a: &Args) -> bool {
    matches!(a.flow, Flow::Options | Flow::Invite)
        && a.transport != Transport::Udp
        && a.uas_transport == Transport::Udp
        && !a.new_conn_per_call
        && a.rate.is_none()
        && a.phone.is_none()
}

/// Whether this run is call mode on the lean engine.
fn runs_lean(a: &Args) -> bool {
    a.idle.is_none() && a.ringing.is_none() && a.lean != Some(false) && lean_fits(a)
}

async fn run_calls(a: Args) -> Result<(), String> {
    let acc = acceptor(&a)?;
    let conn = Arc::new(connector(&a)?);
    if a.lean == Some(true) && !lean_fits(&a) {
        return Err(
            "--engine lean runs --flow options|invite over persistent tcp/tls \
                    connections to a udp UAS, without --rate or --phone"
                .to_owned(),
        );
    }
    // The same rule that gave the runtime its one worker.
    let lean = runs_lean(&a);
    // The UAS: the lean engine's own over UDP, or the test kit's (kept until the end).
    let (_kit_uas, _lean_uas, uas_uri) = if lean {
        let sock =
            Arc::new(ua::udp_bind(a.uas_bind).map_err(|e| format!("UAS on {}: {e}", a.uas_bind))?);
        let at = sock.local_addr().map_err(|e| e.to_string())?;
        let task = AbortOnDrop(tokio::spawn(lean::uas_udp(sock)));
        (None, Some(task), format!("sip:bob@{at};transport=udp"))
    } else {
        let uas = Uas::start_on(
            a.uas_transport,
            a.uas_bind,
            UasOpts {
                tls: acc,
                ..UasOpts::default()
            },
        )
        .await
        .map_err(|e| format!("UAS on {}: {e}", a.uas_bind))?;
        uas.count_only();
        let uri = uas.uri("bob");
        (Some(uas), None, uri)
    };
    let uas_ruri = Ruri {
        template: uas_uri,
        n: 1,
    };
    let ruri = Arc::new(a.ruri.clone().unwrap_or(uas_ruri));
    println!(
        "config mode=calls flow={} transport={} uas_transport={} proxy={} concurrency={} connections={} rate={} new_conn_per_call={} calls={} duration_s={} engine={}",
        match a.flow {
            Flow::Options => "options",
            Flow::Invite => "invite",
            Flow::Register => "register",
        },
        a.transport.param(),
        a.uas_transport.param(),
        a.proxy,
        a.concurrency,
        if a.new_conn_per_call { 0 } else { a.connections },
        a.rate.map_or("max".to_owned(), |r| format!("{r}")),
        a.new_conn_per_call,
        a.calls.map_or("-".to_owned(), |c| c.to_string()),
        a.duration
            .map_or("-".to_owned(), |d| format!("{:.3}", d.as_secs_f64())),
        if lean { "lean" } else { "kit" },
    );
    if lean {
        return run_lean(&a, Arc::new(connector_with(&a, true)?), ruri).await;
    }
    let phone = match a.phone {
        Some(at) => {
            let (p, took) = Phone::register(at, &conn, &phone_id(&a, at), a.timeout).await?;
            println!(
                "phone registrar={at} register_ms={:.3}",
                took.as_secs_f64() * 1000.0
            );
            Some(p)
        }
        None => None,
    };
    let mut clients = Vec::new();
    if !a.new_conn_per_call {
        for n in 0..a.connections {
            let c = Client::connect_from(a.transport, a.proxy, Some(&conn), source(&a, n))
                .await
                .map_err(|e| format!("connect to {}: {e}", a.proxy))?;
            clients.push(Arc::new(c));
        }
    }
    if let (Some(_), Some(c)) = (&phone, clients.first()) {
        // Calls start once the phone is found where they enter (another node's replica
        // learns the binding from the change stream).
        let t = Instant::now();
        let first = ruri.of(0);
        while cluster_ua::options_status(c, &first, a.timeout).await != Some(200) {
            if t.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "{first} not reachable through {} within 30 s",
                    a.proxy
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!(
            "phone reachable_ms={:.3}",
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    let clients = Arc::new(clients);
    let next = Arc::new(AtomicU64::new(0));
    let handshakes = Arc::new(AtomicU64::new(0));
    let opts = FlowOpts {
        timeout: a.timeout,
        retransmit: a.transport == Transport::Udp,
    };
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let deadline = a.duration.map(|d| start + d);
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let (a, conn, clients, next, handshakes, ruri) = (
            a.clone(),
            conn.clone(),
            clients.clone(),
            next.clone(),
            handshakes.clone(),
            ruri.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if a.calls.is_some_and(|c| i >= c) {
                    break;
                }
                if let Some(r) = a.rate {
                    // Pacing: call i starts at i/rate seconds.
                    let at = start + Duration::from_secs_f64(i as f64 / r);
                    tokio::time::sleep_until(at.into()).await;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let t0 = Instant::now();
                let fresh;
                let client: &Client = if a.new_conn_per_call {
                    match Client::connect_from(
                        a.transport,
                        a.proxy,
                        Some(&conn),
                        source(&a, i as usize),
                    )
                    .await
                    {
                        Ok(c) => {
                            handshakes.fetch_add(1, Ordering::Relaxed);
                            fresh = c;
                            &fresh
                        }
                        Err(e) => {
                            *t.failures.entry(format!("connect: {e}")).or_default() += 1;
                            continue;
                        }
                    }
                } else {
                    &clients[i as usize % clients.len()]
                };
                let ruri = ruri.of(i);
                let r = match a.flow {
                    Flow::Options => options_flow(client, &ruri, opts).await,
                    Flow::Invite => invite_flow(client, &ruri, opts)
                        .await
                        .map(|rep| rep.invite_rtt),
                    Flow::Register => {
                        ua::register_flow(client, opts, &a.digest, "bob", &a.password).await
                    }
                };
                match r {
                    Ok(setup) => {
                        t.call_us.push(t0.elapsed().as_micros() as u64);
                        t.setup_us.push(setup.as_micros() as u64);
                    }
                    Err(e) => *t.failures.entry(e.0).or_default() += 1,
                }
            }
            t
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.map_err(|e| format!("worker: {e}"))?;
        all.merge(t);
    }
    let hs = handshakes.load(Ordering::Relaxed);
    print_result(all, start, cpu0, hs);
    if let Some(p) = phone {
        println!("phone reached={}", p.reached.load(Ordering::Relaxed));
    }
    Ok(())
}

/// Call mode on the lean engine (benches/lean/mod.rs).
async fn run_lean(a: &Args, conn: Arc<SslConnector>, ruri: Arc<Ruri>) -> Result<(), String> {
    let tls = (a.transport == Transport::Tls).then_some(&*conn);
    let n_conns = a.connections.min(a.concurrency);
    let mut streams = Vec::with_capacity(n_conns);
    for n in 0..n_conns {
        let s = ua::connect_stream_from(a.proxy, tls, source(a, n))
            .await
            .map_err(|e| format!("connect to {}: {e}", a.proxy))?;
        streams.push(s);
    }
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let plan = Arc::new(lean::Plan {
        flow: match a.flow {
            Flow::Options => lean::LeanFlow::Options,
            _ => lean::LeanFlow::Invite,
        },
        ruri,
        timeout: a.timeout,
        deadline: a.duration.map(|d| start + d),
        calls: a.calls,
        next: Arc::new(AtomicU64::new(0)),
        via_proto: if a.transport == Transport::Tls {
            "SIP/2.0/TLS"
        } else {
            "SIP/2.0/TCP"
        },
        transport_param: a.transport.param(),
        token: ua::unique(),
    });
    let mut tasks = Vec::with_capacity(n_conns);
    for (n, (stream, local, _)) in streams.into_iter().enumerate() {
        // The calls in flight, spread evenly over the connections.
        let slots = a.concurrency / n_conns + usize::from(n < a.concurrency % n_conns);
        tasks.push(tokio::spawn(lean::run_connection(
            stream,
            local,
            slots,
            n,
            plan.clone(),
        )));
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.map_err(|e| format!("connection: {e}"))?;
        all.merge(Tally {
            call_us: t.call_us,
            setup_us: t.setup_us,
            failures: t.failures,
        });
    }
    print_result(all, start, cpu0, 0);
    Ok(())
}

/// Aborts a task when dropped (the lean UAS at the end of the run).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The `result`, `latency` and `failure` lines of call mode.
fn print_result(all: Tally, start: Instant, cpu0: f64, hs: u64) {
    let elapsed = start.elapsed().as_secs_f64();
    let ok = all.call_us.len() as u64;
    let failed: u64 = all.failures.values().sum();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "result calls={} ok={ok} failed={failed} elapsed_s={elapsed:.3} calls_per_s={:.1} handshakes={hs} handshakes_per_s={:.1} cpu_s={cpu:.3} cpu_us_per_call={:.1}",
        ok + failed,
        ok as f64 / elapsed,
        hs as f64 / elapsed,
        if ok > 0 { cpu * 1e6 / ok as f64 } else { 0.0 }
    );
    print_latency("call", all.call_us);
    print_latency("setup", all.setup_us);
    let mut f: Vec<_> = all.failures.into_iter().collect();
    f.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    for (reason, count) in f {
        println!("failure count={count} reason={reason:?}");
    }
}

/// The phone's identity: `--phone-user`, `--password`, `--phone-domain` or the
/// registrar's IP.
fn phone_id(a: &Args, registrar: SocketAddr) -> PhoneId {
    PhoneId {
        user: a.phone_user.clone(),
        domain: a
            .phone_domain
            .clone()
            .unwrap_or_else(|| registrar.ip().to_string()),
        password: a.password.clone(),
    }
}

async fn run_ringing(a: Args) -> Result<(), String> {
    let n = a.ringing.unwrap_or(0);
    if a.transport == Transport::Udp {
        return Err("--ringing needs --transport tcp or tls".to_owned());
    }
    println!(
        "config mode=ringing transport={} proxy={} ringing={n} hold_s={:.3} concurrency={} connections={}",
        a.transport.param(),
        a.proxy,
        a.hold.as_secs_f64(),
        a.concurrency,
        a.connections
    );
    let tls = connector(&a)?;
    let clients = ringing::connect(a.transport, a.proxy, &tls, a.connections).await?;
    let r = ringing::Ringing {
        calls: n,
        hold: a.hold,
        concurrency: a.concurrency,
        timeout: a.timeout,
        pids: a.pids.clone(),
        uas_bind: a.uas_bind,
    };
    ringing::run_ringing(r, clients).await
}

async fn run_idle(a: Args, n: usize) -> Result<(), String> {
    if a.transport == Transport::Udp {
        return Err("--idle needs --transport tcp or tls".to_owned());
    }
    println!(
        "config mode=idle transport={} proxy={} idle={n} hold_s={:.3} source_ips={} warm={}",
        a.transport.param(),
        a.proxy,
        a.hold.as_secs_f64(),
        a.source_ips,
        a.warm
    );
    let conn = Arc::new(connector(&a)?);
    let before = a.pid.and_then(rss_kib);
    let gate = Arc::new(Semaphore::new(256));
    let start = Instant::now();
    // OPTIONS addressed to the proxy itself: answered there, nothing forwarded.
    let ruri = Arc::new(format!("sip:{};transport={}", a.proxy, a.transport.param()));
    let opts = FlowOpts {
        timeout: a.timeout,
        retransmit: false,
    };
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (conn, gate, bind, ruri) = (conn.clone(), gate.clone(), source(&a, i), ruri.clone());
        let (proxy, tls, warm, transport) =
            (a.proxy, a.transport == Transport::Tls, a.warm, a.transport);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            if warm {
                let c = Client::connect_from(transport, proxy, Some(&*conn), bind)
                    .await
                    .ok()?;
                options_flow(&c, &ruri, opts).await.ok()?;
                // Held only to be dropped at the end: a bare stream or a client.
                return Some(Box::new(c) as Box<dyn Send>);
            }
            let c = if tls { Some(&*conn) } else { None };
            ua::connect_stream_from(proxy, c, bind)
                .await
                .ok()
                .map(|(s, _, _)| Box::new(s) as Box<dyn Send>)
        }));
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(Some(s)) = t.await {
            held.push(s);
        }
    }
    let open_s = start.elapsed().as_secs_f64();
    println!(
        "idle opened={} failed={} open_s={open_s:.3} opened_per_s={:.1}",
        held.len(),
        n - held.len(),
        held.len() as f64 / open_s
    );
    tokio::time::sleep(a.hold).await;
    if let Some(pid) = a.pid {
        let after = rss_kib(pid);
        match (before, after) {
            (Some(b), Some(af)) => {
                let delta = af.saturating_sub(b);
                println!(
                    "rss pid={pid} before_kib={b} after_kib={af} delta_kib={delta} per_conn_bytes={}",
                    (delta * 1024) / (held.len().max(1) as u64)
                );
            }
            _ => println!("rss pid={pid} unavailable"),
        }
    }
    drop(held);
    Ok(())
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--self-test") {
        return self_test();
    }
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    // The lean engine runs on one worker unless `--threads` says otherwise: its tasks
    // hand nothing to each other, and a second worker only added wakeups and context
    // switches (issue 18, 2 cores: -10% CPU per call on one worker; a current-thread
    // runtime was dearer than one worker).
    match a.threads {
        Some(n) => rt.worker_threads(n),
        None if runs_lean(&a) => rt.worker_threads(1),
        None => &mut rt,
    };
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("# loadgen v2");
    let r = rt.block_on(async move {
        match (a.idle, a.failover_kill, a.phone, a.reregister) {
            (Some(n), _, _, _) => run_idle(a, n).await,
            _ if a.ringing.is_some() => run_ringing(a).await,
            (None, Some(pid), Some(phone), Some(reregister)) => {
                let tls = connector(&a)?;
                let mut vias = vec![a.proxy];
                vias.extend(a.poll_also.iter().copied());
                let f = Failover {
                    phone,
                    reregister,
                    vias,
                    id: phone_id(&a, phone),
                    kill_pid: pid,
                    interval: a.interval,
                    timeout: a.timeout,
                };
                cluster_ua::run_failover(f, tls).await
            }
            _ => run_calls(a).await,
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--self-test`: the lean engine's checks (benches/lean/selftest.rs); exit status 1 when
/// one fails.
fn self_test() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(lean::selftest::run()) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("selftest failed: {e}");
            ExitCode::FAILURE
        }
    }
}
