//! `[tls] expiry_warning_days`: a certificate about to expire is warned about at start,
//! when a reload rebuilds its domain, and once a day; not on every check that changes
//! nothing (with many tenants that would be a line per certificate per minute).

use std::path::Path;
use std::time::Duration;

use siprox_actors::state::messages::ReloadOutcome;
use siprox_actors::{Runtime, RuntimeOptions};
use siprox_testkit::assert_eventually;
use siprox_testkit::pki::{self, Ca, Spec};

const WARNING: &str = "TLS certificate expires soon";

fn expiry_warnings(domain: &str) -> usize {
    siprox_testkit::logs::at_least(tracing::Level::WARN)
        .iter()
        .filter(|e| e.text.contains(WARNING) && e.text.contains(&format!("domain={domain}")))
        .count()
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_certificate_is_warned_about_at_start_and_on_rebuild_only() {
    assert!(siprox_testkit::logs::install(), "log capture installed");
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    let ca = Ca::new("expiry test CA");
    ca.write(&certs, "ca");
    let soon = |cn| Spec::server(cn).no_san().valid_days(-1, 2);
    ca.issue(&soon("soon.example")).write(&certs, "soon");
    ca.issue(&Spec::server("localhost")).write(&certs, "later");
    write(
        dir.path(),
        "conf.d/00-core.toml",
        "[[listen]]\nproto = \"tls\"\naddr = \"127.0.0.1:0\"\n\
         [tls]\ncertificate = \"certs/later.pem\"\nprivate_key = \"certs/later.key\"\n\
         expiry_warning_days = 30\nwatch = false\nreload_check_interval = \"0s\"\n",
    );
    write(
        dir.path(),
        "conf.d/domains/soon.toml",
        "[domains.soon]\n[domains.soon.server]\nsni = [\"soon.example\"]\n\
         certificate = \"certs/soon.pem\"\nprivate_key = \"certs/soon.key\"\n",
    );
    let config = siprox_actors::reload::files::load(&dir.path().join("conf.d")).expect("config");
    let rt = Runtime::start(config, RuntimeOptions::embedded(dir.path())).expect("starts");

    // At start: once.
    assert_eventually!(expiry_warnings("soon") == 1, Duration::from_secs(5));
    // Checks that change nothing: no more.
    for _ in 0..3 {
        assert_eq!(rt.reload().await, ReloadOutcome::Unchanged);
    }
    // A reload that rebuilds another domain: not this one's warning again.
    ca.issue(&Spec::server("localhost")).write(&certs, "other");
    write(
        dir.path(),
        "conf.d/domains/other.toml",
        "[domains.other]\n[domains.other.server]\nsni = [\"other.example\"]\n\
         certificate = \"certs/other.pem\"\nprivate_key = \"certs/other.key\"\n",
    );
    assert!(matches!(rt.reload().await, ReloadOutcome::Published { .. }));
    assert_eq!(expiry_warnings("soon"), 1);
    // Its own certificate replaced by another about to expire: warned about again.
    ca.issue(&soon("soon-2.example")).write(&certs, "soon");
    match rt.reload().await {
        ReloadOutcome::Published { changed, .. } => assert!(changed.iter().any(|d| d == "soon")),
        other => panic!("expected `soon` rebuilt, got {other:?}"),
    }
    assert_eq!(expiry_warnings("soon"), 2);
    assert_eq!(expiry_warnings("default"), 0);
    rt.shutdown();
}

const SELF_SIGNED: &str = "TLS certificate is self-signed";

fn self_signed_warnings(domain: &str) -> Vec<String> {
    siprox_testkit::logs::at_least(tracing::Level::WARN)
        .into_iter()
        .filter(|e| e.text.contains(SELF_SIGNED) && e.text.contains(&format!("domain={domain}")))
        .map(|e| e.text)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_tenant_certificate_is_warned_about_at_start_and_reload_and_an_expired_one_refused(
) {
    assert!(siprox_testkit::logs::install(), "log capture installed");
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    let ca = Ca::new("self-signed test CA");
    ca.write(&certs, "ca");
    // Far from expiry: the other test counts this binary's expiry warnings.
    ca.issue(&Spec::server("localhost").valid_days(-1, 300))
        .write(&certs, "server");
    // A tenant's "certificate" made with `openssl req -x509`.
    pki::self_signed(&Spec::server("a.example")).write(&certs, "tenant-a");
    write(
        dir.path(),
        "conf.d/00-core.toml",
        "[[listen]]\nproto = \"tls\"\naddr = \"127.0.0.1:0\"\n\
         [tls]\ncertificate = \"certs/server.pem\"\nprivate_key = \"certs/server.key\"\n\
         watch = false\nreload_check_interval = \"0s\"\n",
    );
    let tenant = |name: &str| {
        format!(
            "[domains.{name}]\n[domains.{name}.server]\nsni = [\"{name}.example\"]\n\
             certificate = \"certs/tenant-{name}.pem\"\nprivate_key = \"certs/tenant-{name}.key\"\n"
        )
    };
    write(dir.path(), "conf.d/domains/a.toml", &tenant("a"));
    let config = siprox_actors::reload::files::load(&dir.path().join("conf.d")).expect("config");
    let rt = Runtime::start(config, RuntimeOptions::embedded(dir.path())).expect("starts");

    // At start: one line, naming the domain and the file.
    assert_eventually!(self_signed_warnings("a").len() == 1, Duration::from_secs(5));
    let line = &self_signed_warnings("a")[0];
    assert!(line.contains("tenant-a.pem"), "{line}");
    // The CA-issued default certificate: no such line.
    assert!(self_signed_warnings("default").is_empty());
    assert_eq!(rt.reload().await, ReloadOutcome::Unchanged);
    assert_eq!(self_signed_warnings("a").len(), 1);

    // A reload that adds a self-signed tenant: one line for it, none again for `a`.
    pki::self_signed(&Spec::server("b.example")).write(&certs, "tenant-b");
    write(dir.path(), "conf.d/domains/b.toml", &tenant("b"));
    assert!(matches!(rt.reload().await, ReloadOutcome::Published { .. }));
    let b = self_signed_warnings("b");
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(b[0].contains("tenant-b.pem"), "{b:?}");
    assert_eq!(self_signed_warnings("a").len(), 1);

    // An expired one is not accepted at all: that tenant is left out (the others apply),
    // and the refusal names domain and file.
    ca.issue(&Spec::server("c.example").expired())
        .write(&certs, "tenant-c");
    write(dir.path(), "conf.d/domains/c.toml", &tenant("c"));
    match rt.reload().await {
        ReloadOutcome::Published { refused, .. } => assert!(
            refused.iter().any(|e| e.contains("domain `c`")
                && e.contains("tenant-c.pem")
                && e.contains("expired")),
            "{refused:?}"
        ),
        other => panic!("an expired certificate was accepted: {other:?}"),
    }
    assert!(rt.snapshot().tls.servers.iter().all(|d| &*d.name != "c"));
    rt.shutdown();
}
