//! siproxctl as an operator meets it: a real siprox (in-process) whose management listener
//! uses the development certificates it generated, and the real `siproxctl` binary run from
//! another directory. Covers where siproxctl finds its certificates (or the hint naming the
//! options and files when it cannot), kamctl-style aliases, `(none)` for empty results,
//! `tls domains` within 100 columns, and `--json` for every command. Every wait is bounded.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common as rc;
use serde_json::Value;
use siprox::config::{DomainConfig, ManagementConfig, Proto, ServerTls};
use siprox_actors::RuntimeHandle;

const CTL: &str = env!("CARGO_BIN_EXE_siproxctl");

struct Node {
    _rt: RuntimeHandle,
    url: String,
    /// Beside `certs/`, as a deployment's conf.d is.
    conf_dir: PathBuf,
    certs: PathBuf,
    /// Where siproxctl runs from: not the siprox directory, no `certs/` in it.
    elsewhere: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start() -> Node {
        Node::start_with_tenants(&[])
    }

    /// [`Node::start`] plus tenant server domains named `tenants`, each with many SNI names
    /// and its files deep under `certs/tenants/` (what makes a wide table).
    fn start_with_tenants(tenants: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("tmp");
        let mut config = rc::config(&[Proto::Tls]);
        // The first start's development certificates, made before it so that the tenants
        // can use copies of them.
        siprox_actors::tls::ensure_dev_certs(&config.tls, dir.path()).expect("dev certs");
        for t in tenants {
            let d = dir
                .path()
                .join("certs/tenants")
                .join(t)
                .join("..2026_12_04_18_00_00");
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::copy(dir.path().join("certs/server.pem"), d.join("tls.crt")).expect("cp");
            std::fs::copy(dir.path().join("certs/server.key"), d.join("tls.key")).expect("cp");
            config.domains.insert(
                (*t).to_owned(),
                DomainConfig {
                    names: vec![
                        (*t).to_owned(),
                        format!("sip.{t}"),
                        format!("pbx.{t}"),
                        format!("*.customers.{t}"),
                    ],
                    server: Some(ServerTls {
                        certificate: d.join("tls.crt"),
                        private_key: d.join("tls.key"),
                        ..ServerTls::default()
                    }),
                    ..DomainConfig::default()
                },
            );
        }
        // The default conf.d's management: the development certificates, CN=admin allowed.
        config.management = ManagementConfig {
            enabled: true,
            listen: "127.0.0.1:0".parse().expect("addr"),
            allow: vec!["admin".to_owned()],
            ..ManagementConfig::default()
        };
        let rt = rc::start(config, dir.path());
        let url = format!("https://{}", rt.management_addr().expect("management"));
        let certs = dir.path().join("certs");
        assert!(certs.join("admin.pem").exists(), "no development admin.pem");
        Node {
            _rt: rt,
            url,
            conf_dir: dir.path().join("conf.d"),
            certs,
            elsewhere: tempfile::tempdir().expect("tmp"),
            _dir: dir,
        }
    }

    /// siproxctl `args` in the `elsewhere` directory, with a clean environment.
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(CTL)
            .env_clear()
            .env("HOME", self.elsewhere.path())
            .current_dir(self.elsewhere.path())
            .args(["--url", &self.url, "--timeout", "5"])
            .args(args)
            .output()
            .expect("siproxctl runs")
    }

    /// siproxctl with `--conf-dir` pointing at siprox's configuration; asserts success and
    /// returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let mut a = vec!["--conf-dir", self.conf_dir.to_str().expect("utf-8 path")];
        a.extend_from_slice(args);
        let out = self.ctl(&a);
        assert!(out.status.success(), "siproxctl {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn from_another_directory_it_says_which_flags_and_files_it_needs() {
    let node = Node::start();
    let here = node.elsewhere.path().join("certs");

    // Nothing to find: the server's certificate does not verify against the system store.
    let out = node.ctl(&["version"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(err.contains("did not verify"), "{err}");
    assert!(
        err.contains("hint:") && err.contains("--ca FILE") && err.contains("--conf-dir"),
        "{err}"
    );
    assert!(err.contains(s(&here.join("ca.pem"))), "{err}");

    // The CA, and no client certificate: the hint turns to --cert/--key.
    let ca = node.certs.join("ca.pem");
    let out = node.ctl(&["--ca", s(&ca), "version"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        err.contains("--cert FILE --key FILE") && err.contains("Certificate used: none"),
        "{err}"
    );
    assert!(err.contains(s(&here.join("admin.pem"))), "{err}");

    // Told where siprox's configuration is (option or SIPROX_CONFIG_DIR): it finds
    // ../certs/admin.pem, admin.key and ca.pem there.
    let out = node.ok(&["version"]);
    assert!(out.contains("siprox"), "{out}");
    let out = Command::new(CTL)
        .env_clear()
        .env("HOME", node.elsewhere.path())
        .env("SIPROX_CONFIG_DIR", &node.conf_dir)
        .current_dir(node.elsewhere.path())
        .args(["--url", &node.url, "--timeout", "5", "uptime"])
        .output()
        .expect("siproxctl runs");
    assert!(out.status.success(), "{}", text(&out));

    // A settings file's relative paths are relative to the file, not the working directory.
    let settings_dir = node.elsewhere.path().join("cfg");
    std::fs::create_dir_all(&settings_dir).expect("mkdir");
    for f in ["admin.pem", "admin.key", "ca.pem"] {
        std::fs::copy(node.certs.join(f), settings_dir.join(f)).expect("copy");
    }
    let settings = settings_dir.join("siproxctl.toml");
    std::fs::write(
        &settings,
        "cert = \"admin.pem\"\nkey = \"admin.key\"\nca = \"ca.pem\"\n",
    )
    .expect("write");
    let out = node.ctl(&["--config", s(&settings), "version"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn aliases_empty_results_and_json() {
    let node = Node::start();
    // kamctl's `ul show` (no AOR) and `ul list`: no registrations is "(none)", not a blank.
    for cmd in [&["ul", "list"][..], &["ul", "show"], &["ul", "dump"]] {
        let out = node.ok(cmd);
        assert_eq!(out.trim_end(), "(none)", "{cmd:?}");
    }
    let out = node.ok(&["tls", "list"]);
    assert_eq!(out.trim_end(), "(none)", "no TLS connection yet");

    // --json prints the raw RPC result for every command.
    for cmd in [
        &["version"][..],
        &["uptime"],
        &["stats"],
        &["tls", "list"],
        &["tls", "info"],
        &["tls", "domains"],
        &["tcp", "list"],
        &["ul", "list"],
        &["methods"],
        &["core.uptime"],
    ] {
        let mut a = vec!["--json"];
        a.extend_from_slice(cmd);
        let out = node.ok(&a);
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{cmd:?}: not JSON ({e}):\n{out}"));
        assert!(!v.is_null(), "{cmd:?}");
    }
    let v: Value = serde_json::from_str(&node.ok(&["--json", "ul", "list"])).expect("json");
    assert_eq!(v, serde_json::json!([]));
}

#[test]
fn tls_domains_fit_a_100_column_terminal() {
    let node = Node::start_with_tenants(&[
        "a-rather-long-customer-domain-name.example.org",
        "example.com",
    ]);
    let json: Value = serde_json::from_str(&node.ok(&["--json", "tls", "domains"])).expect("json");
    let n = json.as_array().expect("an array of domains").len();
    assert!(n >= 2, "{json}");
    let out = node.ok(&["tls", "domains"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        n + 1,
        "a header and one line per domain:\n{out}"
    );
    for l in &lines {
        assert!(
            l.chars().count() <= 100,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    assert!(
        lines[0].starts_with("DOMAIN") && lines[0].contains("EXPIRES"),
        "{out}"
    );
    // The essentials: each domain, its side, names, expiry date and state.
    // "Jan  5 12:00:00 2028 GMT": the table shows the date as 2028-01-05.
    let year = json
        .as_array()
        .and_then(|a| a.iter().find(|d| d["name"] == "example.com"))
        .and_then(|d| d["not_after"].as_str())
        .and_then(|t| t.split_whitespace().rev().nth(1).map(str::to_owned))
        .expect("example.com's not_after");
    let line = lines
        .iter()
        .find(|l| l.starts_with("example.com "))
        .unwrap_or_else(|| panic!("no example.com line:\n{out}"));
    assert!(
        line.contains("server") && line.contains("example.com,sip.") && line.ends_with("ok"),
        "{out}"
    );
    assert!(line.contains(&format!(" {year}-")), "{year}: {out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("a-rather-long-customer")),
        "{out}"
    );
}

/// A certificate path that is not UTF-8 is an error naming it, not a panic (the openssl
/// crate hands OpenSSL paths as C strings made from `&str`). No server is needed: the
/// files are checked before connecting.
#[test]
fn a_path_that_is_not_utf8_is_an_error() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt as _;
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join(OsStr::from_bytes(b"ca-\xff.pem"));
    std::fs::write(&bad, b"not used").expect("write");
    for flag in ["--ca", "--cert"] {
        let out = Command::new(CTL)
            .env_clear()
            .env("HOME", dir.path())
            .current_dir(dir.path())
            .args(["--url", "https://127.0.0.1:1/", "--timeout", "5"])
            .arg(flag)
            .arg(&bad)
            .arg("version")
            .output()
            .expect("siproxctl runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{flag}: {}", text(&out));
        assert!(err.contains("not a UTF-8 path"), "{flag}: {}", text(&out));
        assert!(!out.status.success(), "{flag}: {}", text(&out));
    }
}
