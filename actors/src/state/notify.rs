//! systemd's service notifications (sd_notify(3)): `READY=1` once every listener accepts,
//! `RELOADING=1`/`READY=1` around a reload, `STOPPING=1` at shutdown, `STATUS=` with the
//! connections and registrations, and `WATCHDOG=1` while every worker answers its pings.
//! One datagram per message to `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
//! socket) with std's `UnixDatagram`: no crate, no unsafe. Must never fail or block the
//! runtime: a message that cannot be sent is logged once at debug level and dropped, as
//! libsystemd's sd_notify does.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where the messages go: the socket systemd (or a test) named in `$NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

/// The environment variable systemd sets for `Type=notify` services.
pub const ENV_NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

impl Notifier {
    /// A notifier for `$NOTIFY_SOCKET`, or `None` when it is unset, empty or unusable (then
    /// siprox is not run by systemd with `Type=notify`, and says nothing).
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os(ENV_NOTIFY_SOCKET)?;
        let name = name.to_str()?;
        match Notifier::new(name) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(socket = name, error = %e, "NOTIFY_SOCKET unusable: no service notifications");
                None
            }
        }
    }

    /// A notifier for the socket `name`: a filesystem path, or `@name` for an abstract one.
    pub fn new(name: &str) -> std::io::Result<Notifier> {
        let addr = if let Some(abstract_name) = name.strip_prefix('@') {
            abstract_addr(abstract_name.as_bytes())?
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(name)?
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "neither an absolute path nor @abstract",
            ));
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier { socket, addr })
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines) in one datagram. Never blocks:
    /// a full socket drops the message.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::debug!(error = %e, state, "service notification not sent");
        }
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_name: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets exist on Linux only",
    ))
}

/// The watchdog interval systemd asks for (`$WATCHDOG_USEC`, `WatchdogSec=`), when it is
/// meant for this process (`$WATCHDOG_PID` unset or this pid).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// The `STATUS=` line: what `systemctl status siprox` shows under the unit.
pub fn status_line(connections: usize, registrations: usize) -> String {
    format!("STATUS={connections} connections, {registrations} registrations")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_and_an_abstract_name_both_receive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        Notifier::new(path.to_str().expect("utf-8"))
            .expect("notifier")
            .notify("READY=1");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("siprox-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&abstract_addr(name.as_bytes()).expect("abstract"))
            .expect("bind abstract");
        Notifier::new(&format!("@{name}"))
            .expect("notifier")
            .notify("STOPPING=1");
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_relative_name_is_refused_and_a_missing_socket_is_not_an_error() {
        assert!(Notifier::new("relative/sock").is_err());
        // Nobody listens: the message is dropped, the caller goes on.
        Notifier::new("/nonexistent/siprox/notify")
            .expect("notifier")
            .notify("READY=1");
    }
}
