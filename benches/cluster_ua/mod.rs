//! loadgen's cluster pieces (benches/cluster_*.sh): a phone that REGISTERs over TLS with
//! digest and answers what arrives on that connection, a Request-URI template for calls to
//! many AoRs, and the failover run (kill a node, time the first 480, re-register, time the
//! first call that reaches the phone). It measures and prints; it must never assert, and
//! it signals no process but the one pid it is given.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::ssl::SslConnector;
use siprox_testkit::ua::{self, Client, Transport};

/// A phone's identity: AoR `sip:<user>@<domain>`, digest password.
#[derive(Debug, Clone)]
pub struct PhoneId {
    pub user: String,
    pub domain: String,
    pub password: String,
}

/// A phone registered over one TLS connection; answers INVITE (180, 200), ACK (nothing)
/// and any other request (200) on it until dropped.
pub struct Phone {
    _client: Arc<Client>,
    /// Requests that reached this phone.
    pub reached: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `name="value"` or `name=value` of a challenge line.
fn param<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    let rest = &line[at..];
    match rest.strip_prefix('"') {
        Some(q) => q.split('"').next(),
        None => rest.split([',', ' ']).next(),
    }
}

/// The final response (status >= 200) of `call_id`'s `method`, within `timeout`.
async fn final_of(
    sub: &mut ua::Subscription,
    method: &str,
    timeout: Duration,
) -> Option<siprox::sip::Message> {
    let deadline = tokio::time::Instant::now() + timeout;
    sub.recv_until(deadline, |m| {
        m.status().is_some_and(|s| s >= 200) && ua::cseq_method(m).as_deref() == Some(method)
    })
    .await
}

impl Phone {
    /// Connect over TLS to `registrar`, REGISTER (answering a digest challenge, SHA-256
    /// preferred) and start answering. Returns the phone and the time from the first
    /// REGISTER to its 200.
    pub async fn register(
        registrar: SocketAddr,
        tls: &SslConnector,
        id: &PhoneId,
        timeout: Duration,
    ) -> Result<(Phone, Duration), String> {
        let client = Client::connect(Transport::Tls, registrar, Some(tls))
            .await
            .map_err(|e| format!("phone: connect to {registrar}: {e}"))?;
        let client = Arc::new(client);
        let (call_id, tag) = (ua::call_id(), ua::unique());
        let ruri = format!("sip:{registrar}");
        let aor = format!("sip:{}@{}", id.user, id.domain);
        let contact = format!("sip:{}@{};transport=tls", id.user, client.local);
        let mut sub = client.subscribe(&call_id);
        let request = |cseq: u32, auth: &str| {
            format!(
                "REGISTER {ruri} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\n\
                 From: <{aor}>;tag={tag}\r\nTo: <{aor}>\r\nCall-ID: {call_id}\r\n\
                 CSeq: {cseq} REGISTER\r\nContact: <{contact}>\r\nExpires: 3600\r\n\
                 {auth}Content-Length: 0\r\n\r\n",
                client.via(&ua::branch())
            )
        };
        let start = Instant::now();
        client
            .send(request(1, "").as_bytes())
            .await
            .map_err(|e| format!("phone: send REGISTER: {e}"))?;
        let first = final_of(&mut sub, "REGISTER", timeout)
            .await
            .ok_or("phone: no answer to REGISTER")?;
        let last = match first.status() {
            Some(200) => first,
            Some(401) => {
                let challenges: Vec<&str> =
                    first.header_values_by_name("WWW-Authenticate").collect();
                let (line, alg) = challenges
                    .iter()
                    .find(|l| l.contains("algorithm=SHA-256"))
                    .map(|l| (*l, "SHA-256"))
                    .or_else(|| challenges.first().map(|l| (*l, "MD5")))
                    .ok_or("phone: 401 without a challenge")?;
                let realm = param(line, "realm").ok_or("phone: challenge without realm")?;
                let nonce = param(line, "nonce").ok_or("phone: challenge without nonce")?;
                let md = if alg == "SHA-256" {
                    openssl::hash::MessageDigest::sha256()
                } else {
                    openssl::hash::MessageDigest::md5()
                };
                let h = |t: &str| {
                    openssl::hash::hash(md, t.as_bytes())
                        .map(|d| hex(&d))
                        .unwrap_or_default()
                };
                let ha1 = h(&format!("{}:{realm}:{}", id.user, id.password));
                let ha2 = h(&format!("REGISTER:{ruri}"));
                let response = h(&format!("{ha1}:{nonce}:00000001:{tag}:auth:{ha2}"));
                let auth = format!(
                    "Authorization: Digest username=\"{}\", realm=\"{realm}\", \
                     nonce=\"{nonce}\", uri=\"{ruri}\", response=\"{response}\", \
                     algorithm={alg}, qop=auth, nc=00000001, cnonce=\"{tag}\"\r\n",
                    id.user
                );
                client
                    .send(request(2, &auth).as_bytes())
                    .await
                    .map_err(|e| format!("phone: send REGISTER: {e}"))?;
                final_of(&mut sub, "REGISTER", timeout)
                    .await
                    .ok_or("phone: no answer to the REGISTER with credentials")?
            }
            s => return Err(format!("phone: REGISTER answered {s:?}")),
        };
        if last.status() != Some(200) {
            return Err(format!(
                "phone: REGISTER with credentials answered {:?} {}",
                last.status(),
                last.reason().unwrap_or("")
            ));
        }
        let took = start.elapsed();
        let reached = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(answer(
            client.clone(),
            format!("<{contact}>"),
            reached.clone(),
        ));
        Ok((
            Phone {
                _client: client,
                reached,
                task,
            },
            took,
        ))
    }
}

/// Answers every request that arrives on the phone's connection outside a transaction it
/// started itself.
async fn answer(client: Arc<Client>, contact: String, reached: Arc<AtomicU64>) {
    loop {
        let Some(m) = client.recv(Duration::from_secs(1)).await else {
            if client.is_closed() {
                return;
            }
            continue;
        };
        if !m.is_request() {
            continue;
        }
        let out = match m.method() {
            Some("ACK") | None => Vec::new(),
            Some("INVITE") => vec![
                ua::response(&m, 180, "Ringing", &contact, 0),
                ua::response(&m, 200, "OK", &contact, 0),
            ],
            Some(_) => vec![ua::response(&m, 200, "OK", &contact, 0)],
        };
        reached.fetch_add(1, Ordering::Relaxed);
        for o in out {
            if client.send(&o).await.is_err() {
                return;
            }
        }
    }
}

/// A Request-URI template: `{n}` becomes a pseudo-random number below `n` for each call.
#[derive(Debug, Clone)]
pub struct Ruri {
    pub template: String,
    pub n: u64,
}

impl Ruri {
    /// The URI of call `i` (xorshift of the call number: spread, repeatable, no RNG crate).
    pub fn of(&self, i: u64) -> String {
        if !self.template.contains("{n}") {
            return self.template.clone();
        }
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.template
            .replace("{n}", &(x % self.n.max(1)).to_string())
    }
}

/// One OPTIONS to `ruri` through `client`; the final status, or `None` within `timeout`.
pub async fn options_status(client: &Client, ruri: &str, timeout: Duration) -> Option<u16> {
    let ids = ua::CallIds::new();
    let mut sub = client.subscribe(&ids.call_id);
    let req = ua::build_request(client, &ua::Req::new("OPTIONS", ruri, &ids));
    client.send(&req).await.ok()?;
    final_of(&mut sub, "OPTIONS", timeout).await?.status()
}

/// What the failover run needs.
pub struct Failover {
    pub phone: SocketAddr,
    pub reregister: SocketAddr,
    /// The nodes callers enter, each polled with its own connection.
    pub vias: Vec<SocketAddr>,
    pub id: PhoneId,
    pub kill_pid: u32,
    pub interval: Duration,
    pub timeout: Duration,
}

/// One poll: when it was sent and answered, and how.
#[derive(Debug, Clone, Copy)]
struct Poll {
    sent: Instant,
    answered: Option<(Instant, u16)>,
}

/// Polls `sip:<user>@<via>` through every via every `interval` until stopped.
struct Poller {
    log: Arc<Mutex<HashMap<SocketAddr, Vec<Poll>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Poller {
    async fn start(f: &Failover, tls: &SslConnector) -> Result<Poller, String> {
        let log: Arc<Mutex<HashMap<SocketAddr, Vec<Poll>>>> = Arc::default();
        let mut tasks = Vec::new();
        for &via in &f.vias {
            let c = Client::connect(Transport::Tls, via, Some(tls))
                .await
                .map_err(|e| format!("caller: connect to {via}: {e}"))?;
            let c = Arc::new(c);
            let ruri = Arc::new(format!("sip:{}@{via}", f.id.user));
            let (log, interval, timeout) = (log.clone(), f.interval, f.timeout);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    let (c, ruri, log) = (c.clone(), ruri.clone(), log.clone());
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let idx = {
                            let mut l = log.lock().unwrap();
                            let v = l.entry(via).or_default();
                            v.push(Poll {
                                sent,
                                answered: None,
                            });
                            v.len() - 1
                        };
                        if let Some(s) = options_status(&c, &ruri, timeout).await {
                            let at = Instant::now();
                            if let Some(p) = log
                                .lock()
                                .unwrap()
                                .get_mut(&via)
                                .and_then(|v| v.get_mut(idx))
                            {
                                p.answered = Some((at, s));
                            }
                        }
                    });
                }
            }));
        }
        Ok(Poller { log, tasks })
    }

    /// The first poll of `via` answered `status` at or after `since`.
    fn first(&self, via: SocketAddr, status: u16, since: Instant) -> Option<Poll> {
        let l = self.log.lock().unwrap();
        l.get(&via)?
            .iter()
            .filter(|p| p.answered.is_some_and(|(at, s)| s == status && at >= since))
            .min_by_key(|p| p.answered.map(|(at, _)| at))
            .copied()
    }

    /// Waits until every via has a poll answered `status` at or after `since`.
    async fn wait_all(
        &self,
        vias: &[SocketAddr],
        status: u16,
        since: Instant,
        limit: Duration,
    ) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if vias.iter().all(|v| self.first(*v, status, since).is_some()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// The last poll of `via` sent at or after `since` and answered `status`.
    fn last_sent(&self, via: SocketAddr, status: u16, since: Instant) -> Option<Poll> {
        let l = self.log.lock().unwrap();
        l.get(&via)?
            .iter()
            .filter(|p| p.sent >= since && p.answered.is_some_and(|(_, s)| s == status))
            .max_by_key(|p| p.sent)
            .copied()
    }

    /// Polls of `via` sent in `[from, to)`: how many got no answer, and the statuses of
    /// the others.
    fn between(&self, via: SocketAddr, from: Instant, to: Instant) -> (u64, String) {
        let l = self.log.lock().unwrap();
        let mut none = 0;
        let mut by: HashMap<u16, u64> = HashMap::new();
        for p in l.get(&via).into_iter().flatten() {
            if p.sent < from || p.sent >= to {
                continue;
            }
            match p.answered {
                None => none += 1,
                Some((_, s)) => *by.entry(s).or_default() += 1,
            }
        }
        let mut v: Vec<_> = by.into_iter().collect();
        v.sort();
        let s = v
            .iter()
            .map(|(s, n)| format!("{s}x{n}"))
            .collect::<Vec<_>>()
            .join(",");
        (none, if s.is_empty() { "-".into() } else { s })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Register on `phone`, poll through every via until each reaches the phone, SIGKILL
/// `kill_pid`, time the first 480 on each via, re-register on `reregister`, time the first
/// 200 on each via after that registration's 200.
pub async fn run_failover(f: Failover, tls: SslConnector) -> Result<(), String> {
    let vias: Vec<String> = f.vias.iter().map(|v| v.to_string()).collect();
    println!(
        "config mode=failover phone={} reregister={} vias={} aor=sip:{}@{} interval_ms={:.1} timeout_ms={:.0} kill_pid={}",
        f.phone,
        f.reregister,
        vias.join(","),
        f.id.user,
        f.id.domain,
        ms(f.interval),
        ms(f.timeout),
        f.kill_pid
    );
    let (phone, took) = Phone::register(f.phone, &tls, &f.id, f.timeout).await?;
    println!("phone registrar={} register_ms={:.3}", f.phone, ms(took));
    let t0 = Instant::now();
    let poller = Poller::start(&f, &tls).await?;
    if !poller
        .wait_all(&f.vias, 200, t0, Duration::from_secs(30))
        .await
    {
        return Err("the phone was not reached through every via within 30 s".into());
    }
    // Bindings keep their write time in whole seconds and equal-q bindings rank by it: a
    // re-registration within the same second as the registration it replaces ties with
    // it, and the dead node's binding may win the tie until the node is known dead. A
    // phone's registration is older than that when its node dies; make it so here.
    let since = t0.elapsed() + took;
    if since < Duration::from_millis(1100) {
        tokio::time::sleep(Duration::from_millis(1100) - since).await;
    }
    let kill = Instant::now();
    let st = std::process::Command::new("kill")
        .args(["-KILL", &f.kill_pid.to_string()])
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    if !st.success() {
        return Err(format!("kill -KILL {} failed", f.kill_pid));
    }
    drop(phone);
    let limit = Duration::from_secs(60);
    let dead_seen = poller.wait_all(&f.vias, 480, kill, limit).await;
    for &via in &f.vias {
        match poller.first(via, 480, kill) {
            Some(p) => {
                let at = p.answered.map_or(kill, |(at, _)| at);
                let (none, other) = poller.between(via, kill, p.sent);
                println!(
                    "failover via={via} event=first_480 after_kill_ms={:.1} sent_after_kill_ms={:.1} before_unanswered={none} before_answered={other}",
                    ms(at - kill),
                    ms(p.sent.saturating_duration_since(kill))
                );
            }
            None => println!(
                "failover via={via} event=no_480 within_s={}",
                limit.as_secs()
            ),
        }
    }
    if !dead_seen {
        return Ok(());
    }
    let (_phone2, took) = Phone::register(f.reregister, &tls, &f.id, f.timeout).await?;
    let registered = Instant::now();
    println!(
        "phone registrar={} register_ms={:.3}",
        f.reregister,
        ms(took)
    );
    poller.wait_all(&f.vias, 200, registered, limit).await;
    for &via in &f.vias {
        match poller.first(via, 200, registered) {
            Some(p) => {
                let at = p.answered.map_or(registered, |(at, _)| at);
                // The last poll still answered 480 bounds when the binding arrived.
                let last_480 = poller
                    .last_sent(via, 480, registered)
                    .map_or("-".to_owned(), |q| {
                        format!("{:.1}", ms(q.sent.saturating_duration_since(registered)))
                    });
                println!(
                    "failover via={via} event=reachable after_register_ms={:.1} sent_after_register_ms={:.1} last_480_sent_after_register_ms={last_480}",
                    ms(at - registered),
                    ms(p.sent.saturating_duration_since(registered))
                );
            }
            None => println!(
                "failover via={via} event=unreachable within_s={}",
                limit.as_secs()
            ),
        }
    }
    Ok(())
}
