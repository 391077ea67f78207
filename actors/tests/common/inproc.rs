//! Starts siprox for a test: in-process through the runtime API with listeners on
//! 127.0.0.1:0 and the kit's test PKI, or as the real binary on a temp conf.d. Must never bind a
//! fixed port in-process, nor touch the repository's conf.d/ or certs/.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openssl::ssl::SslConnector;
use siprox::config::{
    Config, ConfigDuration, ConnectionsConfig, Listener, Proto, RuntimeConfig, TlsConfig,
    TlsVersion, VerifyClient,
};

use siprox_actors::StatsSnapshot;

use siprox_testkit::pki::{Pki, Tls};
use siprox_testkit::ua;

/// What the test wants of siprox.
#[derive(Debug, Clone)]
pub struct Options {
    pub udp: bool,
    pub tcp: bool,
    pub tls: bool,
    pub workers: usize,
    pub send_timeout: Duration,
    pub max_write_queue: usize,
    pub shutdown_grace: Duration,
    pub min_tls: TlsVersion,
    pub verify_client: VerifyClient,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            udp: true,
            tcp: true,
            tls: true,
            workers: 2,
            send_timeout: Duration::from_secs(5),
            max_write_queue: 1 << 20,
            shutdown_grace: Duration::from_secs(5),
            min_tls: TlsVersion::Tls12,
            verify_client: VerifyClient::Off,
        }
    }
}

fn dur(d: Duration) -> ConfigDuration {
    ConfigDuration(d)
}

/// The configuration siprox runs with: the listeners asked for on `addrs` (port 0 = any),
/// the test PKI's server certificate, its CA for clients and for servers siprox connects to.
pub fn config(pki: &Pki, o: &Options, addrs: [SocketAddr; 3]) -> Config {
    let mut listen = Vec::new();
    for (on, proto, addr) in [
        (o.udp, Proto::Udp, addrs[0]),
        (o.tcp, Proto::Tcp, addrs[1]),
        (o.tls, Proto::Tls, addrs[2]),
    ] {
        if on {
            listen.push(Listener {
                proto,
                addr,
                advertise: None,
            });
        }
    }
    Config {
        listen,
        runtime: RuntimeConfig {
            workers: o.workers,
            shutdown_grace: dur(o.shutdown_grace),
            ..RuntimeConfig::default()
        },
        connections: ConnectionsConfig {
            send_timeout: dur(o.send_timeout),
            max_write_queue: o.max_write_queue,
            ..ConnectionsConfig::default()
        },
        tls: TlsConfig {
            certificate: pki.server.cert_path.clone(),
            private_key: pki.server.key_path.clone(),
            ca_file: Some(pki.ca_path().to_owned()),
            verify_client: o.verify_client,
            verify_server: true,
            min_version: o.min_tls,
            generate_dev_certs: false,
            ..TlsConfig::default()
        },
        ..Config::default()
    }
}

/// The same configuration as a conf.d/ file for the real binary (fixed ports: the binary
/// cannot tell its caller which port 0 became).
pub fn write_conf_d(dir: &Path, pki: &Pki, o: &Options, addrs: [SocketAddr; 3]) -> PathBuf {
    let c = config(pki, o, addrs);
    let conf = dir.join("conf.d");
    std::fs::create_dir_all(&conf).expect("mkdir conf.d");
    let mut s = String::new();
    for l in &c.listen {
        s.push_str(&format!(
            "[[listen]]\nproto = \"{}\"\naddr = \"{}\"\n\n",
            l.proto, l.addr
        ));
    }
    s.push_str(&format!(
        "[log]\nlevel = \"info\"\nformat = \"text\"\n\n\
         [runtime]\nworkers = {}\nshutdown_grace = \"{}\"\n\n\
         [connections]\nsend_timeout = \"{}\"\nmax_write_queue = {}\n\n\
         [tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\nca_file = \"{}\"\n\
         verify_client = \"{}\"\nmin_version = \"{}\"\ngenerate_dev_certs = false\n",
        c.runtime.workers,
        c.runtime.shutdown_grace,
        c.connections.send_timeout,
        c.connections.max_write_queue,
        pki.server.cert_path.display(),
        pki.server.key_path.display(),
        pki.ca_path().display(),
        o.verify_client.as_str(),
        match o.min_tls {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        },
    ));
    std::fs::write(conf.join("00-test.toml"), s).expect("write conf");
    conf
}

/// Free ports on 127.0.0.1 for the binary (udp, tcp, tls), claimed for this test process
/// ([`siprox_testkit::ports`]); in-process tests use port 0 instead.
pub fn free_ports() -> [SocketAddr; 3] {
    [(); 3].map(|()| SocketAddr::from(([127, 0, 0, 1], siprox_testkit::ports::free_port())))
}

/// siprox running in this process.
pub struct Siprox {
    pub pki: Arc<Pki>,
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub options: Options,
    rt: adapter::Running,
}

impl Siprox {
    /// Start siprox in-process with a fresh PKI.
    pub async fn start(o: Options) -> Siprox {
        Self::start_with(Arc::new(Pki::new()), o).await
    }

    /// Start siprox in-process with a fresh PKI, its listeners on `ip` (the loopback of
    /// either family), running the route script `script` (its text) when given.
    pub async fn start_at(o: Options, ip: std::net::IpAddr, script: Option<&str>) -> Siprox {
        Self::start_on(Arc::new(Pki::new()), o, ip, script).await
    }

    /// Start siprox in-process with `pki`.
    pub async fn start_with(pki: Arc<Pki>, o: Options) -> Siprox {
        Self::start_on(pki, o, [127, 0, 0, 1].into(), None).await
    }

    /// Listeners on `ip` (port 0), `script` (its text) as the route script when given.
    async fn start_on(
        pki: Arc<Pki>,
        o: Options,
        ip: std::net::IpAddr,
        script: Option<&str>,
    ) -> Siprox {
        siprox_testkit::logs::install();
        let mut cfg = config(&pki, &o, [SocketAddr::new(ip, 0); 3]);
        if let Some(text) = script {
            let path = pki.dir.path().join("route.cfg");
            std::fs::write(&path, text).expect("write the route script");
            cfg.script.file = Some(path);
        }
        let rt = adapter::start(cfg).await;
        let (udp, tcp, tls) = rt.addrs();
        Siprox {
            pki,
            udp,
            tcp,
            tls,
            options: o,
            rt,
        }
    }

    pub fn udp(&self) -> SocketAddr {
        self.udp.expect("no udp listener")
    }

    pub fn tcp(&self) -> SocketAddr {
        self.tcp.expect("no tcp listener")
    }

    pub fn tls(&self) -> SocketAddr {
        self.tls.expect("no tls listener")
    }

    /// The listener of a transport.
    pub fn addr(&self, t: ua::Transport) -> SocketAddr {
        match t {
            ua::Transport::Udp => self.udp(),
            ua::Transport::Tcp => self.tcp(),
            ua::Transport::Tls => self.tls(),
        }
    }

    /// A TLS client connector trusting the test CA.
    pub fn connector(&self, tls: Tls) -> SslConnector {
        self.pki.connector(None, tls)
    }

    /// A client of siprox over `t` (TLS: any version, no client certificate).
    pub async fn client(&self, t: ua::Transport) -> ua::Client {
        let c = self.connector(Tls::Any);
        ua::Client::connect(t, self.addr(t), Some(&c))
            .await
            .expect("connect to siprox")
    }

    /// The runtime's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.rt.stats()
    }

    /// Stop siprox and wait until it is down.
    pub async fn shutdown(self) {
        self.rt.shutdown().await
    }
}

/// What [`Siprox`] uses of a running runtime: its addresses, counters and shutdown.
mod adapter {
    use siprox::config::Config;
    use siprox::proxy::Transport;
    use siprox_actors::{RuntimeHandle, StatsSnapshot};
    use std::net::SocketAddr;
    use std::path::Path;

    pub struct Running(RuntimeHandle);

    /// `Runtime::start` blocks (certificate files): run it off the test's async threads.
    pub async fn start(cfg: Config) -> Running {
        // The PKI's paths are absolute: the base directory resolves nothing.
        match tokio::task::spawn_blocking(move || super::super::start(cfg, Path::new("."))).await {
            Ok(h) => Running(h),
            // The start's own panic message says why.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    impl Running {
        pub fn addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>, Option<SocketAddr>) {
            (
                self.0.local_addr(Transport::Udp),
                self.0.local_addr(Transport::Tcp),
                self.0.local_addr(Transport::Tls),
            )
        }

        pub fn stats(&self) -> StatsSnapshot {
            self.0.stats()
        }

        pub async fn shutdown(self) {
            let h = self.0;
            tokio::task::spawn_blocking(move || h.shutdown())
                .await
                .expect("runtime shutdown panicked");
        }
    }
}
