//! The real `siprox` binary and the files in `certs/`: a start never overwrites or deletes a
//! key or certificate (a typo in `[tls] certificate` used to replace `certs/server.key`),
//! `siprox check` names what a start would generate, and a start error is printed once.
//! Must never depend on the caller's environment: SIPROX_ variables are cleared.
#![forbid(unsafe_code)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use siprox::config::TlsConfig;

fn siprox_cmd() -> Command {
    common::siprox_command()
}

/// Runs siprox with `args` until it exits (killed after 30 s: a start that should have
/// failed and serves instead must fail the test, not hang it): (exit code, stderr).
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("siprox-stderr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let path = dir.join(format!("{:?}.log", std::thread::current().id()));
    let file = std::fs::File::create(&path).expect("stderr file");
    let mut child = siprox_cmd()
        .args(args)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn siprox");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "siprox did not exit:\n{}",
                std::fs::read_to_string(&path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&path).expect("stderr");
    let _ = std::fs::remove_file(&path);
    (status.code(), stderr)
}

/// Every file under `dir` with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

/// `<dir>/conf.d/00-core.toml`: one TLS listener, dev certificates on, plus `tls_extra`.
fn conf(dir: &Path, tls_extra: &str) -> String {
    let conf = dir.join("conf.d");
    std::fs::create_dir_all(&conf).expect("conf.d");
    std::fs::write(
        conf.join("00-core.toml"),
        format!(
            "[[listen]]\nproto = \"tls\"\naddr = \"127.0.0.1:0\"\n[runtime]\nworkers = 1\n\
             [tls]\ngenerate_dev_certs = true\n{tls_extra}"
        ),
    )
    .expect("write conf");
    conf.to_string_lossy().into_owned()
}

/// The certificates a first start writes (the same function the start calls).
fn first_run(dir: &Path) {
    let cfg = TlsConfig {
        generate_dev_certs: true,
        ..TlsConfig::default()
    };
    siprox_actors::tls::ensure_dev_certs(&cfg, dir).expect("first run's certificates");
}

#[test]
fn a_typo_in_the_certificate_path_fails_the_start_and_changes_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = conf(dir.path(), "certificate = \"certs/sever.pem\"\n");
    first_run(dir.path());
    let before = tree(&dir.path().join("certs"));
    assert_eq!(before.len(), 6, "{:?}", before.keys());

    let (code, stderr) = run_to_exit(&["-c", &conf]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("[tls] certificate")
            && stderr.contains("certs/sever.pem does not exist")
            && stderr.contains("[tls] private_key")
            && stderr.contains("certs/server.key"),
        "the error must name the missing file, its key and the existing key:\n{stderr}"
    );
    assert_eq!(
        tree(&dir.path().join("certs")),
        before,
        "a key or certificate was written, replaced or removed"
    );

    // `check` says the same instead of "generated at start".
    let out = siprox_cmd()
        .args(["check", "-c", &conf])
        .output()
        .expect("check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("certs/sever.pem does not exist"), "{err}");
    assert_eq!(tree(&dir.path().join("certs")), before);
}

#[test]
fn check_names_every_file_a_start_would_generate_and_writes_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = conf(dir.path(), "");
    let out = siprox_cmd()
        .args(["check", "-c", &conf])
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("development certificates generated at start: "))
        .unwrap_or_else(|| panic!("no plan in:\n{stdout}"));
    for f in [
        "ca.key",
        "ca.pem",
        "server.key",
        "server.pem",
        "admin.key",
        "admin.pem",
    ] {
        assert!(line.contains(&format!("certs/{f}")), "{f}: {line}");
    }
    assert!(!dir.path().join("certs").exists(), "check wrote files");
    // Once they exist, nothing is to be generated and check says nothing about it.
    first_run(dir.path());
    let out = siprox_cmd()
        .args(["check", "-c", &conf])
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("development certificates"), "{stdout}");
}

#[test]
fn a_start_error_is_printed_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The port is taken: the start fails after logging is set up.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let conf = dir.path().join("conf.d");
    std::fs::create_dir_all(&conf).expect("conf.d");
    std::fs::write(
        conf.join("00-core.toml"),
        format!(
            "[[listen]]\nproto = \"tcp\"\naddr = \"127.0.0.1:{port}\"\n[runtime]\nworkers = 1\n"
        ),
    )
    .expect("write conf");
    let (code, stderr) = run_to_exit(&["-c", &conf.to_string_lossy()]);
    assert_eq!(code, Some(1), "{stderr}");
    let mentions = stderr
        .lines()
        .filter(|l| l.contains(&format!("127.0.0.1:{port}")))
        .count();
    assert_eq!(
        mentions, 1,
        "the start error is not printed once:\n{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("error: ") && l.contains("cannot listen on")),
        "{stderr}"
    );
}
