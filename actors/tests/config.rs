//! Integration tests of conf.d/ loading (the runtime's reads in `files`, the core's merge)
//! against real files in temporary directories.
//! Must never read or change the process environment: overrides go through `load_with_env`.
#![forbid(unsafe_code)]

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use siprox::config::{Config, ConfigErrors, LogFormat, Proto};
use siprox_actors::reload::files::load_with_env;

const CORE: &str = r#"
[[listen]]
proto = "udp"
addr = "127.0.0.1:5060"

[log]
level = "info"
"#;

fn write(dir: &Path, rel: &str, content: &str) -> PathBuf {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent dir");
    }
    fs::write(&path, content).expect("write config file");
    path
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn load_ok(dir: &Path) -> Config {
    match load_with_env(dir, no_env()) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid configuration, got:\n{e}"),
    }
}

fn load_err(dir: &Path) -> ConfigErrors {
    match load_with_env(dir, no_env()) {
        Ok(config) => panic!("expected errors, got:\n{}", config.summary()),
        Err(e) => e,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn later_files_override_earlier_ones_in_lexical_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Written in non-sorted order: the result must not depend on creation or listing order.
    write(dir.path(), "20-b.toml", "[log]\nlevel = \"trace\"\n");
    write(dir.path(), "00-core.toml", CORE);
    write(
        dir.path(),
        "10-a.toml",
        "[log]\nlevel = \"debug\"\nformat = \"json\"\n",
    );
    let config = load_ok(dir.path());
    assert_eq!(config.log.level, "trace");
    // Tables merge key by key: 20-b did not set format, 10-a's value stays.
    assert_eq!(config.log.format, LogFormat::Json);
    let names: Vec<_> = config
        .sources
        .iter()
        .map(|p| p.strip_prefix(dir.path()).expect("under dir").to_owned())
        .collect();
    assert_eq!(
        names,
        ["00-core.toml", "10-a.toml", "20-b.toml"].map(PathBuf::from)
    );
}

#[test]
fn listen_arrays_are_concatenated() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", CORE);
    write(
        dir.path(),
        "50-extra.toml",
        "[[listen]]\nproto = \"tls\"\naddr = \"[::1]:5061\"\nadvertise = \"sip.example.com:5061\"\n",
    );
    let config = load_ok(dir.path());
    let got: Vec<_> = config.listen.iter().map(|l| (l.proto, l.addr)).collect();
    assert_eq!(
        got,
        [
            (Proto::Udp, addr("127.0.0.1:5060")),
            (Proto::Tls, addr("[::1]:5061"))
        ]
    );
    assert_eq!(
        config.listen[1].advertise.as_ref().map(|a| a.to_string()),
        Some("sip.example.com:5061".to_owned())
    );
}

#[test]
fn unknown_key_error_names_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", CORE);
    let bad = write(dir.path(), "10-x.toml", "[[lisen]]\nproto = \"udp\"\n");
    let errors = load_err(dir.path());
    let text = errors.to_string();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(text.contains(&bad.display().to_string()), "{text}");
    assert!(text.contains("unknown key `lisen`"), "{text}");
    assert!(text.contains("at key \"lisen\""), "{text}");
}

#[test]
fn nested_unknown_key_is_blamed_on_its_own_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The typo is in the earlier file; a later file also touches [log]. Blaming the merged
    // table would name the wrong file.
    let bad = write(dir.path(), "00-core.toml", &format!("{CORE}lvel = \"x\"\n"));
    write(dir.path(), "10-x.toml", "[log]\nformat = \"json\"\n");
    let text = load_err(dir.path()).to_string();
    assert!(text.contains(&bad.display().to_string()), "{text}");
    assert!(!text.contains("10-x.toml"), "{text}");
    assert!(text.contains("at key \"log.lvel\""), "{text}");
}

#[test]
fn bad_proto_error_names_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", CORE);
    let bad = write(
        dir.path(),
        "10-x.toml",
        "[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:5070\"\n\n[[listen]]\nproto = \"sctp\"\naddr = \"127.0.0.1:5060\"\n",
    );
    let text = load_err(dir.path()).to_string();
    assert!(text.contains(&bad.display().to_string()), "{text}");
    assert!(text.contains("unknown value `sctp`"), "{text}");
    assert!(text.contains("udp, tcp, tls"), "{text}");
    // The index is the one inside that file.
    assert!(text.contains("at key \"listen[1].proto\""), "{text}");
}

#[test]
fn errors_in_several_files_are_all_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", CORE);
    let a = write(
        dir.path(),
        "10-a.toml",
        "[limits]\nmax_headers = \"many\"\n",
    );
    let b = write(dir.path(), "20-b.toml", "this is [not toml\n");
    let errors = load_err(dir.path());
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with(&a.display().to_string()), "{lines:?}");
    assert!(lines[0].contains("limits.max_headers"), "{lines:?}");
    assert!(lines[1].starts_with(&b.display().to_string()), "{lines:?}");
    assert!(lines[1].contains("TOML parse error"), "{lines:?}");
    // One error per line.
    assert_eq!(errors.to_string().lines().count(), 2);
}

#[test]
fn env_overrides_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", CORE);
    let env = [
        ("SIPROX_LOG__LEVEL", "debug"),
        ("SIPROX_LIMITS__MAX_HEADERS", "32"),
        ("SIPROX_CONFIG_DIR", "/ignored/here"),
        ("HOME", "/root"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let config = match load_with_env(dir.path(), env) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(config.log.level, "debug");
    assert_eq!(config.limits.max_headers, 32);
    assert_eq!(
        config.env_overrides,
        ["SIPROX_LIMITS__MAX_HEADERS", "SIPROX_LOG__LEVEL"]
    );
}

#[test]
fn bad_env_override_names_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", CORE);
    let env = [
        ("SIPROX_LOG__LEVL".to_owned(), "debug".to_owned()),
        ("SIPROX_LOG__LEVEL".to_owned(), "verbose".to_owned()),
    ];
    let text = match load_with_env(dir.path(), env) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.to_string(),
    };
    assert!(
        text.contains("environment variable SIPROX_LOG__LEVL: unknown key `levl`"),
        "{text}"
    );
    // Validation never ran (the unknown key stops loading), so only one error here;
    // a valid key with an invalid value is blamed on the variable by validation:
    let env = [("SIPROX_LOG__LEVEL".to_owned(), "verbose".to_owned())];
    let text = match load_with_env(dir.path(), env) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.to_string(),
    };
    assert!(
        text.contains("environment variable SIPROX_LOG__LEVEL: "),
        "{text}"
    );
    assert!(text.contains("at key \"log.level\""), "{text}");
}

#[test]
fn domains_folder_is_read_after_top_level_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "domains/b.toml",
        "[domains.b]\nnames = [\"b.example.com\"]\n",
    );
    write(
        dir.path(),
        "domains/a.toml",
        "[domains.a]\nnames = [\"a.example.com\"]\n[log]\nlevel = \"warn\"\n",
    );
    write(dir.path(), "00-core.toml", CORE);
    write(dir.path(), "90-late.toml", "[log]\nlevel = \"debug\"\n");
    let config = load_ok(dir.path());
    // domains/a.toml sorts after 90-late.toml, so its value wins.
    assert_eq!(config.log.level, "warn");
    assert_eq!(config.domains.len(), 2);
    assert_eq!(config.domains["a"].names, ["a.example.com"]);
    let rel: Vec<_> = config
        .sources
        .iter()
        .map(|p| p.strip_prefix(dir.path()).expect("under dir").to_owned())
        .collect();
    assert_eq!(
        rel,
        [
            "00-core.toml",
            "90-late.toml",
            "domains/a.toml",
            "domains/b.toml"
        ]
        .map(PathBuf::from)
    );
}

#[test]
fn unknown_key_in_domain_file_names_that_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", CORE);
    let bad = write(
        dir.path(),
        "domains/example.com.toml",
        "[domains.\"example.com\"]\nnames = [\"example.com\"]\ncert = \"x.pem\"\n",
    );
    let text = load_err(dir.path()).to_string();
    assert!(text.contains(&bad.display().to_string()), "{text}");
    assert!(
        text.contains("at key \"domains.'example.com'.cert\""),
        "{text}"
    );
}

#[test]
fn duplicate_listener_names_both_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let core = write(dir.path(), "00-core.toml", CORE);
    let dup = write(
        dir.path(),
        "10-dup.toml",
        "[[listen]]\nproto = \"tcp\"\naddr = \"127.0.0.1:5060\"\n[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:5060\"\n",
    );
    let errors = load_err(dir.path());
    let text = errors.to_string();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(text.starts_with(&format!("{}: ", dup.display())), "{text}");
    assert!(text.contains("at key \"listen[1]\""), "{text}");
    assert!(text.contains(&core.display().to_string()), "{text}");
    assert!(text.contains("udp 127.0.0.1:5060"), "{text}");
}

#[test]
fn invalid_limits_name_the_file_that_set_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", CORE);
    let bad = write(
        dir.path(),
        "10-limits.toml",
        "[limits]\nmax_message_size = 1000\n",
    );
    let text = load_err(dir.path()).to_string();
    // max_line_length (default 8192) now exceeds max_message_size, which 10-limits.toml set.
    assert!(text.contains(&bad.display().to_string()), "{text}");
    assert!(text.contains("limits.max_line_length"), "{text}");
}

#[test]
fn missing_directory_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.d");
    let text = load_err(&missing).to_string();
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert!(
        text.contains("cannot read configuration directory"),
        "{text}"
    );
}

#[test]
fn empty_directory_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "README.md", "nothing here");
    let text = load_err(dir.path()).to_string();
    assert!(text.contains("no *.toml configuration file"), "{text}");
}

#[test]
fn non_toml_files_dotfiles_and_backups_are_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "00-core.toml", CORE);
    // Each of these would be an error if read.
    for name in [
        "README.md",
        "10-x.toml~",
        ".10-x.toml.swp",
        ".hidden.toml",
        "#10-x.toml#",
        "10-x.toml.bak",
        "other/10-x.toml",
        "domains/notes.txt",
    ] {
        write(dir.path(), name, "garbage = [\n");
    }
    // A directory named like a config file is not a file.
    fs::create_dir_all(dir.path().join("dir.toml")).expect("mkdir");
    let config = load_ok(dir.path());
    assert_eq!(config.sources.len(), 1);
}

#[test]
fn same_files_give_the_same_config() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let files = [
        ("00-core.toml", CORE),
        (
            "10-a.toml",
            "[log]\nlevel = \"debug\"\n[[listen]]\nproto = \"tcp\"\naddr = \"127.0.0.1:5070\"\n",
        ),
        (
            "20-b.toml",
            "[log]\nlevel = \"warn\"\n[[listen]]\nproto = \"tcp\"\naddr = \"127.0.0.1:5080\"\n",
        ),
    ];
    for (name, content) in files {
        write(a.path(), name, content);
    }
    for (name, content) in files.iter().rev() {
        write(b.path(), name, content);
    }
    let (ca, cb) = (load_ok(a.path()), load_ok(b.path()));
    assert_eq!(ca.listen, cb.listen);
    assert_eq!(ca.log, cb.log);
    assert_eq!(ca.limits, cb.limits);
    assert_eq!(ca.listen.len(), 3);
    assert_eq!(ca.log.level, "warn");
}

#[test]
fn shipped_default_conf_d_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf.d");
    let config = load_ok(&dir);
    let got: Vec<_> = config.listen.iter().map(|l| (l.proto, l.addr)).collect();
    assert_eq!(
        got,
        [
            (Proto::Udp, addr("127.0.0.1:5060")),
            (Proto::Tcp, addr("127.0.0.1:5060")),
            (Proto::Tls, addr("127.0.0.1:5061")),
        ]
    );
    assert_eq!(config.limits, siprox::sip::Limits::default());
    assert_eq!(config.log.level, "info");
    assert_eq!(config.log.format, LogFormat::Text);
    assert!(config.domains.is_empty());
    let summary = config.summary();
    assert!(summary.contains("tls 127.0.0.1:5061"), "{summary}");
}

/// The README's figures name `benches/conf.d`: it must keep loading, with what they say.
#[test]
fn bench_conf_d_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/conf.d");
    let config = load_ok(&dir);
    let got: Vec<_> = config.listen.iter().map(|l| (l.proto, l.addr)).collect();
    assert_eq!(
        got,
        [
            (Proto::Udp, addr("127.0.0.1:25060")),
            (Proto::Tcp, addr("127.0.0.1:25060")),
            (Proto::Tls, addr("127.0.0.1:25061")),
        ]
    );
    assert_eq!(config.log.level, "warn");
    assert_eq!(config.connections.max_connections_per_ip, 0);
    assert!(
        config.script.file.is_none(),
        "the figures use the built-in route"
    );
}
