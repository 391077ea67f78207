//! TLS session resumption, probed with the OpenSSL command-line client (`openssl s_client
//! -sess_out/-sess_in`, a real resuming client): a returning client resumes on the domain
//! that issued its session, never on another tenant's (which would skip that tenant's
//! certificate and client-certificate policy), and `session_resumption = false` means
//! full handshakes. TLS 1.3 (tickets) and TLS 1.2 (tickets or session ids).

mod common;

use common::tree::Tree;
use siprox::proxy::Transport;
use siprox_actors::state::messages::ReloadOutcome;
use siprox_testkit::sclient::s_client;

/// Tenants on one listener: `a` and `b` resuming (the default), `c` not.
fn two_tenants() -> Tree {
    let t = Tree::new("");
    t.server_domain("a", "");
    t.server_domain("b", "");
    t.server_domain("c", "session_resumption = false\n");
    t
}

fn resumes_only_on_its_own_domain(version: &str) {
    let t = two_tenants();
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let sess = t.path("a.sess");

    let first = s_client(addr, "a.example", version, None, Some(&sess));
    assert!(first.served && !first.reused, "{first:?}");
    assert!(first.subject.contains("a.example"), "{first:?}");

    let again = s_client(addr, "a.example", version, Some(&sess), None);
    assert!(again.served, "{again:?}");
    assert!(again.reused, "a returning client resumes: {again:?}");

    // The same session offered to another tenant: a full handshake with that tenant's
    // certificate, never a resumption of a.example's session.
    let other = s_client(addr, "b.example", version, Some(&sess), None);
    assert!(other.served, "{other:?}");
    assert!(!other.reused, "a session crossed tenants: {other:?}");
    assert!(other.subject.contains("b.example"), "{other:?}");
    rt.shutdown();
}

#[test]
fn tls13_resumes_only_on_its_own_domain() {
    resumes_only_on_its_own_domain("-tls1_3");
}

#[test]
fn tls12_resumes_only_on_its_own_domain() {
    resumes_only_on_its_own_domain("-tls1_2");
}

#[test]
fn session_resumption_false_means_full_handshakes() {
    let t = two_tenants();
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = t.path(&format!("c{version}.sess"));
        let first = s_client(addr, "c.example", version, None, Some(&sess));
        assert!(first.served && !first.reused, "{version}: {first:?}");
        // s_client saves a session only when the server made it resumable (a ticket, or a
        // session id it caches); the other tests show it does save resumable ones.
        assert!(
            !sess.exists(),
            "{version}: siprox handed out a resumable session though resumption is off"
        );
    }
    rt.shutdown();
}

/// Turning `session_resumption` off by a reload also ends the sessions issued before.
#[test]
fn sessions_issued_before_resumption_was_turned_off_do_not_resume() {
    let t = two_tenants();
    let rt = t.start();
    let addr = rt.local_addr(Transport::Tls).expect("tls");
    let mut saved = Vec::new();
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = t.path(&format!("a{version}.sess"));
        let first = s_client(addr, "a.example", version, None, Some(&sess));
        assert!(first.served && !first.reused, "{version}: {first:?}");
        let again = s_client(addr, "a.example", version, Some(&sess), None);
        assert!(again.reused, "{version}: resumes while enabled: {again:?}");
        saved.push((version, sess));
    }
    t.domain(
        "a",
        "[domains.a]\n[domains.a.server]\nsni = [\"a.example\"]\n\
         certificate = \"certs/a.pem\"\nprivate_key = \"certs/a.key\"\n\
         session_resumption = false\n",
    );
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(rt.reload());
    assert!(
        matches!(&outcome, ReloadOutcome::Published { changed, .. } if changed.iter().any(|d| d == "a")),
        "{outcome:?}"
    );
    for (version, sess) in saved {
        let after = s_client(addr, "a.example", version, Some(&sess), None);
        assert!(after.served, "{version}: {after:?}");
        assert!(
            !after.reused,
            "{version}: an old session resumed: {after:?}"
        );
    }
    rt.shutdown();
}
