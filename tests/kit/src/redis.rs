//! Real Redis servers for the cluster tests: one `redis-server` on a free loopback port in a
//! temp dir (no persistence), stopped and restarted on the same port for outage tests, and
//! a 3-master Redis Cluster built with `redis-cli --cluster create`; a TLS-only server
//! (`rediss://`) with a certificate given by the test. Every process is killed
//! on drop. Test code: may panic, never waits without a bound.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;

/// How long a server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
    /// TLS only (`start_tls`): the CA file redis-cli verifies the server with.
    tls_ca: Option<PathBuf>,
}

impl RedisServer {
    /// A standalone server on a free loopback port.
    pub fn start() -> RedisServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = RedisServer {
            port: free_port(),
            dir,
            extra: Vec::new(),
            child: None,
            _tmp: Some(tmp),
            tls_ca: None,
        };
        s.spawn();
        s
    }

    /// A standalone server that speaks TLS only (no clear-text port), presenting `cert` and
    /// `key`; clients need no certificate (`tls-auth-clients no`). `ca` is what redis-cli
    /// verifies it with here, and the CA the server would check client certificates with.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> RedisServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut s = RedisServer {
            port: free_port(),
            dir,
            extra: vec![
                "--tls-cert-file".into(),
                path(cert),
                "--tls-key-file".into(),
                path(key),
                "--tls-ca-cert-file".into(),
                path(ca),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            child: None,
            _tmp: Some(tmp),
            tls_ca: Some(ca.to_path_buf()),
        };
        s.spawn();
        s
    }

    fn start_in(dir: &Path, extra: &[&str]) -> RedisServer {
        std::fs::create_dir_all(dir).expect("mkdir");
        let mut s = RedisServer {
            port: free_port(),
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            _tmp: None,
            tls_ca: None,
        };
        s.spawn();
        s
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        // TLS only: the clear-text port is closed (0) and the port is the TLS one.
        let ports: [String; 4] = if self.tls_ca.is_some() {
            [
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                self.port.to_string(),
            ]
        } else {
            [
                "--port".into(),
                self.port.to_string(),
                "--save".into(),
                "".into(),
            ]
        };
        let child = Command::new("redis-server")
            .args(&ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {START_TIMEOUT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True when the server answers PING.
    pub fn answers(&self) -> bool {
        self.cli(&["PING"]).is_some_and(|o| o.trim() == "PONG")
    }

    /// `redis-cli -p <port> args...`: its output, or `None` when it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(ca) = &self.tls_ca {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        let out = cmd.args(args).stdin(Stdio::null()).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (!text.starts_with("Could not connect")).then_some(text)
    }

    /// Kill the server (an outage: nothing is saved).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freeze the server (`SIGSTOP`): it keeps its sockets and answers nothing, the outage a
    /// client waits on (a killed server refuses at once). `thaw` resumes it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resume a frozen server (`SIGCONT`).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let ok = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Start it again on the same port (empty: it saves nothing).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _tmp: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                // The bus port is given too: by default it is the port + 10000, which can
                // fall in the kernel's ephemeral range (see crate::ports).
                let bus = free_port().to_string();
                RedisServer::start_in(
                    &tmp.path().join(format!("n{i}")),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus,
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes, _tmp: tmp };
        let deadline = Instant::now() + START_TIMEOUT;
        while !c.is_ok() {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not become ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// Every node says `cluster_state:ok`.
    pub fn is_ok(&self) -> bool {
        self.nodes.iter().all(|n| {
            n.cli(&["CLUSTER", "INFO"])
                .is_some_and(|t| t.contains("cluster_state:ok"))
        })
    }

    /// The seed URLs, as `[cluster] redis` lists them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `redis-cli -c` (following redirects) against the first node.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args([
                "-c",
                "-h",
                "127.0.0.1",
                "-p",
                &self.nodes[0].port.to_string(),
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
