//! Debian's Kamailio (installed by tests/run.sh) as a real TLS peer of siprox: a carrier
//! proxy that listens on TLS (and UDP toward a test UAS behind it), verifies the client
//! certificate siprox presents against the test CA, record-routes, and relays in-dialog
//! requests both ways. Started unprivileged on free loopback ports, stopped (by its own
//! pid) when dropped. Test code: may panic, but never waits without a bound.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

/// How the carrier is set up.
pub struct CarrierOpts<'a> {
    /// Loopback address it listens on (127.0.0.1 or ::1).
    pub ip: IpAddr,
    /// Its server certificate and key (PEM files), and the CA its client certificates
    /// must chain to.
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ca: &'a Path,
    /// Where it relays initial INVITEs (a UDP UAS), if any.
    pub uas: Option<SocketAddr>,
}

/// A running Kamailio (the process, its log and its stop: [`super::kamailio::Kamailio`]).
pub struct Kamailio {
    /// Declared before `_dir`: the process stops before its directory is removed.
    process: super::kamailio::Kamailio,
    pub tls: SocketAddr,
    pub udp: SocketAddr,
    /// Plain TCP (the same routing as TLS, no certificates).
    pub tcp: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A free port on `ip` for both TCP and UDP, claimed for this test process.
fn free_port(ip: IpAddr) -> u16 {
    siprox_testkit::ports::free_port_on(ip)
}

fn host(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

/// The carrier's routing: OPTIONS answered with what it saw of siprox's certificate;
/// INVITEs record-routed and relayed to the UAS; in-dialog requests follow their Route
/// set (the UAS's BYE goes back over the TLS connection siprox opened: `;alias`); a
/// request with `X-To-Siprox` (from the UAS) relayed to its Request-URI (siprox).
fn script(o: &CarrierOpts<'_>) -> String {
    let uas = o.uas.map(host).unwrap_or_else(|| "0.0.0.0:9".to_owned());
    format!(
        r#"
request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (is_method("OPTIONS") && !has_totag()) {{
        append_to_reply("X-Client-CN: $tls_peer_subject_cn\r\nX-Client-Verified: $tls_peer_verified\r\nX-Via: $hdr(Via)\r\n");
        sl_send_reply("200", "OK");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            t_check_trans();
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    # The UAS calling a phone behind siprox (its Request-URI names siprox): over the TLS
    # connection siprox opened, found by the alias of siprox's Via.
    if (is_present_hf("X-To-Siprox")) {{
        record_route();
        t_relay();
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    t_check_trans();
    if (is_method("INVITE")) {{
        if (proto == TLS && $tls_peer_verified != 1) {{
            sl_send_reply("403", "Client certificate not verified");
            exit;
        }}
        record_route();
        $du = "sip:{uas}";
    }}
    if (!t_relay()) {{
        sl_reply_error();
    }}
}}
"#
    )
}

impl Kamailio {
    /// Starts the carrier and waits (bounded) until its TLS port accepts connections.
    pub fn carrier(o: &CarrierOpts<'_>) -> Kamailio {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = SocketAddr::new(o.ip, free_port(o.ip));
        let udp = SocketAddr::new(o.ip, free_port(o.ip));
        let tcp = SocketAddr::new(o.ip, free_port(o.ip));
        let tls_cfg = dir.path().join("tls.cfg");
        // Server side: siprox must present a certificate from the test CA. Client side
        // (a connection Kamailio opens to a siprox TLS listener): not verified.
        std::fs::write(
            &tls_cfg,
            format!(
                "[server:default]\nmethod = TLSv1.2+\nverify_certificate = yes\n\
                 require_certificate = yes\ncertificate = {}\nprivate_key = {}\nca_list = {}\n\n\
                 [client:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
                 require_certificate = no\n",
                o.cert.display(),
                o.key.display(),
                o.ca.display()
            ),
        )
        .expect("tls.cfg");
        let mut cfg = String::new();
        let _ = write!(
            cfg,
            "#!KAMAILIO\n\
             listen=tls:{}\nlisten=udp:{}\nlisten=tcp:{}\n\
             debug=2\nlog_stderror=yes\nchildren=1\ntcp_children=1\n\
             auto_aliases=no\ndns=no\nrev_dns=no\nuse_dns_cache=off\n\
             enable_tls=yes\ntcp_accept_no_cl=yes\n\
             # RFC 5923: a Via with ;alias makes its connection reachable under its sent-by.\n\
             tcp_accept_aliases=yes\n\
             loadpath \"/usr/lib/x86_64-linux-gnu/kamailio/modules/\"\n\
             loadmodule \"tm.so\"\nloadmodule \"tls.so\"\nloadmodule \"kex.so\"\n\
             loadmodule \"corex.so\"\nloadmodule \"sl.so\"\nloadmodule \"rr.so\"\n\
             loadmodule \"pv.so\"\nloadmodule \"maxfwd.so\"\nloadmodule \"siputils.so\"\n\
             loadmodule \"textops.so\"\n\
             modparam(\"tls\", \"config\", \"{}\")\n\
             modparam(\"tm\", \"fr_timer\", 5000)\n",
            host(tls),
            host(udp),
            host(tcp),
            tls_cfg.display()
        );
        cfg.push_str(&script(o));
        let cfg_path = dir.path().join("kamailio.cfg");
        std::fs::write(&cfg_path, cfg).expect("kamailio.cfg");
        let process =
            super::kamailio::Kamailio::start(&cfg_path, dir.path(), udp.port(), tls.port());
        let k = Kamailio {
            process,
            tls,
            udp,
            tcp,
            _dir: dir,
        };
        let until = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect_timeout(&tls, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < until,
                "kamailio did not listen on {tls}:\n{}",
                k.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        k
    }

    /// Everything Kamailio logged so far.
    pub fn log(&self) -> String {
        self.process.log_text()
    }
}
