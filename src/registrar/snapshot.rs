//! The snapshot format of the in-memory location store: JSON, versioned, written by the
//! runtime (temp file + rename) on shutdown and at intervals, read back at start. Only the
//! format lives here (no files). A restarted process holds no connections, so restored
//! stream flows lose their connection id: those contacts answer 480 until the phone
//! re-registers (which phones do as soon as they notice their connection closed).

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::binding::{Binding, Flow};
use super::store::{LocationStore, StoreError};
use crate::proxy::{ConnId, Transport};

const FORMAT: &str = "siprox-location";
const VERSION: u32 = 1;

/// Why a snapshot could not be read. The runtime logs it and starts empty.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is not valid JSON for this format: {0}")]
    Syntax(#[from] serde_json::Error),
    #[error("not a siprox location snapshot (format {0:?})")]
    Format(String),
    #[error("unsupported snapshot version {0} (this siprox reads {VERSION})")]
    Version(u32),
    #[error("binding {index} of {aor}: {what}")]
    Binding {
        aor: String,
        index: usize,
        what: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFile {
    pub format: String,
    pub version: u32,
    pub saved_at: i64,
    pub aors: Vec<SnapshotAor>,
}

/// One AoR with its bindings (also the shape of `ul.dump`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotAor {
    pub aor: String,
    pub bindings: Vec<SnapshotBinding>,
}

/// One binding, with the flow flattened to plain fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBinding {
    pub contact: String,
    pub expires: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<u16>,
    pub call_id: String,
    pub cseq: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
    pub transport: String,
    pub source: SocketAddr,
    pub local: SocketAddr,
    /// Written for `ul.dump`; ignored when read back (no connection survives a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reg_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub updated: i64,
}

impl From<&Binding> for SnapshotBinding {
    fn from(b: &Binding) -> Self {
        SnapshotBinding {
            contact: b.contact.clone(),
            expires: b.expires,
            q: b.q,
            call_id: b.call_id.clone(),
            cseq: b.cseq,
            path: b.path.clone(),
            transport: b.flow.transport.as_str().to_owned(),
            source: b.flow.source,
            local: b.flow.local,
            conn: b.flow.conn.map(|c| c.0),
            node: b.flow.node.as_deref().map(str::to_owned),
            instance: b.instance.clone(),
            reg_id: b.reg_id,
            user_agent: b.user_agent.clone(),
            updated: b.updated,
        }
    }
}

impl SnapshotBinding {
    /// Back to a binding; the connection id is dropped (see the module doc).
    fn into_binding(self, nodes: &mut Vec<Arc<str>>) -> Result<Binding, &'static str> {
        let transport = Transport::parse(&self.transport).ok_or("unknown transport")?;
        if self.contact.is_empty() || self.call_id.is_empty() {
            return Err("empty contact or Call-ID");
        }
        // One shared string per node name, as in a live store.
        let node = self.node.map(|n| match nodes.iter().find(|x| ***x == *n) {
            Some(x) => x.clone(),
            None => {
                let a: Arc<str> = n.into();
                nodes.push(a.clone());
                a
            }
        });
        Ok(Binding {
            contact: self.contact,
            expires: self.expires,
            q: self.q.filter(|&q| q <= 1000),
            call_id: self.call_id,
            cseq: self.cseq,
            path: self.path,
            flow: Flow {
                transport,
                source: self.source,
                local: self.local,
                conn: None::<ConnId>,
                node,
                node_route: None,
            },
            instance: self.instance,
            reg_id: self.reg_id,
            user_agent: self.user_agent,
            updated: self.updated,
        })
    }
}

/// Every AoR of `store` with its bindings (expired ones too), sorted by AoR: the content of
/// a snapshot and of `ul.dump`.
pub fn dump(store: &dyn LocationStore) -> Result<Vec<SnapshotAor>, StoreError> {
    let mut aors = Vec::with_capacity(store.len());
    store.for_each(&mut |aor, bindings| {
        aors.push(SnapshotAor {
            aor: aor.to_owned(),
            bindings: bindings.iter().map(SnapshotBinding::from).collect(),
        })
    })?;
    aors.sort_by(|a, b| a.aor.cmp(&b.aor));
    Ok(aors)
}

/// Serialise `store` (taken at `now`) as snapshot bytes.
pub fn to_snapshot(store: &dyn LocationStore, now: i64) -> Result<Vec<u8>, SnapshotError> {
    let file = SnapshotFile {
        format: FORMAT.to_owned(),
        version: VERSION,
        saved_at: now,
        aors: dump(store)?,
    };
    Ok(serde_json::to_vec(&file)?)
}

/// Parse snapshot bytes: every AoR with its bindings still current at `now`; expired
/// bindings (and AoRs left empty) are dropped, connection ids are cleared.
pub fn from_snapshot(bytes: &[u8], now: i64) -> Result<Vec<(String, Vec<Binding>)>, SnapshotError> {
    let file: SnapshotFile = serde_json::from_slice(bytes)?;
    if file.format != FORMAT {
        return Err(SnapshotError::Format(file.format));
    }
    if file.version != VERSION {
        return Err(SnapshotError::Version(file.version));
    }
    let mut nodes = Vec::new();
    let mut out = Vec::with_capacity(file.aors.len());
    for a in file.aors {
        let mut bindings = Vec::with_capacity(a.bindings.len());
        for (index, b) in a.bindings.into_iter().enumerate() {
            if b.expires <= now {
                continue;
            }
            let b = b
                .into_binding(&mut nodes)
                .map_err(|what| SnapshotError::Binding {
                    aor: a.aor.clone(),
                    index,
                    what,
                })?;
            bindings.push(b);
        }
        if !bindings.is_empty() {
            out.push((a.aor, bindings));
        }
    }
    Ok(out)
}

/// [`from_snapshot`] into `store` (each AoR replaced). Returns the number of bindings loaded.
pub fn restore(store: &dyn LocationStore, bytes: &[u8], now: i64) -> Result<usize, SnapshotError> {
    let mut n = 0;
    for (aor, bindings) in from_snapshot(bytes, now)? {
        n += bindings.len();
        store.put(&aor, bindings)?;
    }
    Ok(n)
}
