//! Route scripts in a running siprox: which script a message runs (TLS domain, Request-URI
//! domain, default), replies through `onreply_route`, and the seed's certificate rule over
//! TLS 1.2 and 1.3. Real sockets on 127.0.0.1:0, real TLS, certificates made in the test.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use openssl::ssl::SslVersion;
use siprox::config::{DomainConfig, Proto, ScriptConfig, VerifyClient};
use tokio::net::UdpSocket;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

async fn udp_exchange(sock: &UdpSocket, to: SocketAddr, msg: &str) -> Option<String> {
    sock.send_to(msg.as_bytes(), to).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(String::from_utf8_lossy(&buf[..n]).to_string()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_runs_the_script_of_its_domain() {
    let dir = tempfile::tempdir().unwrap();
    let uas_peer = Uas::udp().await;
    let uas = uas_peer.addr;
    write(
        dir.path(),
        "scripts/default.cfg",
        "route {\n  append_hf(\"X-Script: default\\r\\n\");\n  forward();\n}\n\
         onreply_route {\n  if (@cseq.method == \"INFO\") { drop; }\n}\n",
    );
    write(
        dir.path(),
        "scripts/a.cfg",
        "route { sl_send_reply(\"488\", \"script A\"); }\n",
    );
    write(
        dir.path(),
        "scripts/b.cfg",
        "route { sl_send_reply(\"489\", \"script B\"); }\n",
    );
    let mut cfg = config(&[Proto::Udp]);
    cfg.script = ScriptConfig {
        file: Some("scripts/default.cfg".into()),
    };
    for (name, file) in [("a", "scripts/a.cfg"), ("b", "scripts/b.cfg")] {
        cfg.domains.insert(
            name.into(),
            DomainConfig {
                names: vec![format!("{name}.example")],
                script: Some(file.into()),
                ..DomainConfig::default()
            },
        );
    }
    let rt = start(cfg, dir.path());
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    let via = format!("UDP {me}");

    let r = udp_exchange(
        &sock,
        proxy,
        &request("OPTIONS", "sip:x@a.example", &via, "d-a", "", ""),
    )
    .await
    .expect("reply from script A");
    assert_eq!(status(&r), Some(488), "{r}");
    assert!(r.starts_with("SIP/2.0 488 script A"), "{r}");
    let r = udp_exchange(
        &sock,
        proxy,
        &request("OPTIONS", "sip:x@B.Example", &via, "d-b", "", ""),
    )
    .await
    .expect("reply from script B");
    assert_eq!(status(&r), Some(489), "{r}");

    // The default script forwards to the UAS, adding its header; the 200 comes back.
    let r = udp_exchange(
        &sock,
        proxy,
        &request(
            "OPTIONS",
            &format!("sip:x@{uas}"),
            &via,
            "d-default",
            "",
            "",
        ),
    )
    .await
    .expect("200 through the default script");
    assert_eq!(status(&r), Some(200), "{r}");
    assert_eq!(uas_peer.count(), 1);

    // onreply_route drops the reply to INFO: the UAS got the request, nothing comes back.
    let r = udp_exchange(
        &sock,
        proxy,
        &request("INFO", &format!("sip:x@{uas}"), &via, "d-info", "", ""),
    )
    .await;
    assert!(r.is_none(), "the reply route dropped it: {r:?}");
    assert_eq!(uas_peer.count(), 2);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_does_not_compile_stops_the_start_with_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "scripts/bad.cfg",
        "route {\n  no_such_function();\n}\n",
    );
    let mut cfg = config(&[Proto::Udp]);
    cfg.script.file = Some("scripts/bad.cfg".into());
    let started =
        siprox_actors::Runtime::start(cfg, siprox_actors::RuntimeOptions::embedded(dir.path()));
    let Err(err) = started else {
        panic!("start must fail");
    };
    let text = err.to_string();
    assert!(text.contains("bad.cfg:2:3"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_rule_authorizes_by_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    // The CA that signs siprox's certificate also signs the clients'.
    let certs = dir.path().join("certs");
    let ca = dev_ca(dir.path());
    let bob = client_cert(&ca, "Bob", &certs);
    let mallory = client_cert(&ca, "Mallory", &certs);

    write(
        dir.path(),
        "scripts/seed.cfg",
        "route {\n\
           if (proto == TLS && @tls.peer != \"Bob\") {\n\
             sl_send_reply(\"403\", \"Forbidden\");\n\
             drop;\n\
           }\n\
           forward();\n\
         }\n",
    );
    let uas_peer = Uas::udp().await;
    let uas = uas_peer.addr;
    let mut cfg = config(&[Proto::Udp, Proto::Tls]);
    cfg.script.file = Some("scripts/seed.cfg".into());
    cfg.tls.verify_client = VerifyClient::Optional;
    let rt = start(cfg, dir.path());
    let tls_addr = rt.local_addr(siprox::proxy::Transport::Tls).unwrap();
    let udp_addr = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
    let ca_path = certs.join("ca.pem");

    let mut expected_forwards = 0;
    for version in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
        for (who, client, code) in [
            ("bob", Some((bob.0.as_path(), bob.1.as_path())), 200),
            (
                "mallory",
                Some((mallory.0.as_path(), mallory.1.as_path())),
                403,
            ),
            ("nobody", None, 403),
        ] {
            let mut s = tls_client(tls_addr, &ca_path, client, version).await;
            let call = format!("seed-{who}-{version:?}");
            send(
                &mut s,
                &request(
                    "OPTIONS",
                    &format!("sip:x@{uas}"),
                    "TLS 127.0.0.1:9",
                    &call,
                    "",
                    "",
                ),
            )
            .await;
            let mut buf = Vec::new();
            let r = read_message(&mut s, &mut buf, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("{who} over {version:?}: {e}"));
            assert_eq!(status(&r), Some(code), "{who} over {version:?}: {r}");
            if code == 200 {
                expected_forwards += 1;
            }
        }
    }
    assert_eq!(uas_peer.count(), expected_forwards);

    // UDP is untouched by the rule.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let via = format!("UDP {}", sock.local_addr().unwrap());
    let r = udp_exchange(
        &sock,
        udp_addr,
        &request("OPTIONS", &format!("sip:x@{uas}"), &via, "seed-udp", "", ""),
    )
    .await
    .expect("UDP answer");
    assert_eq!(status(&r), Some(200), "{r}");
    rt.shutdown();
}

/// A UDP UAS that answers 200 and records the `X-Version` each request carried.
async fn versioned_uas() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            if status(&req).is_some() {
                continue;
            }
            let v = header(&req, "X-Version").unwrap_or("none").to_owned();
            s2.lock().unwrap().push(v);
            let _ = sock
                .send_to(response_for(&req, 200, 0).as_bytes(), from)
                .await;
        }
    });
    (addr, seen)
}

fn swap_in(dir: &Path, text: &str) {
    // Write aside, then rename over: the watcher sees one atomic change.
    let tmp = dir.join("scripts/.route.cfg.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("scripts/route.cfg")).unwrap();
}

fn versioned(v: u32) -> String {
    format!("route {{\n  append_hf(\"X-Version: {v}\\r\\n\");\n  forward();\n}}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_a_script_under_load_loses_no_message() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "scripts/route.cfg", &versioned(1));
    let (uas, seen) = versioned_uas().await;
    // From files, as in production: the watcher follows conf.d and the script's directory.
    write(
        dir.path(),
        "conf.d/00-test.toml",
        "[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:0\"\n\
         [runtime]\nworkers = 2\n\
         [script]\nfile = \"scripts/route.cfg\"\n\
         [tls]\ngenerate_dev_certs = true\nwatch = true\nreload_debounce = \"50ms\"\n",
    );
    let cfg = siprox_actors::reload::files::load(&dir.path().join("conf.d")).expect("config loads");
    let rt = start(cfg, dir.path());
    let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();

    // Load: one request after the other, each must be answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sent, failed) = (
        std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    );
    let load = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        tokio::spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let via = format!("UDP {}", sock.local_addr().unwrap());
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let call = format!("swap-{i}");
                let m = request("OPTIONS", &format!("sip:x@{uas}"), &via, &call, "", "");
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                match udp_exchange(&sock, proxy, &m).await {
                    Some(r) if status(&r) == Some(200) && r.contains(&call) => {}
                    _ => {
                        failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        })
    };
    let has = |v: &str| seen.lock().unwrap().iter().any(|x| x == v);
    assert_eventually!(has("1"), Duration::from_secs(5), "version 1 runs");
    swap_in(dir.path(), &versioned(2));
    assert_eventually!(has("2"), Duration::from_secs(5), "version 2 swapped in");
    // A script that does not compile: the running one stays, the error is kept.
    let before = rt.tls_status().failures;
    swap_in(dir.path(), "route {\n  forward(\n}\n");
    assert_eventually!(
        rt.tls_status().failures > before,
        Duration::from_secs(5),
        "the broken script is refused"
    );
    let err = format!("{:?}", rt.tls_status().last_error);
    assert!(err.contains("route.cfg"), "the error names the file: {err}");
    let n = seen.lock().unwrap().len();
    assert_eventually!(
        seen.lock().unwrap().len() > n + 20,
        Duration::from_secs(5),
        "traffic goes on"
    );
    assert_eq!(seen.lock().unwrap().last().map(String::as_str), Some("2"));
    swap_in(dir.path(), &versioned(3));
    assert_eventually!(has("3"), Duration::from_secs(5), "the fixed script runs");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    load.await.unwrap();
    let (sent, failed) = (
        sent.load(std::sync::atomic::Ordering::SeqCst),
        failed.load(std::sync::atomic::Ordering::SeqCst),
    );
    assert!(sent > 50, "enough load: {sent}");
    assert_eq!(failed, 0, "no message lost across swaps ({sent} sent)");
    rt.shutdown();
}

/// A script changed at once after the start, before the file watcher may be watching: it
/// still replaces the running one (the registry compares against what the start loaded, and
/// checks once as soon as it watches), instead of waiting for the periodic check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_right_after_the_start_is_not_missed() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "scripts/route.cfg", &versioned(1));
        let (uas, seen) = versioned_uas().await;
        write(
            dir.path(),
            "conf.d/00-test.toml",
            "[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:0\"\n\
             [script]\nfile = \"scripts/route.cfg\"\n\
             [tls]\ngenerate_dev_certs = true\nwatch = true\nreload_debounce = \"50ms\"\n\
             reload_check_interval = \"600s\"\n",
        );
        let cfg =
            siprox_actors::reload::files::load(&dir.path().join("conf.d")).expect("config loads");
        let rt = start(cfg, dir.path());
        swap_in(dir.path(), &versioned(2));
        let proxy = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let via = format!("UDP {}", sock.local_addr().unwrap());
        let mut i = 0;
        assert_eventually!(
            {
                i += 1;
                let m = request(
                    "OPTIONS",
                    &format!("sip:x@{uas}"),
                    &via,
                    &format!("r{round}-{i}"),
                    "",
                    "",
                );
                udp_exchange(&sock, proxy, &m).await;
                seen.lock().unwrap().last().is_some_and(|v| v == "2")
            },
            Duration::from_secs(5),
            "round {round}: the change made right after the start was missed"
        );
        rt.shutdown();
    }
}

/// docs/script.md: `force_rport()` sends siprox's own UDP replies to the source port, as if
/// the request's Via had `rport`; without it a reply goes to the Via's port (RFC 3261
/// §18.2.2). The request comes from one socket and names another in its Via.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_rport_answers_the_source_port_not_the_via_port() {
    for (forced, script) in [
        (
            true,
            "route {\n  force_rport();\n  sl_send_reply(\"200\", \"Forced\");\n}\n",
        ),
        (false, "route {\n  sl_send_reply(\"200\", \"Forced\");\n}\n"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "scripts/rport.cfg", script);
        let mut cfg = config(&[Proto::Udp]);
        cfg.script.file = Some("scripts/rport.cfg".into());
        let rt = start(cfg, dir.path());
        let sip = rt.local_addr(siprox::proxy::Transport::Udp).unwrap();
        let source = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let via = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let via_addr = via.local_addr().unwrap();
        let req = format!(
            "OPTIONS sip:{sip} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {via_addr};branch=z9hG4bK-rport-{forced}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:a@example.com>;tag=1\r\n\
             To: <sip:{sip}>\r\n\
             Call-ID: rport-{forced}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let (at, silent) = if forced {
            (&source, &via)
        } else {
            (&via, &source)
        };
        source.send_to(req.as_bytes(), sip).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let (n, _) = tokio::time::timeout(Duration::from_secs(3), at.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("forced={forced}: no reply where it belongs"))
            .unwrap();
        let r = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(r.starts_with("SIP/2.0 200 Forced\r\n"), "{r}");
        let stray =
            tokio::time::timeout(Duration::from_millis(200), silent.recv_from(&mut buf)).await;
        assert!(
            stray.is_err(),
            "forced={forced}: a reply went to both sockets"
        );
        rt.shutdown();
    }
}

/// A UDP port free now (the test configures a listener on it, so that the script can name
/// it literally).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// docs/script.md: `$fs` (and `force_send_socket()`) makes a forwarded request leave from
/// that listener: the UAS sees the datagram come from its port and siprox's Via name it,
/// for `forward()` and `t_relay()`; a computed socket that is no listener leaves the
/// default (the listener the request came in on); a literal one is refused at load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_sends_from_the_forced_udp_listener() {
    let uas = Uas::udp().await;
    let (p1, p2) = (free_udp_port(), free_udp_port());
    let cases = [
        ("$fs = \"udp:127.0.0.1:{p2}\";", "forward();", p2),
        (
            "force_send_socket(udp:127.0.0.1:{p2});",
            "t_relay();",
            p2,
        ),
        ("$fs = \"udp:127.0.0.1:\" + $hdr(X-Port);", "t_relay();", p2),
        (
            "if (!set_send_socket(\"udp:127.0.0.1:$hdr(X-Bad)\")) { append_hf(\"X-Refused: 1\\r\\n\"); }",
            "forward();",
            p1,
        ),
        ("", "forward();", p1),
    ];
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = client.local_addr().unwrap();
    for (i, (set, call, from)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let set = set.replace("{p2}", &p2.to_string());
        let body = format!("{set} {call}");
        write(
            dir.path(),
            "scripts/fs.cfg",
            &format!(
                "route {{\n  {set}\n  append_hf(\"X-Fs: $fs\\r\\n\");\n  record_route();\n  {call}\n}}\n"
            ),
        );
        let mut cfg = config(&[Proto::Udp, Proto::Udp]);
        cfg.listen[0].addr = format!("127.0.0.1:{p1}").parse().unwrap();
        cfg.listen[1].addr = format!("127.0.0.1:{p2}").parse().unwrap();
        cfg.script.file = Some("scripts/fs.cfg".into());
        let rt = start(cfg, dir.path());
        uas.clear();
        let req = format!(
            "MESSAGE {} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK-fs-{i}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:a@example.com>;tag=1\r\n\
             To: <sip:b@example.com>\r\n\
             Call-ID: fs-{i}\r\n\
             CSeq: 1 MESSAGE\r\n\
             X-Port: {p2}\r\n\
             X-Bad: 9\r\n\
             Content-Length: 0\r\n\r\n",
            uas.uri("b")
        );
        let to = format!("127.0.0.1:{p1}").parse().unwrap();
        let r = udp_exchange(&client, to, &req).await;
        assert_eq!(r.as_deref().and_then(status), Some(200), "{body}: {r:?}");
        let got = uas.requests("MESSAGE");
        assert_eq!(got.len(), 1, "{body}");
        assert_eq!(
            got[0].from.port(),
            from,
            "{body}: sent from the wrong socket"
        );
        let via = got[0]
            .msg
            .header_values_by_name("Via")
            .next()
            .unwrap_or_default();
        assert!(
            via.starts_with(&format!("SIP/2.0/UDP 127.0.0.1:{from};")),
            "{body}: {via}"
        );
        let fs = got[0].msg.header_values_by_name("X-Fs").next();
        // `$fs` reads the listener, or null when none was forced.
        let want = if from == p2 {
            format!("udp:127.0.0.1:{p2}")
        } else {
            "<null>".to_owned()
        };
        assert_eq!(fs, Some(want.as_str()), "{body}");
        let rr = got[0]
            .msg
            .header_values_by_name("Record-Route")
            .next()
            .unwrap_or_default();
        assert!(
            rr.starts_with(&format!("<sip:127.0.0.1:{from};")),
            "{body}: {rr}"
        );
        let refused = got[0].msg.header_values_by_name("X-Refused").next();
        assert_eq!(refused.is_some(), body.contains("X-Bad"), "{body}");
        rt.shutdown();
    }

    // A literal socket siprox does not listen on: refused at load, naming it.
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "scripts/fs.cfg",
        "route {\n  $fs = \"udp:127.0.0.1:9\";\n  forward();\n}\n",
    );
    let mut cfg = config(&[Proto::Udp]);
    cfg.listen[0].addr = format!("127.0.0.1:{p1}").parse().unwrap();
    cfg.script.file = Some("scripts/fs.cfg".into());
    let err = match siprox_actors::Runtime::start(
        cfg,
        siprox_actors::RuntimeOptions::embedded(dir.path()),
    ) {
        Ok(_) => panic!("a script forcing a socket siprox does not have was loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("udp:127.0.0.1:9") && err.contains("fs.cfg"),
        "{err}"
    );
}
