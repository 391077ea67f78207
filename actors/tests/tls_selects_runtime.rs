//! The TLS selects over a real TLS connection, with SER's and Kamailio's meanings: a DN
//! without a component is its CN, the certificate version is the raw 0-based value, `@tls`
//! is OpenSSL's cipher description verbatim (trailing newline included), and the selects
//! Kamailio accepts (`revoked`, `my.verified`) load. The script answers with the values in
//! reply headers. Real sockets on 127.0.0.1:0, certificates made in the test.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use openssl::nid::Nid;
use openssl::ssl::SslVersion;
use siprox::config::{Proto, VerifyClient};
use siprox_actors::RuntimeHandle;
use siprox_testkit::pki::{Ca, Spec};

const SCRIPT: &str = r#"route {
    $var(d) = 0;
    if (@tls.desc == $hdr(X-Expect) + "\n" && @tls == @tls.desc) { $var(d) = 1; }
    append_to_reply("X-Desc-Verbatim: " + $var(d) + "\r\n");
    append_to_reply("X-Subject: " + @tls.peer.subject + "\r\n");
    append_to_reply("X-Issuer: " + @tls.peer.issuer + "\r\n");
    append_to_reply("X-Org: " + @tls.peer.subject.o + "\r\n");
    append_to_reply("X-Version: " + @tls.peer.version + "\r\n");
    append_to_reply("X-Pv-Version: $tls_peer_version\r\n");
    append_to_reply("X-Pv-Subject: $tls_peer_subject\r\n");
    append_to_reply("X-Verified: " + @tls.peer.verified + "\r\n");
    append_to_reply("X-Revoked: " + @tls.peer.revoked + "\r\n");
    append_to_reply("X-My-Verified: [" + @tls.my.verified + "]\r\n");
    append_to_reply("X-Email: " + @tls.peer.email + "\r\n");
    $var(r) = append_to_reply("X-Raw: $tls_description\r\n");
    append_to_reply("X-Raw-Appended: " + $var(r) + "\r\n");
    sl_send_reply("200", "OK");
}
"#;

/// siprox in `root` with SCRIPT as its route and client certificates optional, and the
/// development CA (in `root/certs`) that issues the clients'.
fn start_with_script(root: &Path) -> (RuntimeHandle, Ca) {
    let ca = dev_ca(root);
    let script = root.join("scripts/tls.cfg");
    std::fs::create_dir_all(script.parent().unwrap()).unwrap();
    std::fs::write(&script, SCRIPT).unwrap();
    let mut cfg = config(&[Proto::Tls]);
    cfg.script.file = Some("scripts/tls.cfg".into());
    cfg.tls.verify_client = VerifyClient::Optional;
    (start(cfg, root), ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_selects_read_the_connection_as_ser_does() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let (rt, ca) = start_with_script(dir.path());
    let ca_cn = ca
        .cert
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .expect("the dev CA has a CN");
    let bob = ca
        .issue(
            &Spec::client("Bob")
                .o("Example Inc")
                .email("bob@example.com"),
        )
        .write(&certs, "bob");
    let tls_addr = rt.local_addr(siprox::proxy::Transport::Tls).unwrap();

    for version in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
        let mut s = tls_client(
            tls_addr,
            &certs.join("ca.pem"),
            Some((bob.cert_path.as_path(), bob.key_path.as_path())),
            version,
        )
        .await;
        // The client's OpenSSL describes the negotiated cipher the same way.
        let desc = s
            .ssl()
            .current_cipher()
            .expect("a negotiated cipher")
            .description();
        assert!(desc.ends_with('\n'), "{desc:?}");
        let call = format!("tls-selects-{version:?}");
        let expect = format!("X-Expect: {}\r\n", desc.trim_end());
        let req = request(
            "OPTIONS",
            "sip:x@127.0.0.1",
            "TLS 127.0.0.1:9",
            &call,
            &expect,
            "",
        );
        send(&mut s, &req).await;
        let mut buf = Vec::new();
        let r = read_message(&mut s, &mut buf, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
        assert_eq!(status(&r), Some(200), "{version:?}: {r}");
        for (name, want) in [
            ("X-Desc-Verbatim", "1"),
            ("X-Subject", "Bob"),
            ("X-Issuer", ca_cn.as_str()),
            ("X-Org", "Example Inc"),
            ("X-Version", "2"),
            ("X-Pv-Version", "2"),
            ("X-Pv-Subject", "/O=Example Inc/CN=Bob"),
            ("X-Verified", "1"),
            ("X-Revoked", "0"),
            ("X-My-Verified", "[]"),
            ("X-Email", "bob@example.com"),
            // `$tls_description` ends in a newline: append_to_reply refuses it.
            ("X-Raw-Appended", "-1"),
        ] {
            assert_eq!(header(&r, name), Some(want), "{version:?} {name}: {r}");
        }
        assert_eq!(header(&r, "X-Raw"), None, "{r}");
    }
    rt.shutdown();
}

/// A certificate value holding `/O=` (docs/script.md, `$tls_peer_subject`): the one-line DN
/// writes it as it is, so the line seems to hold two organisations, while the
/// single-attribute select reads the one the certificate has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_value_holding_a_slash_is_one_attribute() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let (rt, ca) = start_with_script(dir.path());
    let mallory = ca
        .issue(&Spec::client("Mallory").o("Mallory/O=Bank"))
        .write(&certs, "mallory");
    let tls_addr = rt.local_addr(siprox::proxy::Transport::Tls).unwrap();
    let mut s = tls_client(
        tls_addr,
        &certs.join("ca.pem"),
        Some((mallory.cert_path.as_path(), mallory.key_path.as_path())),
        SslVersion::TLS1_3,
    )
    .await;
    let req = request(
        "OPTIONS",
        "sip:x@127.0.0.1",
        "TLS 127.0.0.1:9",
        "slash",
        "",
        "",
    );
    send(&mut s, &req).await;
    let mut buf = Vec::new();
    let r = read_message(&mut s, &mut buf, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(header(&r, "X-Org"), Some("Mallory/O=Bank"), "{r}");
    assert_eq!(
        header(&r, "X-Pv-Subject"),
        Some("/O=Mallory/O=Bank/CN=Mallory"),
        "{r}"
    );
    rt.shutdown();
}
