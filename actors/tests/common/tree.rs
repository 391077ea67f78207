//! A siprox configuration tree in a temp dir for the TLS domain and reload tests: a conf.d
//! written as an operator (or certbot) writes it, certificates from the kit's PKI, loaded
//! and started as the daemon does. Test code: may panic, but never waits without a bound.

use std::path::{Path, PathBuf};

use siprox_actors::RuntimeHandle;
use siprox_testkit::pki::Ca;

/// A siprox configuration tree in a temp dir: `<tmp>/conf.d/...`, `<tmp>/certs/...`.
pub struct Tree {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
}

impl Tree {
    /// `core` is appended to a core file that listens on tls 127.0.0.1:0 with 2 workers,
    /// dev certificates for the default domain, and a 50 ms reload debounce.
    pub fn new(core_extra: &str) -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("conf.d/domains")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("certs")).expect("mkdir");
        let t = Tree {
            dir,
            ca: Ca::new("Test CA"),
        };
        t.write("certs/test-ca.pem", &t.ca.cert.to_pem().expect("pem"));
        t.write(
            "conf.d/00-core.toml",
            format!(
                "[[listen]]\nproto = \"tls\"\naddr = \"127.0.0.1:0\"\n\n\
                 [runtime]\nworkers = 2\n\n\
                 [tls]\ngenerate_dev_certs = true\nreload_debounce = \"50ms\"\n{core_extra}\n"
            )
            .as_bytes(),
        );
        t
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `rel` atomically (temp file + rename, as certbot does).
    pub fn write(&self, rel: &str, data: &[u8]) {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let tmp = p.with_extension("tmp~");
        std::fs::write(&tmp, data).expect("write");
        std::fs::rename(&tmp, &p).expect("rename");
    }

    /// A leaf for `cn` at `certs/<file>.pem` / `.key`.
    pub fn leaf(&self, file: &str, cn: &str) {
        let (c, k) = self.ca.leaf(cn);
        self.write(&format!("certs/{file}.key"), &k);
        self.write(&format!("certs/{file}.pem"), &c);
    }

    /// `conf.d/domains/<name>.toml` with `body`.
    pub fn domain(&self, name: &str, body: &str) {
        self.write(&format!("conf.d/domains/{name}.toml"), body.as_bytes());
    }

    /// A tenant with a TLS server side: a certificate for `<name>.example` signed by the
    /// test CA at `certs/<name>.pem`, and `conf.d/domains/<name>.toml` naming
    /// `<name>.example`, with `server_extra` (TOML lines) in its `server` table.
    pub fn server_domain(&self, name: &str, server_extra: &str) {
        self.leaf(name, &format!("{name}.example"));
        self.domain(
            name,
            &format!(
                "[domains.{name}]\nnames = [\"{name}.example\"]\n[domains.{name}.server]\n\
                 certificate = \"certs/{name}.pem\"\nprivate_key = \"certs/{name}.key\"\n\
                 {server_extra}"
            ),
        );
    }

    /// Loads conf.d as the daemon does and starts siprox in this process.
    pub fn start(&self) -> RuntimeHandle {
        let config =
            siprox_actors::reload::files::load(&self.path("conf.d")).expect("valid configuration");
        super::start(config, self.dir.path())
    }
}

/// Path of a file under the tree, as text for a TOML value.
pub fn rel(p: &Path) -> String {
    p.display().to_string()
}
