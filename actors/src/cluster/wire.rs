//! What siprox writes into Redis and reads back: key names, hash fields, binding values
//! (JSON, the location snapshot's own format plus the owner's advertise URI) and stream
//! ids. Pure functions; a value that does not parse is skipped by the caller, never a panic.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use siprox::proxy::{ConnId, FlowKeys, Transport};
use siprox::registrar::snapshot::SnapshotBinding;
use siprox::registrar::{Binding, Flow};

/// The Redis names of one cluster (`key_prefix`).
#[derive(Debug, Clone)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    /// The hash of one AoR. The AoR is the hash tag: one AoR lives in one Redis Cluster slot.
    pub fn loc(&self, aor: &str) -> String {
        format!("{}:loc:{{{aor}}}", self.prefix)
    }

    /// The pattern a resync scans.
    pub fn loc_pattern(&self) -> String {
        format!("{}:loc:*", self.prefix)
    }

    /// The AoR of a binding hash's key, if it is one.
    pub fn aor_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)?
            .strip_prefix(":loc:{")?
            .strip_suffix('}')
    }

    /// The change stream every node tails.
    pub fn changes(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    /// Set by a node's writer after it pushed its whole store: gone when Redis lost its
    /// data (restarted empty), which the writer checks every `heartbeat`.
    pub fn pushed(&self, node: &str) -> String {
        format!("{}:pushed:{node}", self.prefix)
    }

    /// A node's liveness key.
    pub fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
}

/// A binding's field in its AoR's hash: the owning node, then the contact. The node comes
/// first so that every field has exactly one writer (its node) and a node can tell its own
/// fields apart without reading their values: no read-modify-write race between nodes.
pub fn field(node: &str, contact: &str) -> String {
    format!("{node}|{contact}")
}

/// The node of a field.
pub fn field_node(field: &str) -> Option<&str> {
    field.split_once('|').map(|(n, _)| n)
}

/// A binding as stored in Redis: the snapshot's binding (with the node and the connection
/// id, which the owner needs to reach the phone) and the owner's advertise URI.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    pub advertise: String,
    /// The node token (`nf=`) the owner minted for the binding's connection: what another
    /// node puts in the Route to have the owner deliver over that connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nf: Option<String>,
    pub binding: SnapshotBinding,
}

/// This node's binding as stored: stamped with this node's name and, for a binding bound
/// to a connection, the node token for it (signed with `keys`; none without keys).
#[cfg(test)]
pub fn encode(b: &Binding, node: &str, advertise: &str, keys: Option<&FlowKeys>) -> String {
    encode_with(b, node, advertise, node_token(b, node, keys))
}

/// The node token of `b`'s connection, when it has one and `keys` sign.
pub fn node_token(b: &Binding, node: &str, keys: Option<&FlowKeys>) -> Option<String> {
    match (keys, b.flow.conn) {
        (Some(k), Some(c)) if b.flow.transport.is_stream() => {
            k.node_token(c.0, b.flow.transport, node)
        }
        _ => None,
    }
}

/// What another node routes by, as one number: the contact, the flow (transport, received
/// address, local address, connection), the node token, Path, q, instance and reg-id, and
/// the granted period (`expires - updated`: a replica presents a binding as refreshed on
/// that schedule). Not the expiry, CSeq, Call-ID or User-Agent: a REGISTER that moves only
/// those is a refresh, written to the hash but not announced on the change stream. In
/// memory only (the hasher's keys are fixed, but nothing relies on the value across builds).
pub fn routing_fingerprint(b: &Binding, nf: Option<&str>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.contact.hash(&mut h);
    b.flow.transport.hash(&mut h);
    b.flow.source.hash(&mut h);
    b.flow.local.hash(&mut h);
    b.flow.conn.map(|c| c.0).hash(&mut h);
    nf.hash(&mut h);
    b.path.hash(&mut h);
    b.q.hash(&mut h);
    b.instance.hash(&mut h);
    b.reg_id.hash(&mut h);
    (b.expires - b.updated).hash(&mut h);
    h.finish()
}

/// [`encode`] with the node token already made.
pub fn encode_with(b: &Binding, node: &str, advertise: &str, nf: Option<String>) -> String {
    let mut sb = SnapshotBinding::from(b);
    sb.node = Some(node.to_owned());
    let s = Stored {
        advertise: advertise.to_owned(),
        nf,
        binding: sb,
    };
    serde_json::to_string(&s).unwrap_or_default()
}

/// A stored binding back, with its owner's shared name from `intern`; `None` when the value
/// is not one, or names no node.
pub fn decode(value: &[u8], intern: &dyn Fn(&str) -> Arc<str>) -> Option<Binding> {
    from_stored(serde_json::from_slice(value).ok()?, intern)
}

fn from_stored(s: Stored, intern: &dyn Fn(&str) -> Arc<str>) -> Option<Binding> {
    let b = s.binding;
    let transport = Transport::parse(&b.transport)?;
    let node_route = s.nf.map(|nf| node_route(&s.advertise, &nf));
    let node = intern(b.node.as_deref()?);
    Some(Binding {
        contact: b.contact,
        expires: b.expires,
        q: b.q.filter(|&q| q <= 1000),
        call_id: b.call_id,
        cseq: b.cseq,
        path: b.path,
        flow: Flow {
            transport,
            source: b.source,
            local: b.local,
            conn: b.conn.map(ConnId),
            node: Some(node),
            node_route,
        },
        instance: b.instance,
        reg_id: b.reg_id,
        user_agent: b.user_agent,
        updated: b.updated,
    })
}

/// The Route value that reaches a flow through its owning node: the node's advertise URI,
/// loose-routing, with the node token (RFC 3327 / RFC 5626 edge model).
pub fn node_route(advertise: &str, nf: &str) -> Arc<str> {
    // The advertise URI was checked to be a SIP URI without `<>` when the config was read.
    Arc::from(format!("<{advertise};lr;nf={nf}>"))
}

/// A stream entry's batch (a JSON array of stored bindings) back; entries that do not
/// parse are left out, a batch that is not an array is `None`.
pub fn decode_batch(batch: &[u8], intern: &dyn Fn(&str) -> Arc<str>) -> Option<Vec<Binding>> {
    let values: Vec<serde_json::Value> = serde_json::from_slice(batch).ok()?;
    Some(
        values
            .into_iter()
            .filter_map(|v| from_stored(serde_json::from_value(v).ok()?, intern))
            .collect(),
    )
}

/// A stream entry id (`ms-seq`) as a pair that orders like Redis orders them.
pub fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> Binding {
        Binding {
            contact: "sip:alice@192.0.2.1:5061;transport=tls".into(),
            expires: 1_000_300,
            q: Some(500),
            call_id: "c1".into(),
            cseq: 7,
            path: vec![],
            flow: Flow {
                transport: Transport::Tls,
                source: "192.0.2.1:40000".parse().unwrap(),
                local: "127.0.0.1:5061".parse().unwrap(),
                conn: Some(ConnId(42)),
                node: None,
                node_route: None,
            },
            instance: None,
            reg_id: None,
            user_agent: Some("ua".into()),
            updated: 1_000_000,
        }
    }

    #[test]
    fn a_binding_round_trips_with_its_node_and_connection() {
        let v = encode(&binding(), "a", "sip:10.0.0.1:5071", None);
        let back = decode(v.as_bytes(), &|n| n.into()).unwrap();
        let mut want = binding();
        want.flow.node = Some("a".into());
        assert_eq!(back, want);
        // With keys, the owner's node token rides along and becomes the Route to it.
        let keys = FlowKeys::parse(&"k".repeat(32)).unwrap();
        let signed = encode(&binding(), "a", "sip:10.0.0.1:5071", Some(&keys));
        let back = decode(signed.as_bytes(), &|n| n.into()).unwrap();
        let nf = keys.node_token(42, Transport::Tls, "a").unwrap();
        assert_eq!(
            back.flow.node_route.as_deref(),
            Some(format!("<sip:10.0.0.1:5071;lr;nf={nf}>").as_str())
        );
        assert_eq!(keys.verify_node(&nf, "a"), Ok((42, Transport::Tls)));
        assert!(decode(b"{}", &|n| n.into()).is_none());
        assert!(decode(b"\xff", &|n| n.into()).is_none());
        let batch = format!("[{v},{{}},{v}]");
        let all = decode_batch(batch.as_bytes(), &|n| n.into()).unwrap();
        assert_eq!(all.len(), 2, "the unreadable one is left out");
        assert!(decode_batch(b"{}", &|n| n.into()).is_none());
    }

    #[test]
    fn a_refresh_keeps_the_fingerprint_and_a_new_flow_changes_it() {
        let b = binding();
        let fp = routing_fingerprint(&b, Some("t"));
        let mut refreshed = binding();
        refreshed.expires += 250;
        refreshed.updated += 250;
        refreshed.cseq += 1;
        refreshed.call_id = "other".into();
        assert_eq!(routing_fingerprint(&refreshed, Some("t")), fp);
        let mut moved = binding();
        moved.flow.conn = Some(ConnId(43));
        assert_ne!(routing_fingerprint(&moved, Some("t")), fp);
        assert_ne!(routing_fingerprint(&b, Some("u")), fp, "a new node token");
        let mut longer = binding();
        longer.expires += 300;
        assert_ne!(routing_fingerprint(&longer, Some("t")), fp, "a new period");
        let mut q = binding();
        q.q = Some(1000);
        assert_ne!(routing_fingerprint(&q, Some("t")), fp);
    }

    #[test]
    fn keys_carry_the_aor_as_hash_tag() {
        let k = Keys {
            prefix: "siprox".into(),
        };
        let key = k.loc("alice@example.com");
        assert_eq!(key, "siprox:loc:{alice@example.com}");
        assert_eq!(k.aor_of(&key), Some("alice@example.com"));
        assert_eq!(k.aor_of("other:loc:{x}"), None);
        assert_eq!(field_node(&field("a", "sip:x|y")), Some("a"));
    }

    #[test]
    fn stream_ids_order_numerically() {
        assert!(stream_id("10-0") > stream_id("9-5"));
        assert!(stream_id("10-1") > stream_id("10-0"));
        assert_eq!(stream_id("0"), Some((0, 0)));
        assert_eq!(stream_id("x-1"), None);
    }
}
