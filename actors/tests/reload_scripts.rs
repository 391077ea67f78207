//! A route script and a certificate changed together reach the hot path together: the
//! `DomainRegistry` has the `Script` actor compile the script, then publishes TLS domains
//! and scripts in one snapshot store; a script that does not compile keeps the new
//! certificate out too. Real files, a real runtime; must never depend on timing (no
//! watcher, no periodic check: reloads are asked for).

use std::path::Path;
use std::sync::Arc;

use siprox_actors::state::messages::ReloadOutcome;
use siprox_actors::{Runtime, RuntimeHandle, RuntimeOptions, Snapshot};

const GOOD: &str = "route { forward(); }\n";
const GOOD_WITH_ROUTE: &str = "route { route(EXTRA); forward(); }\nroute[EXTRA] { }\n";
const BROKEN: &str = "route { no_such_function(); }\n";

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

fn start(dir: &Path) -> RuntimeHandle {
    write(
        dir,
        "conf.d/00-core.toml",
        "[[listen]]\nproto = \"tls\"\naddr = \"127.0.0.1:0\"\n\n\
         [runtime]\nworkers = 1\n\n\
         [script]\nfile = \"scripts/main.cfg\"\n\n\
         [tls]\ngenerate_dev_certs = true\nwatch = false\nreload_check_interval = \"0s\"\n",
    );
    write(dir, "scripts/main.cfg", GOOD);
    let config =
        siprox_actors::reload::files::load(&dir.join("conf.d")).expect("valid configuration");
    Runtime::start(config, RuntimeOptions::embedded(dir)).expect("starts")
}

/// A new server certificate for the default domain, signed by the same development CA.
fn rotate_certificate(dir: &Path) {
    let c = dir.join("certs");
    siprox_actors::tls::generate_dev_certs(
        &c.join("ca.pem"),
        &c.join("ca.key"),
        &c.join("server.pem"),
        &c.join("server.key"),
    )
    .expect("certificates");
}

fn cert_digest(s: &Snapshot) -> u64 {
    s.tls
        .default_server
        .as_ref()
        .expect("default domain")
        .ctx
        .digest
}

fn script_of(s: &Snapshot) -> String {
    format!("{:?}", s.scripts.default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_and_a_certificate_publish_in_one_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = start(dir.path());
    let before = rt.snapshot();
    let published = rt.tls_status().published;

    write(dir.path(), "scripts/main.cfg", GOOD_WITH_ROUTE);
    rotate_certificate(dir.path());
    match rt.reload().await {
        ReloadOutcome::Published { changed, .. } => {
            assert_eq!(changed, vec!["default".to_owned()], "the rotated domain")
        }
        other => panic!("expected a published reload, got {other:?}"),
    }
    let after = rt.snapshot();
    assert_eq!(
        rt.tls_status().published,
        published + 1,
        "one store for both"
    );
    assert_ne!(cert_digest(&after), cert_digest(&before), "new certificate");
    assert_ne!(script_of(&after), script_of(&before), "new script");
    assert!(script_of(&after).contains("EXTRA"), "{}", script_of(&after));

    // A script that does not compile refuses the whole candidate: the certificate rotated
    // with it is not published either, and the running snapshot is the same one.
    write(dir.path(), "scripts/main.cfg", BROKEN);
    rotate_certificate(dir.path());
    match rt.reload().await {
        ReloadOutcome::Failed { errors } => {
            assert!(
                errors.iter().any(|e| e.contains("main.cfg:1")),
                "the error names file and line: {errors:?}"
            )
        }
        other => panic!("expected a refused reload, got {other:?}"),
    }
    assert!(Arc::ptr_eq(&rt.snapshot(), &after), "nothing half-applied");

    // Fixed again: the certificate of the refused attempt comes in with the script.
    write(dir.path(), "scripts/main.cfg", GOOD);
    assert!(matches!(rt.reload().await, ReloadOutcome::Published { .. }));
    let fixed = rt.snapshot();
    assert_ne!(cert_digest(&fixed), cert_digest(&after));
    assert_eq!(script_of(&fixed), script_of(&before));
    rt.shutdown();
}

/// Each kind of refused reload names its input in the RPC's last error: a conf.d file and
/// key (`configuration:`), a script file:line:col under whose script it is (`[script] file`,
/// or its domain), never a made-up domain such as `config` or `script`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reloads_name_file_and_key_or_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = start(dir.path());
    let failed = |o: ReloadOutcome| match o {
        ReloadOutcome::Failed { errors } => errors,
        other => panic!("expected a refused reload, got {other:?}"),
    };

    write(
        dir.path(),
        "conf.d/20-typo.toml",
        "[runtime]\nwrokers = 2\n",
    );
    let errors = failed(rt.reload().await);
    assert!(
        errors.iter().any(|e| e.starts_with("configuration: ")
            && e.contains("20-typo.toml")
            && e.contains("wrokers")),
        "{errors:?}"
    );
    let last = format!("{:?}", rt.tls_status().last_error);
    assert!(last.contains("20-typo.toml"), "{last}");
    std::fs::remove_file(dir.path().join("conf.d/20-typo.toml")).expect("rm");

    write(
        dir.path(),
        "scripts/main.cfg",
        "route {\n  no_such_function();\n}\n",
    );
    let errors = failed(rt.reload().await);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("[script] file: ") && e.contains("main.cfg:2:3")),
        "{errors:?}"
    );
    assert!(
        !errors.iter().any(|e| e.contains("domain `")),
        "no made-up domain: {errors:?}"
    );

    write(dir.path(), "scripts/main.cfg", GOOD);

    // A flow-token key file that does not load names the setting and its file, under no
    // made-up domain (it was "domain `auth`").
    write(dir.path(), "var/flow.key", "not a key\n");
    write(
        dir.path(),
        "conf.d/30-keys.toml",
        "[auth]\nflow_key_file = \"var/flow.key\"\n",
    );
    let errors = failed(rt.reload().await);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("[auth] flow_key_file") && e.contains("flow.key")),
        "{errors:?}"
    );
    assert!(
        !errors.iter().any(|e| e.contains("domain `")),
        "no made-up domain: {errors:?}"
    );
    std::fs::remove_file(dir.path().join("conf.d/30-keys.toml")).expect("rm");

    // Back to what runs: nothing to publish, nothing refused.
    assert_eq!(rt.reload().await, ReloadOutcome::Unchanged);
    rt.shutdown();
}
