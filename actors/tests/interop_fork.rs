//! Forking with SIP user agents nobody here wrote: two Debian `baresip` instances register
//! over TLS with siprox as the same AoR (bob@example.com, two devices), a third (alice)
//! calls bob through siprox, whose script is the shipped default (lookup + t_relay: every
//! binding rings). Both of bob's devices ring; the
//! desk answers at once (baresip auto-answer), the mobile only rings (manual answer) and
//! is cancelled by siprox; alice sees exactly one 200 for her INVITE. Everything on
//! 127.0.0.1 (baresip bound to it with -n). tests/run.sh installs baresip-core. The
//! baresip helpers follow interop_baresip.rs (kept apart so that file stays untouched).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::baresip::{eventually, free_port, silence_wav};
use common::*;
use siprox::proxy::Transport;

/// A device's baresip directory (`name`), registering as `user@example.com` over TLS
/// through `proxy` with password `<user>-pw`, answering as `answermode` says.
fn baresip_dir(
    root: &Path,
    name: &str,
    user: &str,
    answermode: &str,
    proxy: SocketAddr,
    ca: &Path,
    wav: &Path,
) -> PathBuf {
    let dir = root.join(format!("baresip-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    std::fs::write(
        dir.join("config"),
        format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{port}\nsip_cafile {}\n\
             module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\n\
             audio_player aufile,/dev/null\naudio_source aufile,{}\naudio_alert aufile,/dev/null\n\
             module_app account.so\nmodule_app menu.so\n",
            ca.display(),
            wav.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("accounts"),
        format!(
            "<sip:{user}@example.com;transport=tls>;regint=60;auth_pass={user}-pw;\
             outbound=\"sip:{proxy};transport=tls\";answermode={answermode}\n"
        ),
    )
    .unwrap();
    dir
}

/// A running baresip and its output (stdout and stderr, SIP trace included).
struct Ua {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Ua {
    /// Runs baresip on `dir` for `secs` seconds, dialling `dial` at once when given.
    fn spawn(dir: &Path, secs: u32, dial: Option<&str>) -> Ua {
        let mut cmd = Command::new("baresip");
        cmd.arg("-s")
            .arg("-n")
            .arg("127.0.0.1")
            .arg("-f")
            .arg(dir)
            .arg("-t")
            .arg(secs.to_string());
        if let Some(d) = dial {
            cmd.arg("-e").arg(format!("/dial {d}"));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("baresip runs (tests/run.sh installs baresip-core)");
        let out = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).split(b'\n') {
                    let Ok(line) = line else { return };
                    let mut o = out.lock().unwrap();
                    o.push_str(&String::from_utf8_lossy(&line));
                    o.push('\n');
                }
            });
        }
        Ua { child, out }
    }

    fn log(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn wait_for(&self, what: &str, within: Duration) -> bool {
        eventually(within, || self.out.lock().unwrap().contains(what))
    }
}

impl Drop for Ua {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SIP messages of a baresip trace whose first line starts with `start` and whose
/// CSeq method is `method`.
fn traced(log: &str, start: &str, method: &str) -> usize {
    log.split(&format!("\n{start}"))
        .skip(1)
        .filter(|m| {
            m.lines()
                .take_while(|l| !l.is_empty())
                .any(|l| l.starts_with("CSeq:") && l.trim_end().ends_with(&format!(" {method}")))
        })
        .count()
}

/// conf.d under `root`: a TLS listener, development certificates, digest users alice and
/// bob, and the shipped default script as it is (it relays with `t_relay()`).
fn fork_conf_d(root: &Path) -> siprox::config::Config {
    std::fs::create_dir_all(root.join("conf.d/scripts")).unwrap();
    let default = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../conf.d/scripts/default.cfg"
    ))
    .unwrap();
    assert!(default.contains("if (!t_relay()) {"));
    std::fs::write(root.join("conf.d/scripts/fork.cfg"), default).unwrap();
    std::fs::write(
        root.join("conf.d/00-test.toml"),
        "[[listen]]\nproto = \"tls\"\naddr = \"127.0.0.1:0\"\n\
         [runtime]\nworkers = 2\n\
         [script]\nfile = \"conf.d/scripts/fork.cfg\"\n\
         [tls]\ngenerate_dev_certs = true\n\
         [auth]\nusers_file = \"conf.d/auth/users.toml\"\nalgorithms = [\"MD5\"]\n\
         [domains.lab]\nnames = [\"example.com\"]\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("conf.d/auth")).unwrap();
    std::fs::write(
        root.join("conf.d/auth/users.toml"),
        "realm = \"example.com\"\n[[user]]\nname = \"alice\"\npassword = \"alice-pw\"\n\
         [[user]]\nname = \"bob\"\npassword = \"bob-pw\"\n",
    )
    .unwrap();
    siprox_actors::reload::files::load(&root.join("conf.d")).expect("config")
}

#[test]
fn a_call_to_two_baresip_devices_of_one_aor_rings_both_and_the_other_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let rt = start(fork_conf_d(root), root);
    let proxy = rt.local_addr(Transport::Tls).unwrap();
    let ca = ca_file(root);
    let wav = root.join("silence.wav");
    silence_wav(&wav);

    let desk = Ua::spawn(
        &baresip_dir(root, "desk", "bob", "auto", proxy, &ca, &wav),
        30,
        None,
    );
    let mobile = Ua::spawn(
        &baresip_dir(root, "mobile", "bob", "manual", proxy, &ca, &wav),
        30,
        None,
    );
    for (name, ua) in [("desk", &desk), ("mobile", &mobile)] {
        assert!(
            ua.wait_for("200 OK (siprox", Duration::from_secs(10)),
            "bob's {name} registers over TLS:\n{}",
            ua.log()
        );
    }
    let bindings = rt.location().map(|l| {
        l.registrar_store()
            .get("sip:bob@example.com")
            .map(|b| b.len())
    });
    assert_eq!(bindings, Some(Ok(2)), "one AoR, two devices");

    let alice = Ua::spawn(
        &baresip_dir(root, "alice", "alice", "auto", proxy, &ca, &wav),
        12,
        Some("sip:bob@example.com"),
    );
    let all = || {
        format!(
            "--- alice:\n{}\n--- desk:\n{}\n--- mobile:\n{}",
            alice.log(),
            desk.log(),
            mobile.log()
        )
    };
    assert!(
        alice.wait_for("Call established", Duration::from_secs(15)),
        "alice's call is established:\n{}",
        all()
    );
    assert!(
        desk.wait_for("Call established", Duration::from_secs(5)),
        "the desk answered:\n{}",
        all()
    );
    // Both devices got the INVITE; the mobile, still ringing, is cancelled and answers 487.
    assert!(
        mobile.wait_for("Incoming call from", Duration::from_secs(5)),
        "the mobile rings:\n{}",
        all()
    );
    assert!(
        eventually(Duration::from_secs(5), || traced(
            &mobile.log(),
            "CANCEL sip:bob",
            "CANCEL"
        ) == 1
            && traced(&mobile.log(), "SIP/2.0 487", "INVITE") == 1),
        "the ringing mobile is cancelled:\n{}",
        all()
    );
    assert_eq!(traced(&mobile.log(), "INVITE sip:bob", "INVITE"), 1);
    assert_eq!(traced(&desk.log(), "INVITE sip:bob", "INVITE"), 1);
    assert_eq!(traced(&desk.log(), "CANCEL sip:bob", "CANCEL"), 0);
    // alice sees one 200 for her INVITE and never the mobile's 487.
    let log = alice.log();
    assert_eq!(traced(&log, "SIP/2.0 200", "INVITE"), 1, "{}", all());
    assert_eq!(traced(&log, "SIP/2.0 487", "INVITE"), 0, "{}", all());
    rt.shutdown();
}
