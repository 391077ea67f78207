//! Numbers and addresses written into a message's text without `core::fmt`: every
//! forwarded request carries an address or two (`received=`, Via, Record-Route), a branch
//! and flow tokens in hex, and the formatter's machinery (`write!` of an `Ipv4Addr` is
//! four `<u8 as Display>` with padding) cost more than the bytes. Each writes exactly what
//! `Display` / `{:x}` writes (unit tests compare them).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

const HEX: &[u8; 16] = b"0123456789abcdef";

pub(super) use crate::sip::push_dec;

/// The last `digits` hex digits of `n`, zero-padded: `{n:016x}` is `push_hex_width(n, 16)`
/// for any `n`, `{n:08x}` is `push_hex_width(n, 8)` for a `u32`. At most 16 digits.
pub(super) fn push_hex_width(out: &mut String, n: u64, digits: u32) {
    // On the stack, then one append: a `push` per digit checked the capacity each time.
    let mut buf = [0u8; 16];
    let digits = digits.min(16) as usize;
    let buf = &mut buf[..digits];
    for (i, d) in buf.iter_mut().rev().enumerate() {
        *d = HEX[((n >> (4 * i)) & 0xf) as usize];
    }
    out.push_str(std::str::from_utf8(buf).unwrap_or(""));
}

/// Hex digits written into a stack buffer: a flow token (`a.b.mac`) is built here and
/// appended once, or kept to be written into several header fields.
#[derive(Clone, Copy)]
pub(crate) struct HexBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> HexBuf<N> {
    pub(crate) fn new() -> HexBuf<N> {
        HexBuf {
            buf: [0; N],
            len: 0,
        }
    }

    /// `b` (ASCII); left out when full (callers size the buffer for what they write).
    pub(crate) fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    /// `n` in lower-case hex without leading zeros, as `{n:x}` writes it.
    pub(crate) fn push_hex(&mut self, n: u64) {
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
        for i in (0..digits).rev() {
            self.push(HEX[((n >> (4 * i)) & 0xf) as usize]);
        }
    }

    /// Each byte as two lower-case hex digits.
    pub(crate) fn push_bytes_hex(&mut self, bytes: &[u8]) {
        for &x in bytes {
            self.push(HEX[usize::from(x >> 4)]);
            self.push(HEX[usize::from(x & 0xf)]);
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // ASCII only: hex digits and what `push` was given.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

/// A short ASCII string on the stack (a tag), at most `N` bytes: what would overflow it
/// is left out (callers size it for what they write).
pub(super) struct Short<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Short<N> {
    /// Starting with `prefix` (ASCII).
    pub(super) fn new(prefix: &[u8]) -> Short<N> {
        let mut s = Short {
            buf: [0; N],
            len: 0,
        };
        for &b in prefix {
            s.push(b);
        }
        s
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    /// [`push_hex_width`] into this string.
    pub(super) fn push_hex_width(&mut self, n: u64, digits: u32) {
        for i in (0..digits).rev() {
            self.push(HEX[((n >> (4 * i)) & 0xf) as usize]);
        }
    }

    pub(super) fn as_str(&self) -> &str {
        // ASCII only: a prefix given as ASCII and hex digits.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

/// An IPv4 address as `Display` writes it (dotted decimal), into a stack buffer.
pub(super) struct V4Text {
    buf: [u8; 15],
    len: usize,
}

impl V4Text {
    pub(super) fn new(a: Ipv4Addr) -> V4Text {
        let mut buf = [0u8; 15];
        let mut len = 0;
        for (i, o) in a.octets().into_iter().enumerate() {
            if i > 0 {
                buf[len] = b'.';
                len += 1;
            }
            if o >= 100 {
                buf[len] = b'0' + o / 100;
                len += 1;
            }
            if o >= 10 {
                buf[len] = b'0' + (o / 10) % 10;
                len += 1;
            }
            buf[len] = b'0' + o % 10;
            len += 1;
        }
        V4Text { buf, len }
    }

    pub(super) fn as_str(&self) -> &str {
        // Digits and dots only.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

/// An address as `Display` writes it (IPv6 without brackets).
pub(super) fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => out.push_str(V4Text::new(a).as_str()),
        // Rare enough to keep the formatter (its compression rules are long).
        IpAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// `ip:port`, `[ip6]:port`, as `Display` of a `SocketAddr` writes them (without an IPv6
/// scope id: siprox's listeners never carry one in Via).
pub(super) fn push_socket_addr(out: &mut String, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => push_ip(out, IpAddr::V4(*v4.ip())),
        SocketAddr::V6(v6) => {
            out.push('[');
            push_ip(out, IpAddr::V6(*v6.ip()));
            out.push(']');
        }
    }
    out.push(':');
    push_dec(out, u64::from(a.port()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_writes_what_the_formatter_writes() {
        for n in [0u64, 1, 9, 10, 99, 100, 255, 5060, 65535, 1 << 32, u64::MAX] {
            let mut s = String::new();
            push_dec(&mut s, n);
            assert_eq!(s, n.to_string());
            let mut h = HexBuf::<16>::new();
            h.push_hex(n);
            assert_eq!(h.as_str(), format!("{n:x}"));
            let mut s = String::new();
            push_hex_width(&mut s, n, 16);
            assert_eq!(s, format!("{n:016x}"));
            let mut s = String::new();
            push_hex_width(&mut s, n & 0xffff_ffff, 8);
            assert_eq!(s, format!("{:08x}", n & 0xffff_ffff));
        }
        let mut tag = Short::<14>::new(b"sx");
        tag.push_hex_width(0xabc_0000_0012_3456, 12);
        assert_eq!(
            tag.as_str(),
            format!("sx{:012x}", 0xabc_0000_0012_3456u64 & 0xffff_ffff_ffff)
        );
        let mut h = HexBuf::<40>::new();
        h.push_hex(0);
        h.push(b'.');
        h.push_hex(0x2a);
        h.push(b'.');
        h.push_hex(u64::MAX);
        h.push(b'.');
        h.push_bytes_hex(&[0, 0x0f, 0xa0, 0xff]);
        assert_eq!(h.as_str(), "0.2a.ffffffffffffffff.000fa0ff");
        let mut tag = Short::<4>::new(b"sx");
        tag.push_hex_width(0xff, 4);
        assert_eq!(tag.as_str(), "sx00", "what does not fit is left out");
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.0.100.9",
            "192.0.2.10",
            "1.20.199.250",
        ] {
            let ip: Ipv4Addr = a.parse().unwrap();
            assert_eq!(V4Text::new(ip).as_str(), ip.to_string());
        }
        for a in [
            "127.0.0.1:5060",
            "10.0.0.1:0",
            "[::1]:5061",
            "[2001:db8::10]:65535",
            "[::ffff:192.0.2.1]:5060",
        ] {
            let sa: SocketAddr = a.parse().unwrap();
            let mut s = String::new();
            push_socket_addr(&mut s, sa);
            assert_eq!(s, sa.to_string());
            let mut s = String::new();
            push_ip(&mut s, sa.ip());
            assert_eq!(s, sa.ip().to_string());
        }
    }
}
