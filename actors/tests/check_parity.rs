//! `siprox check` and the start of the real `siprox` binary on the same conf.d: same verdict,
//! same error lines, for every check the runtime makes before it serves; and environments
//! that must not matter (unrelated `SIPROX_` variables, non-UTF-8 bytes). Must never depend on
//! the caller's environment (SIPROX_ variables are cleared) and never leave a siprox running.
#![forbid(unsafe_code)]

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn siprox_cmd(env: &[(&OsStr, &OsStr)]) -> Command {
    let mut cmd = common::siprox_command();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A conf.d under a fresh directory (the base of relative paths), with `files` written
/// (paths relative to the base, e.g. `conf.d/00-core.toml`, `users.toml`).
fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (rel, text) in files {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }
    let conf = dir.path().join("conf.d");
    (dir, conf)
}

const CORE: &str = "[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:0\"\n";

fn error_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.starts_with("error: "))
        .map(str::to_owned)
        .collect()
}

/// `siprox check -c conf`: exit code and error lines.
fn check(conf: &Path, env: &[(&OsStr, &OsStr)]) -> (Option<i32>, Vec<String>, String) {
    let out = siprox_cmd(env)
        .arg("check")
        .arg("-c")
        .arg(conf)
        .output()
        .expect("run siprox check");
    (
        out.status.code(),
        error_lines(&out.stderr),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A started `siprox -c conf`, killed when dropped.
struct Started {
    child: Child,
    log: PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Started {
    fn new(conf: &Path, env: &[(&OsStr, &OsStr)]) -> Started {
        let log = conf.with_file_name("start.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = siprox_cmd(env)
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn siprox");
        Started { child, log }
    }

    fn stderr(&self) -> Vec<u8> {
        std::fs::read(&self.log).unwrap_or_default()
    }

    /// Waits until the process exits (its code) or logs `listening` (None: it serves).
    fn outcome(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status.code().unwrap_or(-1));
            }
            if String::from_utf8_lossy(&self.stderr()).contains("listening") {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "siprox neither exited nor listened within 20 s:\n{}",
                String::from_utf8_lossy(&self.stderr())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

struct Case {
    name: &'static str,
    files: &'static [(&'static str, &'static str)],
    /// A fragment the (first) error line must contain.
    want: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "zero send timeout",
        files: &[("conf.d/10-x.toml", "[connections]\nsend_timeout = \"0s\"\n")],
        want: "conf.d/10-x.toml: must be greater than 0 at key \"connections.send_timeout\"",
    },
    Case {
        name: "write queue smaller than a message",
        files: &[("conf.d/10-x.toml", "[connections]\nmax_write_queue = 10\n")],
        want: "at key \"connections.max_write_queue\"",
    },
    Case {
        name: "unknown digest algorithm",
        files: &[("conf.d/10-x.toml", "[auth]\nalgorithms = [\"SHA-1\"]\n")],
        want: "conf.d/10-x.toml: `SHA-1` is not SHA-256, SHA-256-sess, MD5 or MD5-sess at key \"auth.algorithms\"",
    },
    Case {
        name: "too many workers",
        files: &[("conf.d/10-x.toml", "[runtime]\nworkers = 100000\n")],
        want: "at key \"runtime.workers\"",
    },
    Case {
        name: "missing management certificate",
        files: &[(
            "conf.d/10-mgmt.toml",
            "[management]\nenabled = true\nlisten = \"127.0.0.1:0\"\ncertificate = \"certs/nope.pem\"\n",
        )],
        want: "certs/nope.pem: cannot read: No such file or directory (os error 2) (set by ",
    },
    Case {
        name: "bad management allow entry",
        files: &[(
            "conf.d/10-mgmt.toml",
            "[management]\nenabled = true\nlisten = \"127.0.0.1:0\"\nallow = [\"sha256:12\"]\n",
        )],
        want: "at key \"management.allow\"",
    },
    Case {
        name: "users file that does not parse",
        files: &[
            ("conf.d/10-x.toml", "[auth]\nusers_file = \"users.toml\"\n"),
            ("users.toml", "[[[\n"),
        ],
        want: "conf.d/10-x.toml: ",
    },
    Case {
        name: "missing users file",
        files: &[("conf.d/10-x.toml", "[auth]\nusers_file = \"nope.toml\"\n")],
        want: "nope.toml: No such file or directory (os error 2) at key \"auth.users_file\"",
    },
    Case {
        name: "missing secret file",
        files: &[("conf.d/10-x.toml", "[auth]\nsecret_file = \"nope.secret\"\n")],
        want: "at key \"auth.secret_file\"",
    },
    Case {
        name: "flow key file too short",
        files: &[
            ("conf.d/10-x.toml", "[auth]\nflow_key_file = \"flow.keys\"\n"),
            ("flow.keys", "short\n"),
        ],
        want: "at key \"auth.flow_key_file\"",
    },
    Case {
        name: "listen address this host does not have",
        // TEST-NET-1 (RFC 5737): never assigned to a host.
        files: &[(
            "conf.d/10-x.toml",
            "[[listen]]\nproto = \"tcp\"\naddr = \"192.0.2.1:5060\"\n",
        )],
        want: "conf.d/10-x.toml: cannot listen on tcp 192.0.2.1:5060: Cannot assign requested address (os error 99) at key \"listen[0].addr\"",
    },
    Case {
        name: "route script that does not compile",
        files: &[
            ("conf.d/10-x.toml", "[script]\nfile = \"route.cfg\"\n"),
            ("route.cfg", "route { this is not a script\n"),
        ],
        want: "route.cfg",
    },
    Case {
        name: "tenant certificate missing",
        files: &[(
            "conf.d/domains/a.toml",
            "[[listen]]\nproto = \"tls\"\naddr = \"127.0.0.1:0\"\n\
             [tls]\ndefault_server = false\n\
             [domains.'a.example']\nnames = [\"a.example\"]\n\
             [domains.'a.example'.server]\ncertificate = \"certs/a.pem\"\nprivate_key = \"certs/a.key\"\n",
        )],
        want: "certs/a.pem: cannot read: No such file or directory (os error 2) (set by ",
    },
];

#[test]
fn check_and_start_give_the_same_verdict_and_errors() {
    for case in CASES {
        let mut files = vec![("conf.d/00-core.toml", CORE)];
        files.extend_from_slice(case.files);
        let (_dir, conf) = tree(&files);
        let (code, check_errors, check_err) = check(&conf, &[]);
        assert_eq!(code, Some(1), "{}: check:\n{check_err}", case.name);
        assert!(
            check_errors.iter().any(|l| l.contains(case.want)),
            "{}: check errors lack {:?}:\n{check_err}",
            case.name,
            case.want
        );
        let mut started = Started::new(&conf, &[]);
        let start_code = started.outcome();
        let start_err = started.stderr();
        assert_eq!(
            start_code,
            Some(1),
            "{}: the start:\n{}",
            case.name,
            String::from_utf8_lossy(&start_err)
        );
        assert_eq!(
            error_lines(&start_err),
            check_errors,
            "{}: the start and check disagree",
            case.name
        );
    }
}

#[test]
fn one_run_reports_value_errors_and_pointed_file_errors_together() {
    let (_dir, conf) = tree(&[
        ("conf.d/00-core.toml", CORE),
        (
            "conf.d/10-x.toml",
            "[connections]\nsend_timeout = \"0s\"\n[auth]\nusers_file = \"nope.toml\"\n",
        ),
    ]);
    let (code, errors, all) = check(&conf, &[]);
    assert_eq!(code, Some(1), "{all}");
    assert!(
        errors
            .iter()
            .any(|l| l.contains("connections.send_timeout"))
            && errors.iter().any(|l| l.contains("auth.users_file")),
        "{all}"
    );
    let mut started = Started::new(&conf, &[]);
    assert_eq!(started.outcome(), Some(1));
    assert_eq!(error_lines(&started.stderr()), errors);
}

#[test]
fn a_missing_tenant_certificate_names_the_file_and_key_that_point_to_it() {
    let case = CASES
        .iter()
        .find(|c| c.name == "tenant certificate missing")
        .expect("case");
    let mut files = vec![("conf.d/00-core.toml", CORE)];
    files.extend_from_slice(case.files);
    let (_dir, conf) = tree(&files);
    let (_, errors, all) = check(&conf, &[]);
    let want = format!(
        "(set by {} at key \"domains.'a.example'.server.certificate\")",
        conf.join("domains/a.toml").display()
    );
    assert!(errors.iter().any(|l| l.contains(&want)), "{want}\n{all}");
}

#[test]
fn unrelated_and_non_utf8_variables_neither_stop_check_nor_the_start() {
    let (_dir, conf) = tree(&[("conf.d/00-core.toml", CORE)]);
    let raw = OsStr::from_bytes(b"caf\xff");
    let envs: [&[(&OsStr, &OsStr)]; 3] = [
        &[(OsStr::new("SIPROX_HOME"), OsStr::new("/x"))],
        &[(OsStr::new("SOME_TOOL_DIR"), raw)],
        &[(OsStr::from_bytes(b"X\xffY"), OsStr::new("1"))],
    ];
    for env in envs {
        let (code, errors, all) = check(&conf, env);
        assert_eq!(code, Some(0), "{env:?}: {errors:?}\n{all}");
        let mut started = Started::new(&conf, env);
        assert_eq!(
            started.outcome(),
            None,
            "{env:?}: the start failed:\n{}",
            String::from_utf8_lossy(&started.stderr())
        );
    }
    // SIPROX_HOME is named once, by check and by the start's log.
    let home = [(OsStr::new("SIPROX_HOME"), OsStr::new("/x"))];
    let (_, _, all) = check(&conf, &home);
    assert_eq!(
        all.matches("ignored environment variable SIPROX_HOME")
            .count(),
        1,
        "{all}"
    );
    assert!(all.starts_with("warning: "), "{all}");
    let mut started = Started::new(&conf, &home);
    assert_eq!(started.outcome(), None);
    let log = String::from_utf8_lossy(&started.stderr()).into_owned();
    assert!(
        log.contains("WARN") && log.contains("ignored environment variable SIPROX_HOME"),
        "{log}"
    );
}

#[test]
fn check_print_shows_each_value_with_its_origin() {
    let (_dir, conf) = tree(&[
        (
            "conf.d/00-core.toml",
            "[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:0\"\n[auth]\nalgorithms = [\"SHA-256\", \"MD5\"]\n",
        ),
        ("conf.d/50-baresip.toml", "[auth]\nalgorithms = [\"MD5\"]\n"),
    ]);
    let out = siprox_cmd(&[(OsStr::new("SIPROX_LOG__LEVEL"), OsStr::new("debug"))])
        .args(["check", "--print", "-c"])
        .arg(&conf)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let line = |start: &str| {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start:?} in:\n{text}"))
    };
    assert!(line("algorithms = [\"MD5\"]")
        .ends_with(&format!("# {}", conf.join("50-baresip.toml").display())));
    assert!(line("level = \"debug\"").ends_with("# environment variable SIPROX_LOG__LEVEL"));
    assert!(line("nonce_ttl =").ends_with("# default"));
}

#[test]
fn a_drop_in_with_listen_replace_replaces_the_listeners_and_check_print_shows_it() {
    // README: `[[listen]]` entries are appended; a file that sets `listen_replace = true`
    // replaces every earlier entry with its own.
    let core = "[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:0\"\n";
    let tcp = "[[listen]]\nproto = \"tcp\"\naddr = \"127.0.0.1:0\"\n";
    let print = |files: &[(&str, &str)]| {
        let (_dir, conf) = tree(files);
        let out = siprox_cmd(&[])
            .args(["check", "--print", "-c"])
            .arg(&conf)
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(0), "{text}");
        text
    };
    let appended = print(&[("conf.d/00-core.toml", core), ("conf.d/50-tcp.toml", tcp)]);
    assert!(appended.contains("proto = \"udp\""), "{appended}");
    assert!(appended.contains("proto = \"tcp\""), "{appended}");
    let replacing = format!("listen_replace = true\n{tcp}");
    let replaced = print(&[
        ("conf.d/00-core.toml", core),
        ("conf.d/50-tcp.toml", &replacing),
    ]);
    assert!(!replaced.contains("proto = \"udp\""), "{replaced}");
    assert!(replaced.contains("proto = \"tcp\""), "{replaced}");
}
