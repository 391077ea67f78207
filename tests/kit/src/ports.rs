//! Ports for the servers a test starts as another process (Redis, Kamailio, baresip, the
//! siprox binary, `deploy/cluster.sh`), which must be told a port before they bind it.
//!
//! In-process servers bind port 0 and need none of this. A port that the kernel picked for
//! a listener and that was released before the child binds it comes from the ephemeral
//! range, where any outgoing connection of any test running beside it (a Redis client,
//! `siproxctl`, a TLS client) can take it in the seconds before the child starts: the child
//! then fails to bind, and a CI run fails for nothing. So the ports here come from below
//! that range (`/proc/sys/net/ipv4/ip_local_port_range`), which the kernel never hands out
//! by itself, and each is claimed for the life of the test process with an exclusive
//! `flock` on a file named after it in the temp dir: two test processes never get the
//! same port, and a crashed process's claims go with it.

use std::fs::{File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

/// The lowest port handed out here: below it are well-known services' ports and baresip's
/// default RTP ports (10000-20000), which the phones of the interop tests bind at will.
const LOW: u32 = 21_000;

/// The claims of this process, held until it exits.
static CLAIMS: Mutex<Vec<Flock<File>>> = Mutex::new(Vec::new());

/// A free port on 127.0.0.1 for both TCP and UDP, claimed for this process.
pub fn free_port() -> u16 {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A free port on `ip` for both TCP and UDP, claimed for this process.
pub fn free_port_on(ip: IpAddr) -> u16 {
    free_run(ip, 1)
}

/// The first of `n` consecutive ports on `ip`, each free for both TCP and UDP now and
/// claimed for this process (a program that takes `port` and `port + 1`, or a script that
/// numbers its ports from a base).
pub fn free_run(ip: IpAddr, n: u16) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = u32::from(n.max(1));
    let high = ephemeral_low();
    let span = high.saturating_sub(LOW + n).max(1);
    // Processes start at different places, so that they seldom try the same ports.
    let seed = std::process::id().wrapping_mul(7_919);
    let dir = claims_dir();
    for _ in 0..2_000 {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(base) = u16::try_from(LOW + seed.wrapping_add(k.wrapping_mul(n)) % span) else {
            continue;
        };
        let ports = || (0..n).filter_map(move |i| u16::try_from(u32::from(base) + i).ok());
        // Claim first, then check: a port claimed by another process is never checked.
        let mut got = Vec::new();
        let claimed = ports().all(|p| match claim(&dir, p) {
            Some(c) => {
                got.push(c);
                true
            }
            None => false,
        });
        if claimed
            && ports()
                .all(|p| TcpListener::bind((ip, p)).is_ok() && UdpSocket::bind((ip, p)).is_ok())
        {
            CLAIMS.lock().unwrap_or_else(|e| e.into_inner()).extend(got);
            return base;
        }
    }
    panic!("no run of {n} free ports between {LOW} and {high} on {ip}");
}

/// The kernel's lowest ephemeral port (the local port of outgoing connections).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn claims_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("siprox-test-ports");
    std::fs::create_dir_all(&dir).expect("the test ports' claims directory");
    dir
}

/// An exclusive lock on the claim file of `port`, or `None` when another process holds it.
fn claim(dir: &std::path::Path, port: u16) -> Option<Flock<File>> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
        .expect("a test port's claim file");
    Flock::lock(f, FlockArg::LockExclusiveNonblock).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_not_given_twice() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let a = free_port();
        let b = free_port();
        let run = free_run(lo, 3);
        assert_ne!(a, b);
        assert!(!(run..run + 3).contains(&a) && !(run..run + 3).contains(&b));
        for p in [a, b, run, run + 2] {
            assert!(u32::from(p) >= LOW && u32::from(p) < ephemeral_low(), "{p}");
            TcpListener::bind((lo, p)).expect("free on TCP");
            UdpSocket::bind((lo, p)).expect("free on UDP");
        }
        // Another process cannot claim what this one holds.
        let dir = claims_dir();
        let other = OpenOptions::new()
            .write(true)
            .open(dir.join(a.to_string()))
            .expect("claim file");
        assert!(Flock::lock(other, FlockArg::LockExclusiveNonblock).is_err());
    }
}
