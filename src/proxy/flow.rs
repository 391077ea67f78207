//! RFC 5626 §5.2 flow tokens: the `fl=` parameter siprox puts in its Record-Route (and so
//! in every in-dialog Route) names the connections on both sides of a dialog, signed with
//! an HMAC-SHA256 over them and the dialog's Call-ID under a secret key, so that a peer
//! cannot name a connection siprox did not give it, nor reuse a Route of one dialog (or
//! write one) to have siprox relay requests of another. Node tokens (`nf=`, cluster
//! routing) name one connection of the node that made them, under a label of their own so
//! that neither kind verifies as the other. Sans-IO: the runtime reads or generates the key
//! file; this takes key bytes. Must never accept a token whose MAC does not verify, and
//! never compare MACs in variable time.

use hmac::{Hmac, Mac};
use openssl::memcmp;
use sha2::Sha256;

use super::Transport;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of HMAC-SHA256 kept in a token (96 bits, RFC 2104 §5 allows truncation to half
/// the output and no less than 80 bits).
const MAC_LEN: usize = 12;
/// Fewest bytes in a key.
pub const MIN_KEY_LEN: usize = 32;
/// Most keys accepted at once (the first signs; the others are being rotated out).
pub const MAX_KEYS: usize = 4;
/// Domain separation: the key may be shared with nothing else, but a MAC of this must never
/// be mistaken for a MAC of something else.
const LABEL: &[u8] = b"siprox flow token v2\0";
/// Domain separation for node tokens (`nf=`): a node token must never verify as an `fl=`
/// token nor the other way round. Node tokens are not bound to a dialog, so the two MACs
/// are computed under different labels from the raw keys, never from [`LABEL`]'s states.
const NODE_LABEL: &[u8] = b"siprox node flow token v1\0";

/// A bad key set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowKeyError {
    #[error("no flow key")]
    Empty,
    #[error("a flow key needs at least {MIN_KEY_LEN} characters (e.g. `openssl rand -hex 32`)")]
    TooShort,
    #[error("at most {MAX_KEYS} flow keys (the first signs, the others are being rotated out)")]
    TooMany,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowTokenError {
    #[error("malformed flow token")]
    Malformed,
    #[error("flow token MAC does not verify")]
    BadMac,
}

/// The keys flow tokens are signed and checked with: the first signs, every one verifies
/// (rotation: add the new key on top, drop the old one once the longest dialog is over).
#[derive(Clone)]
pub struct FlowKeys {
    keys: Vec<Vec<u8>>,
    /// This process's epoch, mixed into every MAC that names a connection: connection ids
    /// start over when siprox restarts, so a token from before a restart must not name
    /// whichever new connection got the same id. Kept across reloads (key rotation must
    /// still verify old tokens). A token that names no connection (a dialog between two
    /// UDP peers) is signed without it: such dialogs outlive a restart.
    epoch: u64,
    /// Each key's HMAC state with the key, the label and the epoch already absorbed,
    /// cloned per token: a token costs two or three SHA-256 blocks and no allocation.
    /// (OpenSSL 3's `Signer::new` per token cost ~15 µs each in algorithm fetches, a third
    /// of a call.)
    keyed: Vec<HmacSha256>,
    /// The same with epoch 0, for tokens that name no connection.
    keyed0: Vec<HmacSha256>,
}

impl PartialEq for FlowKeys {
    fn eq(&self, other: &FlowKeys) -> bool {
        self.keys == other.keys && self.epoch == other.epoch
    }
}

impl Eq for FlowKeys {}

/// `None` never happens for HMAC (RFC 2104 §2 takes a key of any length); the type allows
/// it, so it is handled rather than unwrapped.
fn keyed(key: &[u8], epoch: u64) -> Option<HmacSha256> {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).ok()?;
    m.update(LABEL);
    m.update(&epoch.to_be_bytes());
    Some(m)
}

impl std::fmt::Debug for FlowKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes.
        write!(f, "FlowKeys({} keys)", self.keys.len())
    }
}

impl FlowKeys {
    /// From key bytes, the signing key first.
    pub fn new(keys: Vec<Vec<u8>>) -> Result<FlowKeys, FlowKeyError> {
        if keys.is_empty() {
            return Err(FlowKeyError::Empty);
        }
        if keys.len() > MAX_KEYS {
            return Err(FlowKeyError::TooMany);
        }
        if keys.iter().any(|k| k.len() < MIN_KEY_LEN) {
            return Err(FlowKeyError::TooShort);
        }
        let keyed = keys
            .iter()
            .map(|k| keyed(k, 0))
            .collect::<Option<Vec<_>>>()
            .ok_or(FlowKeyError::TooShort)?;
        Ok(FlowKeys {
            keys,
            epoch: 0,
            keyed0: keyed.clone(),
            keyed,
        })
    }

    /// A key file's text: one key per line (its characters are the key), `#` comments and
    /// blank lines ignored, the signing key first.
    pub fn parse(text: &str) -> Result<FlowKeys, FlowKeyError> {
        FlowKeys::new(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| l.as_bytes().to_vec())
                .collect(),
        )
    }

    /// One fresh random key, as the text of a key file (64 hex digits and a newline).
    pub fn generate_file() -> Result<String, openssl::error::ErrorStack> {
        let mut b = [0u8; 32];
        openssl::rand::rand_bytes(&mut b)?;
        let mut s: String = b.iter().map(|x| format!("{x:02x}")).collect();
        s.push('\n');
        Ok(s)
    }

    /// A random key for this process only (tests, and a core built without the runtime).
    pub fn random() -> FlowKeys {
        let text = FlowKeys::generate_file().unwrap_or_default();
        FlowKeys::parse(&text)
            .unwrap_or_else(|_| {
                // rand_bytes failing leaves no good key; a key nobody knows still refuses
                // every token that siprox did not make in this process.
                let key = format!("{:p}{:?}", &text, std::time::SystemTime::now()).into_bytes();
                let k: Vec<HmacSha256> = keyed(&key, 0).into_iter().collect();
                FlowKeys {
                    keyed0: k.clone(),
                    keyed: k,
                    keys: vec![key],
                    epoch: 0,
                }
            })
            .with_epoch(FlowKeys::new_epoch())
    }

    /// The same keys under `epoch` (the runtime draws one per process with
    /// [`FlowKeys::new_epoch`] and keeps it across reloads).
    pub fn with_epoch(mut self, epoch: u64) -> FlowKeys {
        self.epoch = epoch;
        self.keyed = self.keys.iter().filter_map(|k| keyed(k, epoch)).collect();
        self.keyed0 = self.keys.iter().filter_map(|k| keyed(k, 0)).collect();
        self
    }

    /// This key set's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A random epoch for a new process (0 only if the random source fails, which makes
    /// tokens survive restarts as before, never refuses good ones).
    pub fn new_epoch() -> u64 {
        let mut b = [0u8; 8];
        match openssl::rand::rand_bytes(&mut b) {
            Ok(()) => u64::from_be_bytes(b),
            Err(_) => 0,
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keyed states a token for connections `a` and `b` is signed with.
    fn states(&self, a: u64, b: u64) -> &[HmacSha256] {
        if a == 0 && b == 0 {
            &self.keyed0
        } else {
            &self.keyed
        }
    }

    fn mac(keyed: &HmacSha256, a: u64, b: u64, dialog: &[u8]) -> [u8; MAC_LEN] {
        let mut m = keyed.clone();
        m.update(&a.to_be_bytes());
        m.update(&b.to_be_bytes());
        // Length-prefixed: the ids are fixed-size, the dialog is what remains.
        m.update(&(dialog.len() as u64).to_be_bytes());
        m.update(dialog);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// The token for a flow between connections `a` and `b` (0: no connection on that
    /// side) in the dialog (or transaction) `dialog` (its Call-ID): `a.b.mac`, ids and MAC
    /// in lower-case hex. `None` only without a key.
    pub fn token(&self, a: u64, b: u64, dialog: &[u8]) -> Option<String> {
        let mut s = String::with_capacity(2 * 16 + 2 + 2 * MAC_LEN);
        self.write_token(&mut s, "", a, b, dialog).then_some(s)
    }

    /// [`token`](Self::token) appended to `out` after `prefix` (e.g. `;fl=`), without a
    /// String of its own; false (and nothing written) without a key.
    pub fn write_token(
        &self,
        out: &mut String,
        prefix: &str,
        a: u64,
        b: u64,
        dialog: &[u8],
    ) -> bool {
        let Some(state) = self.states(a, b).first() else {
            return false;
        };
        let mac = FlowKeys::mac(state, a, b, dialog);
        let s = out;
        s.push_str(prefix);
        super::text::push_hex(s, a);
        s.push('.');
        super::text::push_hex(s, b);
        s.push('.');
        // By table: `write!("{x:02x}")` per byte went through the formatter 32 times a
        // token, and every forwarded request carries one or two.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for x in mac {
            s.push(char::from(HEX[usize::from(x >> 4)]));
            s.push(char::from(HEX[usize::from(x & 0xf)]));
        }
        true
    }

    /// The two connection ids of a token siprox made with one of these keys for `dialog`.
    pub fn verify(&self, token: &str, dialog: &[u8]) -> Result<(u64, u64), FlowTokenError> {
        let mut parts = token.split('.');
        let (Some(a), Some(b), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(FlowTokenError::Malformed);
        };
        let id = |s: &str| {
            if s.is_empty() || s.len() > 16 {
                return None;
            }
            u64::from_str_radix(s, 16).ok()
        };
        let (Some(a), Some(b)) = (id(a), id(b)) else {
            return Err(FlowTokenError::Malformed);
        };
        let got = unhex(mac).ok_or(FlowTokenError::Malformed)?;
        // Every key is tried, so that the time taken does not say which one matched.
        let mut ok = false;
        for k in self.states(a, b) {
            ok |= memcmp::eq(&FlowKeys::mac(k, a, b, dialog), &got);
        }
        if ok {
            Ok((a, b))
        } else {
            Err(FlowTokenError::BadMac)
        }
    }
}

impl FlowKeys {
    fn node_mac(
        key: &[u8],
        epoch: u64,
        conn: u64,
        transport: Transport,
        node: &str,
    ) -> Option<[u8; MAC_LEN]> {
        let mut m = <HmacSha256 as Mac>::new_from_slice(key).ok()?;
        m.update(NODE_LABEL);
        m.update(&epoch.to_be_bytes());
        m.update(&conn.to_be_bytes());
        m.update(transport.param().as_bytes());
        m.update(b"\0");
        m.update(node.as_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        Some(out)
    }

    /// The node token (`nf=`, cluster routing) for connection `conn` (of `transport`, which
    /// the owner needs for its Via and Record-Route) held by cluster node `node`:
    /// `conn.transport.mac`. Minted by the owning node when it saves a binding and checked
    /// only by that node, so it carries this process's epoch (a restarted node refuses the
    /// tokens of its previous life, whose connection ids start over). It is not bound to a
    /// dialog: the caller must accept it only from a peer node. `None` only without a key.
    pub fn node_token(&self, conn: u64, transport: Transport, node: &str) -> Option<String> {
        let mac = FlowKeys::node_mac(self.keys.first()?, self.epoch, conn, transport, node)?;
        use std::fmt::Write as _;
        let mut s = String::with_capacity(16 + 5 + 2 * MAC_LEN);
        let _ = write!(s, "{conn:x}.{}.", transport.param());
        for x in mac {
            let _ = write!(s, "{x:02x}");
        }
        Some(s)
    }

    /// The connection (and its transport) a node token of `node` names, if one of these
    /// keys made it in this process.
    pub fn verify_node(&self, token: &str, node: &str) -> Result<(u64, Transport), FlowTokenError> {
        let mut parts = token.split('.');
        let (Some(conn), Some(t), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(FlowTokenError::Malformed);
        };
        if conn.is_empty() || conn.len() > 16 {
            return Err(FlowTokenError::Malformed);
        }
        let transport = match Transport::parse(t) {
            Some(t @ (Transport::Tcp | Transport::Tls)) => t,
            _ => return Err(FlowTokenError::Malformed),
        };
        let conn = u64::from_str_radix(conn, 16).map_err(|_| FlowTokenError::Malformed)?;
        let got = unhex(mac).ok_or(FlowTokenError::Malformed)?;
        let mut ok = false;
        for k in &self.keys {
            if let Some(want) = FlowKeys::node_mac(k, self.epoch, conn, transport, node) {
                ok |= memcmp::eq(&want, &got);
            }
        }
        if ok && conn != 0 {
            Ok((conn, transport))
        } else {
            Err(FlowTokenError::BadMac)
        }
    }
}

fn unhex(s: &str) -> Option<[u8; MAC_LEN]> {
    let b = s.as_bytes();
    if b.len() != 2 * MAC_LEN {
        return None;
    }
    let mut out = [0u8; MAC_LEN];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &[u8] = b"call-1@example.com";

    fn keys(lines: &str) -> FlowKeys {
        FlowKeys::parse(lines).expect("valid keys")
    }

    #[test]
    fn a_token_verifies_and_any_change_is_refused() {
        let k = keys(&"a".repeat(32));
        let t = k.token(0x2a, 7, D).expect("token");
        assert_eq!(k.verify(&t, D), Ok((0x2a, 7)));
        let (ids, mac) = t.rsplit_once('.').expect("three parts");
        assert_eq!(ids, "2a.7");
        assert_eq!(mac.len(), 2 * MAC_LEN);
        assert!(
            mac.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{t}"
        );
        // Another flow with the same MAC, a flipped MAC bit, a truncated MAC.
        let forged = format!("{}.{mac}", ids.replace("2a.7", "2a.8"));
        assert_eq!(k.verify(&forged, D), Err(FlowTokenError::BadMac));
        let mut flipped = mac.to_owned().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = format!("{ids}.{}", String::from_utf8(flipped).expect("hex"));
        assert_eq!(k.verify(&flipped, D), Err(FlowTokenError::BadMac));
        assert_eq!(
            k.verify(&format!("{ids}.{}", &mac[..10]), D),
            Err(FlowTokenError::Malformed)
        );
        for bad in [
            "2a.7",
            "",
            "..",
            "x.7.00",
            "2a.7.zz",
            "1.2.3.4",
            "11111111111111111.1.00",
        ] {
            assert!(k.verify(bad, D).is_err(), "{bad}");
        }
        // Another key refuses it.
        assert_eq!(
            keys(&"b".repeat(32)).verify(&t, D),
            Err(FlowTokenError::BadMac)
        );
    }

    #[test]
    fn a_token_from_another_process_is_refused() {
        // The same key file after a restart: connection ids start over, tokens do not carry.
        let before = keys("k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1").with_epoch(7);
        let after = keys("k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1").with_epoch(8);
        let t = before.token(2, 1, D).expect("token");
        assert_eq!(before.verify(&t, D), Ok((2, 1)));
        assert_eq!(after.verify(&t, D), Err(FlowTokenError::BadMac));
        // A reload keeps the epoch: the same key set verifies what it signed.
        let reloaded = keys("k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1k1").with_epoch(before.epoch());
        assert_eq!(reloaded.verify(&t, D), Ok((2, 1)));
        assert_ne!(FlowKeys::new_epoch(), FlowKeys::new_epoch());
    }

    #[test]
    fn a_token_is_bound_to_its_dialog() {
        let k = keys(&"d".repeat(32));
        let t = k.token(0, 0, b"call-a").expect("token");
        assert_eq!(k.verify(&t, b"call-a"), Ok((0, 0)));
        assert_eq!(k.verify(&t, b"call-b"), Err(FlowTokenError::BadMac));
        assert_eq!(k.verify(&t, b""), Err(FlowTokenError::BadMac));
        let t = k.token(3, 4, b"call-a").expect("token");
        assert_eq!(k.verify(&t, b"call-a"), Ok((3, 4)));
        assert_eq!(k.verify(&t, b"call-a "), Err(FlowTokenError::BadMac));
    }

    #[test]
    fn a_token_without_connections_outlives_a_restart() {
        // Two UDP peers: no connection id to be reused, so the dialog survives a restart.
        let before = keys(&"e".repeat(32)).with_epoch(7);
        let after = keys(&"e".repeat(32)).with_epoch(8);
        let t = before.token(0, 0, D).expect("token");
        assert_eq!(after.verify(&t, D), Ok((0, 0)));
        let t = before.token(0, 5, D).expect("token");
        assert_eq!(after.verify(&t, D), Err(FlowTokenError::BadMac));
    }

    #[test]
    fn rotation_keeps_tokens_of_the_previous_key() {
        let old = keys(&"o".repeat(40));
        let t = old.token(1, 2, D).expect("token");
        let rotated = keys(&format!(
            "# new key first\n{}\n\n{}\n",
            "n".repeat(40),
            "o".repeat(40)
        ));
        assert_eq!(rotated.verify(&t, D), Ok((1, 2)));
        assert_ne!(
            rotated.token(1, 2, D),
            old.token(1, 2, D),
            "the new key signs"
        );
        let dropped = keys(&"n".repeat(40));
        assert!(dropped.verify(&t, D).is_err());
    }

    #[test]
    fn node_tokens_are_not_flow_tokens() {
        let k = keys(&"n".repeat(32)).with_epoch(5);
        let t = k.node_token(0x2a, Transport::Tls, "sip1").expect("token");
        assert_eq!(k.verify_node(&t, "sip1"), Ok((0x2a, Transport::Tls)));
        let tcp = t.replace(".tls.", ".tcp.");
        assert_eq!(k.verify_node(&tcp, "sip1"), Err(FlowTokenError::BadMac));
        // Another node's name, another process, another key: refused.
        assert_eq!(k.verify_node(&t, "sip2"), Err(FlowTokenError::BadMac));
        let restarted = keys(&"n".repeat(32)).with_epoch(6);
        assert_eq!(
            restarted.verify_node(&t, "sip1"),
            Err(FlowTokenError::BadMac)
        );
        // An `fl=` token never verifies as a node token, nor the other way round, even
        // with the same ids.
        let fl = k.token(0x2a, 0, b"").expect("token");
        assert!(k.verify_node(&fl, "sip1").is_err());
        let (conn, mac) = t.split_once(".tls.").expect("three parts");
        assert!(k.verify(&format!("{conn}.0.{mac}"), b"").is_err());
        assert!(k.verify(&t, b"").is_err());
        for bad in [
            "",
            ".",
            "2a.tls.",
            "2a.tls.zz",
            "x.tls.00",
            "2a.udp.00",
            "2a.00",
        ] {
            assert!(k.verify_node(bad, "sip1").is_err(), "{bad}");
        }
        let zero = k.node_token(0, Transport::Tcp, "sip1").expect("token");
        assert!(k.verify_node(&zero, "sip1").is_err(), "no connection 0");
    }

    #[test]
    fn key_files_are_checked() {
        assert_eq!(
            FlowKeys::parse("# only a comment\n"),
            Err(FlowKeyError::Empty)
        );
        assert_eq!(FlowKeys::parse("short\n"), Err(FlowKeyError::TooShort));
        let five = format!("{}\n", "k".repeat(32)).repeat(5);
        assert_eq!(FlowKeys::parse(&five), Err(FlowKeyError::TooMany));
        let g = FlowKeys::generate_file().expect("random");
        assert_eq!(FlowKeys::parse(&g).map(|k| k.len()), Ok(1));
        assert_ne!(FlowKeys::random(), FlowKeys::random());
        assert!(!format!("{:?}", keys(&"s".repeat(32))).contains("sss"));
    }
}
