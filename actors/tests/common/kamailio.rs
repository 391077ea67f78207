//! Debian's Kamailio 5.6 as a test peer: started as a plain (unprivileged, foreground)
//! process on free 127.0.0.1 ports with a generated configuration, stopped on drop, its
//! stderr kept in a file for the failure message. The differential test
//! (`kamailio_diff.rs`) runs the same route block in it and in siprox; the carrier of
//! `kamailio_peer.rs` and the stock configuration of `import_kamailio.rs` run in it too. Test code: it may
//! panic, but never waits without a bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where tests/run.sh's `kamailio` package puts the binary.
pub const KAMAILIO: &str = "/usr/sbin/kamailio";

/// The binary, or a failure that says how to get it (tests/run.sh installs it).
pub fn binary() -> &'static str {
    assert!(
        Path::new(KAMAILIO).exists(),
        "{KAMAILIO} is missing: the differential test needs Debian's Kamailio 5.6 \
         (`apt-get install kamailio kamailio-tls-modules`; tests/run.sh installs them)"
    );
    KAMAILIO
}

/// The module directory `kamailio -I` reports (Debian's when it says none).
pub fn module_dir() -> PathBuf {
    let out = Command::new(binary())
        .arg("-I")
        .output()
        .expect("run kamailio -I");
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Default paths to modules:"))
        .map(|d| PathBuf::from(d.trim()))
        .unwrap_or_else(|| PathBuf::from("/usr/lib/x86_64-linux-gnu/kamailio/modules"));
    assert!(
        dir.join("tls.so").exists(),
        "{}/tls.so is missing: install kamailio-tls-modules",
        dir.display()
    );
    dir
}

/// Free ports on 127.0.0.1: one for UDP, one for TLS (TCP), claimed for this test process
/// ([`siprox_testkit::ports`]).
pub fn free_ports() -> (u16, u16) {
    let p = siprox_testkit::ports::free_port;
    (p(), p())
}

/// `kamailio -c`: whether the configuration loads, and what Kamailio said.
pub fn check(cfg: &Path) -> Result<(), String> {
    let out = Command::new(binary())
        .args(["-c", "-f"])
        .arg(cfg)
        .output()
        .expect("run kamailio -c");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A running Kamailio; SIGTERM (then SIGKILL) on drop.
pub struct Kamailio {
    child: Child,
    pub udp: SocketAddr,
    pub tls: SocketAddr,
    pub log: PathBuf,
}

impl Kamailio {
    /// Starts `kamailio -DD -E -n 1 -Y <dir>/run -f cfg` (the configuration listens on
    /// `udp` and `tls`), stderr into `<dir>/kamailio.log`. Readiness is the caller's to poll.
    pub fn start(cfg: &Path, dir: &Path, udp: u16, tls: u16) -> Kamailio {
        let run = dir.join("run");
        std::fs::create_dir_all(&run).expect("mkdir run");
        let log = dir.join("kamailio.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary())
            .args(["-DD", "-E", "-n", "1", "-Y"])
            .arg(&run)
            .arg("-f")
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start kamailio");
        Kamailio {
            child,
            udp: SocketAddr::from(([127, 0, 0, 1], udp)),
            tls: SocketAddr::from(([127, 0, 0, 1], tls)),
            log,
        }
    }

    /// What Kamailio logged so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with Kamailio's log when it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("kamailio exited ({status}):\n{}", self.log_text());
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM lets the main process stop its children (receivers, timers, TLS workers).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
