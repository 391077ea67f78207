//! RFC 5626 §5.2 flow tokens: the `fl=` parameter siprox puts in its Record-Route (and so
//! in every in-dialog Route) names the connections on both sides of a dialog, signed with
//! an HMAC-SHA256 over them and the dialog's Call-ID under a secret key, so that a peer
//! cannot name a connection siprox did not give it, nor reuse a Route of one dialog (or
//! write one) to have siprox relay requests of another. Node tokens (`nf=`, cluster
//! routing) name one connection of the node that made them, under a label of their own so
//! that neither kind verifies as the other. Sans-IO: the runtime reads or generates the key
//! file; this takes key bytes. Must never accept a token whose MAC does not verify, and
//! never compare MACs in variable time.
//!
//! A call's messages name the same flow again and again (the INVITE's Record-Route and
//! Via, its responses, the ACK and BYE with their own Record-Route and Via): each thread
//! keeps the signing key's MAC of the flows it recently signed or verified (see [`Memo`]),
//! so that most tokens cost a table look-up instead of an HMAC. The memo changes no
//! answer: it holds only MACs computed under the same key set (its generation), compared
//! in full to what a token carries, in constant time as a computed one is.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Names these keys and epoch in the per-thread [`Memo`]: drawn afresh for every key
    /// set built (a reload, another epoch), kept by clones (the same keys).
    generation: u64,
}

/// The last generation handed out (0 is never one: it marks an empty memo slot).
static GENERATION: AtomicU64 = AtomicU64::new(0);

fn next_generation() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed) + 1
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
            generation: next_generation(),
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
                    generation: next_generation(),
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
        self.generation = next_generation();
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
        let Some(t) = self.token_text(a, b, dialog) else {
            return false;
        };
        out.push_str(prefix);
        out.push_str(t.as_str());
        true
    }

    /// [`token`](Self::token) on the stack: built once, written into as many header
    /// fields as carry it (a forward's Record-Routes and Via name the same flow).
    pub(crate) fn token_text(&self, a: u64, b: u64, dialog: &[u8]) -> Option<TokenText> {
        let mac = self.signing_mac(a, b, dialog)?;
        let mut t = TokenText::new();
        t.push_hex(a);
        t.push(b'.');
        t.push_hex(b);
        t.push(b'.');
        t.push_bytes_hex(&mac);
        Some(t)
    }

    /// The two connection ids of a token siprox made with one of these keys for `dialog`.
    pub fn verify(&self, token: &str, dialog: &[u8]) -> Result<(u64, u64), FlowTokenError> {
        // `a.b.mac`: a third dot leaves a `.` in the MAC, which is then not hex.
        let Some((a, rest)) = token.split_once('.') else {
            return Err(FlowTokenError::Malformed);
        };
        let Some((b, mac)) = rest.split_once('.') else {
            return Err(FlowTokenError::Malformed);
        };
        let (Some(a), Some(b)) = (hex_id(a), hex_id(b)) else {
            return Err(FlowTokenError::Malformed);
        };
        let got = unhex(mac).ok_or(FlowTokenError::Malformed)?;
        // The signing key's MAC of this flow, if this thread made or checked it lately.
        if let Some(known) = Memo::get(self.generation, a, b, dialog) {
            if memcmp::eq(&known, &got) {
                return Ok((a, b));
            }
        }
        // Every key is tried, so that the time taken does not say which one matched.
        let mut ok = false;
        let mut signing = None;
        for k in self.states(a, b) {
            let mac = FlowKeys::mac(k, a, b, dialog);
            signing.get_or_insert(mac);
            ok |= memcmp::eq(&mac, &got);
        }
        if !ok {
            return Err(FlowTokenError::BadMac);
        }
        // Remembered only for a token that verified: a forged one cannot evict good ones.
        if let Some(mac) = signing {
            Memo::put(self.generation, a, b, dialog, mac);
        }
        Ok((a, b))
    }

    /// The signing key's MAC of the flow between `a` and `b` in `dialog`: from this
    /// thread's memo, else computed (and remembered). `None` without a key.
    fn signing_mac(&self, a: u64, b: u64, dialog: &[u8]) -> Option<[u8; MAC_LEN]> {
        if let Some(mac) = Memo::get(self.generation, a, b, dialog) {
            return Some(mac);
        }
        let mac = FlowKeys::mac(self.states(a, b).first()?, a, b, dialog);
        Memo::put(self.generation, a, b, dialog, mac);
        Some(mac)
    }
}

/// Slots of each thread's memo (direct-mapped): the calls in progress on a thread find
/// their flows there between the INVITE and the BYE's response, unless another flow
/// landed in their slot meanwhile: at 64 calls in flight (the invite benchmark, one
/// worker) 256 slots left 1.7 MAC computations per call, 1024 leave 1.2 (one is the
/// INVITE's own). About 136 KiB per thread, allocated on its first flow token.
const MEMO_SLOTS: usize = 1024;
/// Longest dialog (Call-ID) remembered; a longer one is always computed.
const MEMO_DIALOG: usize = 96;

/// One flow's signing MAC: under key set `generation`, between `a` and `b`, in the dialog
/// `dialog[..dialog_len]`.
#[derive(Clone, Copy)]
struct MemoSlot {
    /// 0: empty.
    generation: u64,
    a: u64,
    b: u64,
    mac: [u8; MAC_LEN],
    dialog_len: u8,
    dialog: [u8; MEMO_DIALOG],
}

const EMPTY_SLOT: MemoSlot = MemoSlot {
    generation: 0,
    a: 0,
    b: 0,
    mac: [0; MAC_LEN],
    dialog_len: 0,
    dialog: [0; MEMO_DIALOG],
};

/// Each thread's recently signed or verified flows (no lock: a worker thread's own). A
/// slot answers only for the exact generation, ids and dialog it was filled for; a new
/// flow in the same slot replaces it.
struct Memo;

thread_local! {
    static MEMO: RefCell<Vec<MemoSlot>> = const { RefCell::new(Vec::new()) };
}

impl Memo {
    /// The slot of a flow: a cheap mix of its ids and dialog (which slot says nothing
    /// about validity: every field is compared in full).
    fn slot(a: u64, b: u64, dialog: &[u8]) -> usize {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut h = (a ^ b.rotate_left(29) ^ dialog.len() as u64).wrapping_mul(K);
        // Whole words loaded as they are; only the last, partial one is copied (a copy of
        // a variable length per word was most of a look-up).
        let mut words = dialog.chunks_exact(8);
        let mut mix = |w: u64| {
            h = (h ^ w).wrapping_mul(K);
            h ^= h >> 31;
        };
        for chunk in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            mix(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            mix(u64::from_le_bytes(w));
        }
        (h >> 40) as usize % MEMO_SLOTS
    }

    fn get(generation: u64, a: u64, b: u64, dialog: &[u8]) -> Option<[u8; MAC_LEN]> {
        if dialog.len() > MEMO_DIALOG {
            return None;
        }
        MEMO.with(|m| {
            let m = m.try_borrow().ok()?;
            let s = m.get(Memo::slot(a, b, dialog))?;
            (s.generation == generation
                && s.a == a
                && s.b == b
                && s.dialog.get(..usize::from(s.dialog_len)) == Some(dialog))
            .then_some(s.mac)
        })
    }

    fn put(generation: u64, a: u64, b: u64, dialog: &[u8], mac: [u8; MAC_LEN]) {
        let Ok(len) = u8::try_from(dialog.len()) else {
            return;
        };
        if dialog.len() > MEMO_DIALOG {
            return;
        }
        MEMO.with(|m| {
            let Ok(mut m) = m.try_borrow_mut() else {
                return;
            };
            if m.is_empty() {
                m.resize(MEMO_SLOTS, EMPTY_SLOT);
            }
            if let Some(s) = m.get_mut(Memo::slot(a, b, dialog)) {
                s.generation = generation;
                s.a = a;
                s.b = b;
                s.mac = mac;
                s.dialog_len = len;
                if let Some(d) = s.dialog.get_mut(..dialog.len()) {
                    d.copy_from_slice(dialog);
                }
            }
        });
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

/// A flow token as text: two ids of at most 16 hex digits, two dots, the MAC in hex.
pub(crate) type TokenText = super::text::HexBuf<{ 2 * 16 + 2 + 2 * MAC_LEN }>;

/// The value of a hex digit (either case), as `char::to_digit(16)` reads it.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A connection id: 1 to 16 characters read as `u64::from_str_radix(s, 16)` reads them
/// (which takes a leading `+`).
fn hex_id(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let digits = match s.as_bytes() {
        [b'+', rest @ ..] if !rest.is_empty() => rest,
        b => b,
    };
    digits
        .iter()
        .try_fold(0u64, |n, &c| Some(n << 4 | u64::from(hex_digit(c)?)))
}

fn unhex(s: &str) -> Option<[u8; MAC_LEN]> {
    let b = s.as_bytes();
    if b.len() != 2 * MAC_LEN {
        return None;
    }
    let mut out = [0u8; MAC_LEN];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
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
    fn the_memo_never_changes_an_answer() {
        let k = keys(&"m".repeat(32)).with_epoch(9);
        let t = k.token(5, 0, D).expect("token");
        // Minted, then verified from the memo; the same token as without it.
        assert_eq!(k.verify(&t, D), Ok((5, 0)));
        let fresh = FlowKeys::mac(&k.keyed[0], 5, 0, D);
        assert!(t.ends_with(&fresh.iter().map(|x| format!("{x:02x}")).collect::<String>()));
        // The flow is remembered: a wrong MAC for it is still refused, another dialog too.
        let (ids, mac) = t.rsplit_once('.').expect("three parts");
        let mut flipped = mac.to_owned().into_bytes();
        flipped[23] = if flipped[23] == b'0' { b'1' } else { b'0' };
        let flipped = format!("{ids}.{}", String::from_utf8(flipped).expect("hex"));
        assert_eq!(k.verify(&flipped, D), Err(FlowTokenError::BadMac));
        assert_eq!(
            k.verify(&t, b"call-1@example.co"),
            Err(FlowTokenError::BadMac)
        );
        assert_eq!(
            k.verify(&t, b"call-1@example.com."),
            Err(FlowTokenError::BadMac)
        );
        assert_eq!(
            k.verify(&format!("6.0.{mac}"), D),
            Err(FlowTokenError::BadMac)
        );
        // Other keys, or the same keys in another process, on the same thread: refused,
        // although this thread remembers the flow under the first key set.
        let other = keys(&"n".repeat(32)).with_epoch(9);
        assert_eq!(other.verify(&t, D), Err(FlowTokenError::BadMac));
        let restarted = keys(&"m".repeat(32)).with_epoch(10);
        assert_eq!(restarted.verify(&t, D), Err(FlowTokenError::BadMac));
        // A reload with the same keys and epoch verifies it (computed again).
        let reloaded = keys(&"m".repeat(32)).with_epoch(9);
        assert_eq!(reloaded.verify(&t, D), Ok((5, 0)));
        assert_eq!(reloaded.token(5, 0, D), Some(t.clone()));
        // A rotated key set: the new key signs, the old token still verifies.
        let rotated = keys(&format!("{}\n{}\n", "r".repeat(32), "m".repeat(32))).with_epoch(9);
        assert_eq!(rotated.verify(&t, D), Ok((5, 0)));
        assert_ne!(rotated.token(5, 0, D), Some(t.clone()));
        assert_eq!(rotated.verify(&t, D), Ok((5, 0)));
        // A dialog too long to remember is computed every time.
        let long = vec![b'x'; 4 * MEMO_DIALOG];
        let t = k.token(1, 2, &long).expect("token");
        assert_eq!(k.verify(&t, &long), Ok((1, 2)));
        assert_eq!(k.verify(&t, &long[1..]), Err(FlowTokenError::BadMac));
    }

    #[test]
    fn flows_sharing_a_memo_slot_replace_each_other() {
        let k = keys(&"s".repeat(32));
        // Enough flows that several land in one slot; every token still verifies, in
        // any order, and only for its own flow.
        let tokens: Vec<_> = (0..4 * MEMO_SLOTS as u64)
            .map(|i| (i, k.token(i, i + 1, D).expect("token")))
            .collect();
        for (i, t) in tokens.iter().rev().chain(tokens.iter()) {
            assert_eq!(k.verify(t, D), Ok((*i, i + 1)));
        }
        let (_, t0) = &tokens[0];
        let (_, mac0) = t0.rsplit_once('.').expect("three parts");
        assert_eq!(
            k.verify(&format!("1.2.{mac0}"), D),
            Err(FlowTokenError::BadMac)
        );
    }

    #[test]
    fn ids_read_as_from_str_radix_reads_them() {
        for s in [
            "",
            "0",
            "+",
            "+0",
            "++1",
            "-1",
            "2a",
            "2A",
            "ffffffffffffffff",
            "+fffffffffffffff",
            "10000000000000000",
            "x",
            "1x",
            " 1",
            "1.",
            "0000000000000001",
        ] {
            let want = if s.is_empty() || s.len() > 16 {
                None
            } else {
                u64::from_str_radix(s, 16).ok()
            };
            assert_eq!(hex_id(s), want, "{s:?}");
        }
        let k = keys(&"h".repeat(32));
        let t = k.token(0x2a, 7, D).expect("token");
        assert_eq!(k.verify(&format!("+{t}"), D), Ok((0x2a, 7)));
        assert_eq!(k.verify(&t.to_uppercase(), D), Ok((0x2a, 7)));
        assert_eq!(
            k.verify(&format!("{t}.0"), D),
            Err(FlowTokenError::Malformed)
        );
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
