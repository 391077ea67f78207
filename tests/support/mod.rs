//! Shared helpers of the integration tests (`mod support;`): a test PKI, a SIP UA/UAS,
//! siprox started in-process, log capture and `assert_eventually!`. Test-only; must never
//! wait with a bare sleep (poll a condition against a deadline instead).
#![allow(dead_code)]

pub mod certs;
pub mod logs;
pub mod siprox;
pub mod ua;

/// Poll `$cond` (which may `.await`) every 10 ms until it holds; panic after `$timeout`
/// (default 10 s) with the message. Must be used inside an async test.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr) => {
        $crate::assert_eventually!($cond, std::time::Duration::from_secs(10))
    };
    ($cond:expr, $timeout:expr) => {
        $crate::assert_eventually!($cond, $timeout, "{}", stringify!($cond))
    };
    ($cond:expr, $timeout:expr, $($arg:tt)+) => {{
        let timeout: std::time::Duration = $timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if $cond {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("not true within {:?}: {}", timeout, format!($($arg)+));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
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
