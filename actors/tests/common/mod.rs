//! The runtime tests' harness, on the test kit (`siprox_testkit`): siprox started
//! in-process on 127.0.0.1:0, from a typed configuration ([`config`], [`start`]), from a
//! conf.d tree in a temp dir ([`tree::Tree`]) or with the kit's PKI ([`inproc::Siprox`]),
//! and the development CA that signs client certificates. The one place the tests know the
//! runtime's in-process API. Test code: it may panic, but must never wait without a bound.
#![allow(dead_code)]

pub mod baresip;
pub mod caller;
pub mod inproc;
pub mod kamailio;
pub mod kamailio_peer;
pub mod tree;

use std::path::{Path, PathBuf};

use siprox::config::{Config, Listener, Proto, RuntimeConfig, TlsConfig};
use siprox_actors::{Runtime, RuntimeHandle, RuntimeOptions};
use siprox_testkit::pki::{Ca, Spec};

// Re-exported so that `use common::*;` is all a runtime test imports; no test uses all.
#[allow(unused_imports)]
pub use siprox_testkit::assert_eventually;
#[allow(unused_imports)]
pub use siprox_testkit::tls::{tls_client, tls_connect, tls_over};
#[allow(unused_imports)]
pub use siprox_testkit::ua::Uas;
#[allow(unused_imports)]
pub use siprox_testkit::wire::*;

/// A configuration listening on 127.0.0.1:0 for each of `protos`, with dev certificates
/// generated under `certs/` (relative: under the directory given to [`start`]), 2 workers.
pub fn config(protos: &[Proto]) -> Config {
    Config {
        listen: protos
            .iter()
            .map(|p| Listener {
                proto: *p,
                addr: "127.0.0.1:0".parse().expect("addr"),
                advertise: None,
            })
            .collect(),
        runtime: RuntimeConfig {
            workers: 2,
            ..RuntimeConfig::default()
        },
        tls: TlsConfig {
            generate_dev_certs: true,
            ..TlsConfig::default()
        },
        ..Config::default()
    }
}

/// Starts siprox in this process; relative TLS paths resolve under `dir`. Every start of
/// the runtime tests goes through here ([`tree::Tree::start`], [`inproc::Siprox::start`]).
pub fn start(config: Config, dir: &Path) -> RuntimeHandle {
    Runtime::start(config, RuntimeOptions::embedded(dir))
        .unwrap_or_else(|e| panic!("siprox did not start: {e}"))
}

pub fn ca_file(dir: &Path) -> PathBuf {
    dir.join("certs/ca.pem")
}

/// The development certificates siprox makes on first run, under `dir/certs` (CA,
/// server), and that CA, to sign client certificates with.
pub fn dev_ca(dir: &Path) -> Ca {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir certs");
    siprox_actors::tls::generate_dev_certs(
        &certs.join("ca.pem"),
        &certs.join("ca.key"),
        &certs.join("server.pem"),
        &certs.join("server.key"),
    )
    .expect("dev certificates");
    load_ca(&certs)
}

/// The CA at `certs/ca.pem` / `certs/ca.key`.
pub fn load_ca(certs: &Path) -> Ca {
    let read = |f: &str| std::fs::read(certs.join(f)).expect("read the CA");
    Ca {
        cert: openssl::x509::X509::from_pem(&read("ca.pem")).expect("CA certificate"),
        key: openssl::pkey::PKey::private_key_from_pem(&read("ca.key")).expect("CA key"),
    }
}

/// A client certificate for `cn` signed by `ca`, at `<dir>/<cn>.pem` / `.key`.
pub fn client_cert(ca: &Ca, cn: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let id = ca.issue(&Spec::client(cn)).write(dir, cn);
    (id.cert_path, id.key_path)
}

/// The `siprox` binary of this build, without the developer's own `SIPROX_*` variables
/// (they must not change what a test sees; a test sets the ones it means).
pub fn siprox_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_siprox"));
    for (key, _) in std::env::vars_os() {
        if key
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("SIPROX_")
        {
            cmd.env_remove(key);
        }
    }
    cmd
}
