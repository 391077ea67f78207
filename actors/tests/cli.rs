//! Tests of the real `siprox` binary: exit codes and output of `siprox check` and of the run
//! path. Must never depend on the caller's environment: SIPROX_ variables are cleared.
#![forbid(unsafe_code)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn siprox_cmd() -> Command {
    common::siprox_command()
}

fn siprox(args: &[&str]) -> Output {
    siprox_cmd().args(args).output().expect("run siprox")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write config file");
    path
}

const GOOD: &str = r#"
[[listen]]
proto = "udp"
addr = "127.0.0.1:5060"
"#;

fn default_conf_d() -> PathBuf {
    // actors/ is one level below the workspace root, where conf.d/ lives.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("conf.d")
}

#[test]
fn check_good_config_prints_summary_and_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", GOOD);
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let out = siprox(&["check", "-c", &dir_arg]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("udp 127.0.0.1:5060"), "{stdout}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn check_unknown_key_exits_1_naming_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", GOOD);
    let bad = write(dir.path(), "10-x.toml", "[log]\nlevle = \"debug\"\n");
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let out = siprox(&["check", "-c", &dir_arg]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
    assert!(stderr.contains("at key \"log.levle\""), "{stderr}");
}

#[test]
fn check_reports_every_error_one_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", GOOD);
    write(dir.path(), "10-a.toml", "lisen = 1\n");
    write(dir.path(), "20-b.toml", "[limits]\nmax_headers = -1\n");
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let out = siprox(&["check", "-c", &dir_arg]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines.iter().all(|l| l.starts_with("error: ")), "{stderr}");
    assert!(
        lines[0].contains("10-a.toml") && lines[0].contains("lisen"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("20-b.toml") && lines[1].contains("max_headers"),
        "{stderr}"
    );
}

#[test]
fn check_refuses_transaction_timers_that_make_no_sense() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", GOOD);
    let bad = write(
        dir.path(),
        "10-tm.toml",
        "[transactions]\nt1 = \"0ms\"\nmax_transactions = 0\n",
    );
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let out = siprox(&["check", "-c", &dir_arg]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("transactions.t1"), "{stderr}");
    assert!(stderr.contains("transactions.max_transactions"), "{stderr}");
    assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
    // Sensible values pass.
    write(
        dir.path(),
        "10-tm.toml",
        "[transactions]\nt1 = \"100ms\"\nt2 = \"2s\"\nmax_transactions = 5000\n",
    );
    let out = siprox(&["check", "-c", &dir_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn check_missing_dir_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.d");
    let out = siprox(&["check", "-c", &missing.to_string_lossy()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("nope.d"), "{stderr}");
}

#[test]
fn config_dir_from_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", GOOD);
    let out = siprox_cmd()
        .arg("check")
        .env("SIPROX_CONFIG_DIR", dir.path())
        .output()
        .expect("run siprox");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn repo_default_conf_d_passes_check() {
    let dir = default_conf_d();
    let out = siprox(&["check", "-c", &dir.to_string_lossy()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for l in [
        "udp 127.0.0.1:5060",
        "tcp 127.0.0.1:5060",
        "tls 127.0.0.1:5061",
    ] {
        assert!(stdout.contains(l), "{l} missing in:\n{stdout}");
    }
}

#[test]
fn run_serves_until_sigterm_then_exits_0() {
    use std::io::BufRead as _;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("conf.d");
    std::fs::create_dir(&conf).expect("conf.d");
    write(
        &conf,
        "00-core.toml",
        "[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:0\"\n\
         [[listen]]\nproto = \"tls\"\naddr = \"127.0.0.1:0\"\n\
         [runtime]\nworkers = 1\n[tls]\ngenerate_dev_certs = true\n",
    );
    let mut child = siprox_cmd()
        .arg("-c")
        .arg(&conf)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn siprox");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log.contains("transport=TLS") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("siprox did not report listening:\n{log}");
            }
        }
    }
    // Relative [tls] paths live beside conf.d, not in the working directory.
    assert!(dir.path().join("certs/server.pem").exists(), "{log}");
    assert!(log.contains("DEVELOPMENT TLS CERTIFICATES"), "{log}");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("siprox did not exit after SIGTERM:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn run_with_bad_config_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "00-core.toml",
        "[[listen]]\nproto = \"sctp\"\naddr = \"127.0.0.1:5060\"\n",
    );
    let out = siprox(&["-c", &dir.path().to_string_lossy()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("sctp"),
        "{stderr}"
    );
    assert!(!stderr.contains("not implemented"), "{stderr}");
}

#[test]
fn version_flag_works() {
    let out = siprox(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("siprox "), "{stdout}");
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
}

/// TLS settings OpenSSL takes as C strings: a NUL in one (TOML `"\u0000"`) made the
/// openssl crate panic at start; a group OpenSSL does not know is named with the key.
#[test]
fn check_names_a_bad_tls_setting_without_panicking() {
    for (setting, expected) in [
        (
            r#"ciphers = "ECDHE\u0000RSA""#,
            "ciphers: contains a NUL character",
        ),
        (
            r#"ciphersuites = "TLS\u0000""#,
            "ciphersuites: contains a NUL character",
        ),
        (
            r#"groups = "X25519\u0000""#,
            "groups: contains a NUL character",
        ),
        (r#"groups = "X25519:ffdhe9""#, "groups `X25519:ffdhe9`"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "00-core.toml",
            &format!("{GOOD}[tls]\n{setting}\n"),
        );
        let dir_arg = dir.path().to_string_lossy().into_owned();
        for args in [vec!["check", "-c", &dir_arg], vec!["-c", &dir_arg]] {
            let out = siprox(&args);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?} {setting}: {stderr}");
            assert!(!stderr.contains("panicked"), "{args:?} {setting}: {stderr}");
            assert!(
                stderr.starts_with("error: domain `default`: client side: ")
                    && stderr.contains(expected)
                    && stderr.contains("(set in [tls])"),
                "{args:?} {setting}: {stderr}"
            );
        }
    }
    // A tenant's setting names the tenant's file.
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", GOOD);
    std::fs::create_dir(dir.path().join("domains")).expect("domains/");
    let tenant = write(
        &dir.path().join("domains"),
        "carrier.toml",
        "[domains.carrier.client]\nserver_names = [\"sbc.carrier.example\"]\n\
         groups = \"X25519:ffdhe9\"\n",
    );
    let out = siprox(&["check", "-c", &dir.path().to_string_lossy()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("domain `carrier`: client side: groups `X25519:ffdhe9`")
            && stderr.contains(&format!("(set in {})", tenant.display())),
        "{stderr}"
    );
}
