//! The open-file limit against what the configuration needs: at start the soft
//! `RLIMIT_NOFILE` is raised as far as the hard limit allows, with one WARN naming the
//! numbers and the fix when that is not enough; at the limit, the listener refuses accepts
//! with a reserve descriptor (see `transport::listener`), and the refusals are logged here, one line
//! per interval. Must never lower a limit, and never log a line per refused connection.

use std::time::Duration;

use siprox::config::{Config, Proto};
use tracing::{debug, info, warn};

use crate::tls::ffi;

/// Descriptors beyond the connections and listening sockets: epoll and wake-up descriptors
/// of each arbiter, the file watcher, configuration and certificate reads during a reload,
/// DNS sockets, outgoing connections opened while the table is full, stdio.
pub const MARGIN: u64 = 256;

/// How often, at most, the refused-at-the-limit WARN is logged.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Descriptors `config` needs with `workers` workers: every allowed connection (SIP and
/// management), every listening socket of every worker and its reserve descriptor, and
/// [`MARGIN`].
pub fn needed(config: &Config, workers: usize) -> u64 {
    let workers = workers as u64;
    let (stream, udp) = config
        .listen
        .iter()
        .fold((0u64, 0u64), |(s, u), l| match l.proto {
            Proto::Udp => (s, u + 1),
            Proto::Tcp | Proto::Tls => (s + 1, u),
        });
    let management = if config.management.enabled {
        config.management.max_connections as u64 + 1
    } else {
        0
    };
    (config.connections.max_connections as u64)
        .saturating_add(management)
        .saturating_add((stream * 2 + udp) * workers)
        .saturating_add(MARGIN)
}

/// What [`raise`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raise {
    /// The soft limit was already enough.
    Enough { soft: u64 },
    /// The soft limit was raised to `to` (at least what is needed).
    Raised { from: u64, to: u64 },
    /// Not enough even at the hard limit: the soft limit is now `soft` (the hard limit, or
    /// what it was when that could not be set).
    Short { needed: u64, soft: u64, hard: u64 },
}

/// The soft limit to set for `needed` descriptors given the current limits, or `None` when
/// the current one is enough. Never lower than `soft`, never above `hard`.
pub fn target(needed: u64, soft: u64, hard: u64) -> Option<u64> {
    (soft < needed).then(|| needed.min(hard).max(soft))
}

/// Raises the soft `RLIMIT_NOFILE` towards `needed` (up to the hard limit).
pub fn raise(needed: u64) -> std::io::Result<Raise> {
    let (from, hard) = ffi::nofile_limit()?;
    let Some(to) = target(needed, from, hard) else {
        return Ok(Raise::Enough { soft: from });
    };
    let soft = match ffi::set_nofile_soft(to, hard) {
        Ok(()) => to,
        Err(e) => {
            debug!(error = %e, to, "setrlimit(RLIMIT_NOFILE) refused");
            from
        }
    };
    Ok(if soft >= needed {
        Raise::Raised { from, to: soft }
    } else {
        Raise::Short { needed, soft, hard }
    })
}

/// At start: raise the limit for `config` and say what happened (one WARN when short).
pub fn ensure(config: &Config, workers: usize) {
    let needed = needed(config, workers);
    match raise(needed) {
        Ok(Raise::Enough { soft }) => debug!(needed, soft, "open-file limit is enough"),
        Ok(Raise::Raised { from, to }) => {
            info!(
                needed,
                from,
                soft = to,
                "raised the open-file limit (RLIMIT_NOFILE)"
            )
        }
        Ok(Raise::Short { needed, soft, hard }) => warn!(
            needed,
            soft,
            hard,
            "open-file limit too low for [connections] max_connections: at the limit new \
             connections are refused; raise the hard limit (systemd LimitNOFILE=, or \
             ulimit -n before starting) or lower max_connections"
        ),
        Err(e) => warn!(error = %e, needed, "cannot read the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_raises_to_what_is_needed_within_the_hard_limit() {
        assert_eq!(target(100, 1024, 4096), None);
        assert_eq!(target(2000, 1024, 4096), Some(2000));
        assert_eq!(target(9000, 1024, 4096), Some(4096));
        assert_eq!(target(9000, 1024, u64::MAX), Some(9000));
        // Never lowered, even with a hard limit below the soft one's request.
        assert_eq!(target(9000, 5000, 4096), Some(5000));
    }

    #[test]
    fn needs_count_connections_management_and_sockets() {
        let mut c = Config::default();
        c.connections.max_connections = 1000;
        c.listen = vec![
            siprox::config::Listener {
                proto: Proto::Udp,
                addr: "127.0.0.1:0".parse().expect("addr"),
                advertise: None,
            },
            siprox::config::Listener {
                proto: Proto::Tls,
                addr: "127.0.0.1:0".parse().expect("addr"),
                advertise: None,
            },
        ];
        c.management.enabled = false;
        assert_eq!(needed(&c, 2), 1000 + (2 + 1) * 2 + MARGIN);
        c.management.enabled = true;
        c.management.max_connections = 64;
        assert_eq!(needed(&c, 2), 1000 + 65 + (2 + 1) * 2 + MARGIN);
    }
}
