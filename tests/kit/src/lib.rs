//! siprox-testkit: the one kit every siprox test and the load generator share (dev-only,
//! never published): a test PKI ([`pki`]), a SIP UA/UAS over UDP/TCP/TLS ([`ua`]), raw SIP
//! text on the wire ([`wire`]), TLS clients ([`tls`]), `openssl s_client` as a resuming
//! client ([`sclient`]), digest answers ([`digest`]), log capture ([`logs`]), real Redis
//! servers and a Redis Cluster ([`redis`]), ports for servers started as other processes
//! ([`ports`]) and [`assert_eventually!`]. It knows nothing of the runtime (`siprox-actors`): the core's
//! tests use it too, and the runtime's tests start siprox through their own harness
//! (`actors/tests/common/`). Test code: it may panic, but must never wait with a bare sleep
//! or without a bound.
#![forbid(unsafe_code)]

pub mod digest;
pub mod logs;
pub mod pki;
pub mod ports;
pub mod redis;
pub mod sclient;
pub mod tls;
pub mod ua;
pub mod wire;

#[doc(hidden)]
pub use tokio as __tokio;

/// Poll `$cond` (which may `.await`) every 10 ms until it holds; panic after `$timeout`
/// (default 10 s) with the message (default: the condition's text). Async tests only: it
/// sleeps on tokio's clock, so a paused clock advances instead of hanging.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!($cond, ::std::time::Duration::from_secs(10))
    };
    ($cond:expr, $timeout:expr $(,)?) => {
        $crate::assert_eventually!($cond, $timeout, "{}", stringify!($cond))
    };
    ($cond:expr, $timeout:expr, $($arg:tt)+) => {{
        let timeout: ::std::time::Duration = $timeout;
        let deadline = $crate::__tokio::time::Instant::now() + timeout;
        loop {
            if $cond {
                break;
            }
            if $crate::__tokio::time::Instant::now() >= deadline {
                panic!("not true within {:?}: {}", timeout, format!($($arg)+));
            }
            $crate::__tokio::time::sleep(::std::time::Duration::from_millis(10)).await;
        }
    }};
}

/// The soft limit of open files of this process (from /proc), if known.
pub fn nofile_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Panic with a clear message when this process may not open `n` files.
pub fn require_nofile(n: u64) {
    if let Some(limit) = nofile_limit() {
        assert!(
            limit >= n,
            "this test needs {n} open files but `ulimit -n` is {limit}: raise it (ulimit -n 20000)"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn assert_eventually_waits_for_the_condition() {
        let polls = AtomicU32::new(0);
        assert_eventually!(polls.fetch_add(1, Ordering::SeqCst) >= 3);
        assert!(polls.load(Ordering::SeqCst) >= 4);
    }

    #[tokio::test]
    #[should_panic(expected = "not true within 50ms: never")]
    async fn assert_eventually_fails_with_the_message_after_the_deadline() {
        assert_eventually!(false, std::time::Duration::from_millis(50), "never");
    }
}
