//! The registrar and location service (RFC 3261 §10, RFC 3327 Path, RFC 5626 flows), sans-IO:
//! it decides what a REGISTER changes and where a request to an AoR goes; it never touches a
//! socket, a file or a clock (`now` is always passed in, Unix seconds), and never panics.
//!
//! - [`save`]: a REGISTER -> new bindings in a [`LocationStore`] and the 200 OK
//!   ([`Saved::reply`]), or a [`SaveError`] with its response ([`SaveError::reply`]).
//! - [`lookup`]: a Request-URI -> the best reachable contact ([`LookupResult`]): the new
//!   Request-URI, the pre-loaded Route (Path) and the [`Delivery`] (over the phone's own
//!   connection when it registered over TCP/TLS). **No forking:** the proxy is stateless,
//!   so a request goes to the highest-q reachable contact only (ties: most recent refresh).
//!   A connection-bound contact whose connection is gone is unreachable: when no contact is
//!   reachable the caller gets 480, never a connect attempt to a (private) Contact address.
//! - Expiry: [`LocationStore::expire`], run by the runtime on a timer.
//! - [`snapshot`]: the file format that carries the [`MemoryStore`] across restarts.

mod binding;
mod lookup;
mod save;
pub mod snapshot;
mod store;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

pub use binding::{aor_of, aor_of_str, uri_eq, AorError, Binding, Flow};
pub use lookup::{lookup, lookup_aor, ranked, Delivery, LookupResult, Target};
pub use save::{flow_of, save, ContactUpdate, Register, SaveError, Saved};
pub use snapshot::{from_snapshot, restore, to_snapshot, SnapshotError};
pub use store::{LocationStore, MemoryStore, StoreError, UpdateFn, Withheld};

use crate::proxy::{build_reply, Inbound};
use crate::sip::Message;

/// How Path (RFC 3327) is handled, Kamailio's `path_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMode {
    /// Path is ignored: not stored, not echoed.
    Off,
    /// Path is stored; it is echoed only when the UA sent `Supported: path`.
    Lazy,
    /// Path without `Supported: path` is refused with 420 (RFC 3327 §5.3); else stored and
    /// echoed.
    #[default]
    Strict,
}

/// Registrar settings (`[registrar]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Expiry when neither the Contact nor the request gives one, seconds.
    pub default_expires: u32,
    /// Shorter non-zero expiries are refused with 423 and `Min-Expires`.
    pub min_expires: u32,
    /// Longer expiries are shortened to this.
    pub max_expires: u32,
    /// Most bindings per AoR (0: no limit); a REGISTER that would exceed it gets 503.
    pub max_contacts: usize,
    pub path_mode: PathMode,
    /// This node's name in a cluster, stored in every flow it registers; set by the runtime.
    #[serde(skip)]
    pub node: Option<Arc<str>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_expires: 3600,
            min_expires: 60,
            max_expires: 86400,
            max_contacts: 10,
            path_mode: PathMode::Strict,
            node: None,
        }
    }
}

/// A response the registrar (or its caller) sends: status, reason and extra header lines
/// (each ending in CRLF) for [`build_reply`] or `Proxy::reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub reason: Cow<'static, str>,
    pub headers: String,
}

impl Reply {
    /// The response bytes to `msg` (which arrived as `rx`).
    pub fn build(&self, msg: &Message, rx: &Inbound, to_tag: &str, server: &str) -> Bytes {
        build_reply(
            msg,
            rx,
            self.code,
            &self.reason,
            to_tag,
            server,
            &self.headers,
        )
    }
}

/// An HTTP-date (RFC 3261 §20.17, RFC 1123 form, always GMT): `Sat, 13 Nov 2010 23:29:00 GMT`.
pub fn http_date(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix.div_euclid(86400);
    let secs = unix.rem_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1).clamp(0, 11) as usize],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(1_289_690_940), "Sat, 13 Nov 2010 23:29:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(-1), "Wed, 31 Dec 1969 23:59:59 GMT");
    }
}
