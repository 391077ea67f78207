//! The management methods as the runtime implements them (the `Rpc` actor's
//! [`siprox::rpc::Handler`]), the reload gate that coalesces and rate-limits reloads, and the
//! adapters to subsystems that other work delivers (marked ADAPTER). Must never block the
//! control arbiter: every method reads shared state or sends a message and returns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::{AsyncContext, Context};
use serde_json::{json, Map, Value};
use siprox::proxy::{ConnId, Transport};
use siprox::rpc::{CallResult, Fault, FaultKind};
use tracing::{info, warn};

use crate::mgmt::rpc::Rpc;
use crate::state::table::ConnInfo;
use crate::state::{Shared, StatsSnapshot};

/// The method implementations, for one call on the `Rpc` actor.
pub(crate) struct Methods<'a> {
    pub(crate) rpc: &'a mut Rpc,
    pub(crate) ctx: &'a mut Context<Rpc>,
}

impl siprox::rpc::Handler for Methods<'_> {
    fn call(&mut self, method: &str, params: &[Value]) -> CallResult {
        let shared = &self.rpc.shared;
        match method {
            "core.version" => Ok(Value::from(version())),
            "core.uptime" => {
                let now = unix(SystemTime::now());
                let since = unix(self.rpc.started);
                Ok(json!({"now": now, "up_since": since, "uptime": now - since}))
            }
            "core.kill" => {
                info!("core.kill: graceful shutdown requested over RPC");
                self.rpc.schedule_kill(self.ctx);
                Ok(Value::from("shutting down"))
            }
            "core.tcp_list" => Ok(Value::Array(
                shared.table.infos().iter().map(conn_json).collect(),
            )),
            "tls.list" => Ok(Value::Array(
                shared
                    .table
                    .infos()
                    .iter()
                    .filter(|i| i.transport == Transport::Tls)
                    .map(conn_json)
                    .collect(),
            )),
            "tls.info" => Ok(tls_info(&shared.table.infos())),
            "tls.domains" => Ok(Value::Array(adapters::tls_domains(shared))),
            "tls.kill" => {
                let id = params
                    .first()
                    .and_then(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()))
                    .ok_or_else(|| Fault::invalid_params("tls.kill needs a connection id"))?;
                let h = shared
                    .table
                    .get(ConnId(id))
                    .ok_or_else(|| Fault::not_found(format!("no connection {id}")))?;
                h.close();
                Ok(Value::from("closed"))
            }
            "tls.reload" | "cfg.reload" if asks_cluster(params) => {
                // A cluster-wide reload is answered by the `Rpc` actor's waiting path; here
                // only when it cannot be.
                Err(Fault::not_available(if self.rpc.cluster.is_some() {
                    format!("{method} with cluster: only over JSON-RPC")
                } else {
                    format!("{method} with cluster: this node has no [cluster]")
                }))
            }
            "tls.reload" => Ok(Value::from(self.reload(ReloadKind::Tls))),
            "cfg.reload" => Ok(Value::from(self.reload(ReloadKind::Config))),
            "cluster.nodes" => match &self.rpc.cluster {
                Some(c) => Ok(adapters::cluster_nodes(c)),
                None => Err(Fault::not_available(
                    "cluster.nodes: this node has no [cluster]",
                )),
            },
            "ul.dump" | "ul.show" | "ul.rm" => {
                adapters::registrar(shared, self.rpc.cluster.as_deref(), method, params)
            }
            "stats.get" => Ok(stats_json(&shared.stats())),
            m => Err(Fault::method_not_found(m)),
        }
    }
}

impl Methods<'_> {
    fn reload(&mut self, kind: ReloadKind) -> &'static str {
        let gate = &mut self.rpc.reload;
        if let Some(p) = gate.pending {
            // A config reload includes the TLS one: keep the bigger.
            gate.pending = Some(p.max(kind));
            gate.coalesced += 1;
            return "coalesced";
        }
        gate.pending = Some(kind);
        let wait = gate.last_start.map_or(Duration::ZERO, |t| {
            gate.min_interval.saturating_sub(t.elapsed())
        });
        self.ctx.run_later(wait, |act, _ctx| {
            let Some(kind) = act.reload.pending.take() else {
                return;
            };
            act.reload.last_start = Some(Instant::now());
            act.reload.started += 1;
            let res = adapters::start_reload(&act.shared, kind);
            if let Err(e) = &res {
                act.reload.failed += 1;
                warn!(error = %e, ?kind, "reload failed");
            }
            act.reload.last_result = Some((SystemTime::now(), res));
        });
        "queued"
    }
}

/// A `cluster` flag among a reload's params (`"cluster"` or `{"cluster": true}`).
fn asks_cluster(params: &[Value]) -> bool {
    params.iter().any(|p| {
        p.as_str() == Some("cluster") || p.get("cluster").and_then(Value::as_bool) == Some(true)
    })
}

/// What a reload re-reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReloadKind {
    Tls,
    Config,
}

/// Coalesces reload requests: at most one pending, started no sooner than `min_interval`
/// after the previous one (a reload loop costs one rebuild per interval, kamailio#3305).
#[derive(Debug)]
pub(crate) struct ReloadGate {
    pub(crate) min_interval: Duration,
    pub(crate) pending: Option<ReloadKind>,
    pub(crate) last_start: Option<Instant>,
    pub(crate) last_result: Option<(SystemTime, Result<(), String>)>,
    /// Reloads started, failed, and requests folded into a pending one (metrics).
    pub(crate) started: u64,
    pub(crate) failed: u64,
    pub(crate) coalesced: u64,
}

impl ReloadGate {
    pub(crate) fn new(min_interval: Duration) -> ReloadGate {
        ReloadGate {
            min_interval,
            pending: None,
            last_start: None,
            last_result: None,
            started: 0,
            failed: 0,
            coalesced: 0,
        }
    }
}

fn version() -> String {
    format!("siprox {}", env!("CARGO_PKG_VERSION"))
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// One connection as `tls.list` / `core.tcp_list` show it; TLS facts not known are null.
pub(crate) fn conn_json(i: &ConnInfo) -> Value {
    let t = i.tls.as_deref();
    json!({
        "id": i.id.0,
        "peer": i.peer.to_string(),
        "transport": i.transport.to_string(),
        "direction": if i.outgoing { "out" } else { "in" },
        "domain": t.and_then(|t| t.domain.as_deref()),
        "sni": t.and_then(|t| t.server_name.clone())
            .or_else(|| i.server_name.as_deref().map(str::to_owned)),
        "tls_version": t.map(|t| &*t.version),
        "cipher": t.map(|t| &*t.cipher),
        "peer_subject": t.and_then(|t| t.peer.as_ref().map(|c| c.subject.line.clone())),
        "verified": t.map(|t| t.peer_verified),
        "established": i.established,
        "age": i.age.as_secs(),
        "queued_bytes": i.queued_bytes,
    })
}

fn tls_info(infos: &[ConnInfo]) -> Value {
    let mut by_domain: BTreeMap<String, u64> = BTreeMap::new();
    let mut tls = 0u64;
    for i in infos.iter().filter(|i| i.transport == Transport::Tls) {
        tls += 1;
        let d = if i.established {
            i.tls
                .as_ref()
                .and_then(|t| t.domain.as_deref())
                .unwrap_or("unknown")
        } else {
            "(handshake)"
        }
        .to_owned();
        *by_domain.entry(d).or_default() += 1;
    }
    let by: Map<String, Value> = by_domain
        .into_iter()
        .map(|(k, v)| (k, Value::from(v)))
        .collect();
    json!({"connections": infos.len(), "tls_connections": tls, "by_domain": by})
}

/// Every counter by name (`stats.get`, and the `/metrics` mapping's source).
pub(crate) fn stats_pairs(s: &StatsSnapshot) -> [(&'static str, u64); 21] {
    [
        ("connections_open", s.connections_open),
        ("accepted", s.accepted),
        ("refused_total_limit", s.refused_total_limit),
        ("refused_ip_limit", s.refused_ip_limit),
        ("refused_fd_limit", s.refused_fd_limit),
        ("memory_trims", s.memory_trims),
        ("handshake_failures", s.handshake_failures),
        ("connect_failures", s.connect_failures),
        ("send_timeouts", s.send_timeouts),
        ("write_queue_overflows", s.write_queue_overflows),
        ("idle_timeouts", s.idle_timeouts),
        ("message_timeouts", s.message_timeouts),
        ("framing_errors", s.framing_errors),
        ("messages_in", s.messages_in),
        ("udp_unparsable", s.udp_unparsable),
        ("dropped", s.dropped),
        ("responses_unmatched", s.responses_unmatched),
        ("send_failures", s.send_failures),
        ("dns_failures", s.dns_failures),
        ("transactions", s.transactions),
        ("transactions_refused", s.transactions_refused),
    ]
}

fn stats_json(s: &StatsSnapshot) -> Value {
    Value::Object(
        stats_pairs(s)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::from(v)))
            .collect(),
    )
}

/// Where management meets the other subsystems. What is still missing is marked ADAPTER
/// (what it waits for; replace the body when it lands, keep the signature).
pub(crate) mod adapters {
    use super::*;
    use crate::reload::registry::{Reload, ReloadCause, ReloadOutcome};

    /// Every TLS domain (server and client sides) from the `DomainRegistry`'s status: each
    /// with its own last error (a tenant serving its last good configuration, or left out)
    /// and when its running build was loaded, and the registry's last reload.
    pub(crate) fn tls_domains(shared: &Arc<Shared>) -> Vec<Value> {
        let st = shared.tls_status();
        let last_reload = st.last_reload.as_ref().map(|r| {
            json!({"at": unix(r.at), "cause": format!("{:?}", r.cause),
                   "outcome": outcome_json(&r.outcome)})
        });
        st.domains
            .iter()
            .map(|d| {
                json!({
                    "name": d.name,
                    "side": d.side,
                    "names": d.names,
                    "addresses": d.addresses,
                    "certificate_subject": d.subject,
                    "sans": d.sans,
                    "not_after": d.not_after,
                    "not_after_unix": d.not_after_unix,
                    "files": d.sources.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                    "last_reload": last_reload,
                    "last_error": d.last_error.as_ref().map(|e| json!({
                        "at": d.last_error_at.map(unix),
                        "error": e,
                    })),
                    "last_good_load": d.last_good_at.map(unix),
                    "reload_failures": d.failures,
                })
            })
            .collect()
    }

    pub(crate) fn outcome_json(o: &ReloadOutcome) -> Value {
        match o {
            ReloadOutcome::Published { changed, refused } => {
                json!({"result": "published", "changed": changed, "refused": refused})
            }
            ReloadOutcome::Unchanged => json!({"result": "unchanged"}),
            ReloadOutcome::Failed { errors } => json!({"result": "failed", "errors": errors}),
            ReloadOutcome::Preview(p) => p.json(),
        }
    }

    /// One changed key: the value configured and the one in force.
    fn change_json(c: &siprox::config::Change) -> Value {
        json!({"key": c.key, "configured": c.new, "in_force": c.old, "class": c.class.as_str()})
    }

    /// The answer of a `cfg.reload` that waited for its reload: its outcome, and what the
    /// registry knows after it (restart-only keys not applied, route scripts in error,
    /// domains in error).
    pub(crate) fn reload_answer(shared: &Arc<Shared>, outcome: &ReloadOutcome) -> Value {
        let mut v = outcome_json(outcome);
        if matches!(outcome, ReloadOutcome::Preview(_)) {
            return v;
        }
        let st = shared.tls_status();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "restart_only".to_owned(),
                Value::Array(st.restart_pending.iter().map(change_json).collect()),
            );
            o.insert(
                "scripts".to_owned(),
                Value::Array(
                    st.scripts
                        .iter()
                        .map(|s| json!({"file": s.path.display().to_string(), "error": s.last_error}))
                        .collect(),
                ),
            );
            o.insert(
                "domain_errors".to_owned(),
                Value::Array(
                    st.domains
                        .iter()
                        .filter_map(|d| {
                            Some(json!({"domain": d.name, "error": d.last_error.as_ref()?}))
                        })
                        .collect(),
                ),
            );
        }
        v
    }

    /// Reload failures of each TLS domain (`/metrics`).
    pub(crate) fn domain_failures(shared: &Arc<Shared>) -> Vec<(String, u64)> {
        shared
            .tls_status()
            .domains
            .into_iter()
            .filter(|d| d.failures > 0)
            .map(|d| (d.name, d.failures))
            .collect()
    }

    /// `(domain, not_after_unix)` of every server domain (`/metrics`).
    pub(crate) fn cert_not_after(shared: &Arc<Shared>) -> Vec<(String, i64)> {
        shared
            .tls_status()
            .domains
            .into_iter()
            .filter(|d| d.side == "server")
            .map(|d| (d.name, d.not_after_unix))
            .collect()
    }

    /// Reloads run and refused by the registry (all causes), for `/metrics`.
    pub(crate) fn reload_counts(shared: &Arc<Shared>) -> (u64, u64) {
        let st = shared.tls_status();
        (st.reloads, st.failures)
    }

    /// Starts one reload in the `DomainRegistry` (it rebuilds off-thread, keeps the old
    /// snapshot on failure and records the outcome in its status). Both kinds re-read
    /// conf.d and every certificate: the registry rebuilds only what changed.
    pub(crate) fn start_reload(shared: &Arc<Shared>, kind: ReloadKind) -> Result<(), String> {
        let Some(r) = shared.reloader() else {
            return Err("the domain registry is not running".to_owned());
        };
        let _ = kind;
        r.do_send(Reload {
            cause: ReloadCause::Request,
        });
        Ok(())
    }

    /// `ul.dump`, `ul.show AOR`, `ul.rm AOR`: the registrar's store. On a cluster node that
    /// is this node's bindings and the replica of the live nodes' (each binding names its
    /// node); `ul.rm` removes this node's bindings (and, written behind, their copy in
    /// Redis) and says which other nodes still hold some: only the owner removes those.
    pub(crate) fn registrar(
        shared: &Arc<Shared>,
        cluster: Option<&crate::cluster::control::Control>,
        method: &str,
        params: &[Value],
    ) -> CallResult {
        let Some(loc) = shared.location.get() else {
            return Err(Fault::not_available(format!(
                "{method}: the location store is not running"
            )));
        };
        let internal =
            |e: &dyn std::fmt::Display| Fault::new(FaultKind::Internal, format!("{method}: {e}"));
        let store = loc.registrar_store();
        let dump = || -> Result<Vec<siprox::registrar::snapshot::SnapshotAor>, Fault> {
            let mut aors = siprox::registrar::snapshot::dump(store).map_err(|e| internal(&e))?;
            if let (Some(c), Some(cs)) = (cluster, loc.cluster.as_ref()) {
                for a in &mut aors {
                    for b in &mut a.bindings {
                        b.node.get_or_insert_with(|| c.node().to_owned());
                    }
                }
                let mut by_aor: BTreeMap<String, usize> = aors
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (a.aor.clone(), i))
                    .collect();
                cs.replica.for_each_live(&mut |aor, bindings| {
                    let i = *by_aor.entry(aor.to_owned()).or_insert_with(|| {
                        aors.push(siprox::registrar::snapshot::SnapshotAor {
                            aor: aor.to_owned(),
                            bindings: Vec::new(),
                        });
                        aors.len() - 1
                    });
                    aors[i].bindings.extend(
                        bindings
                            .iter()
                            .map(siprox::registrar::snapshot::SnapshotBinding::from),
                    );
                });
                aors.sort_by(|a, b| a.aor.cmp(&b.aor));
            }
            Ok(aors)
        };
        if method == "ul.dump" {
            return serde_json::to_value(dump()?).map_err(|e| internal(&e));
        }
        let aor = params.first().and_then(Value::as_str).ok_or_else(|| {
            Fault::invalid_params(format!("{method} needs an address of record (user@domain)"))
        })?;
        let key = aor_key(aor)?;
        match method {
            "ul.show" => {
                let found: Vec<_> = dump()?.into_iter().filter(|a| a.aor == key).collect();
                if found.is_empty() {
                    return Err(Fault::not_found(format!("no bindings for {key}")));
                }
                serde_json::to_value(found).map_err(|e| internal(&e))
            }
            _ => {
                let n = store.remove(&key).map_err(|e| internal(&e))?;
                let Some(cs) = loc.cluster.as_ref() else {
                    return Ok(Value::from(n as u64));
                };
                let mut elsewhere: BTreeMap<String, u64> = BTreeMap::new();
                for b in cs.replica.get(&key) {
                    if let Some(node) = b.flow.node.as_deref() {
                        *elsewhere.entry(node.to_owned()).or_default() += 1;
                    }
                }
                let note = if elsewhere.is_empty() {
                    "removed here and, written behind, from Redis".to_owned()
                } else {
                    format!(
                        "other nodes hold bindings of {key}: only their owner removes them \
                         (run ul.rm on {})",
                        elsewhere.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                Ok(json!({
                    "removed": n,
                    "elsewhere": elsewhere
                        .into_iter()
                        .map(|(node, bindings)| json!({"node": node, "bindings": bindings}))
                        .collect::<Vec<_>>(),
                    "note": note,
                }))
            }
        }
    }

    /// The store's key of `aor` as an operator writes it (`user@domain`, or a URI).
    pub(crate) fn aor_key(aor: &str) -> Result<String, Fault> {
        let with_scheme = if aor.contains(':') {
            aor.to_owned()
        } else {
            format!("sip:{aor}")
        };
        siprox::registrar::aor_of_str(&with_scheme)
            .map_err(|e| Fault::invalid_params(format!("{aor}: {e}")))
    }

    /// `cluster.nodes`: every member as last read from Redis.
    pub(crate) fn cluster_nodes(c: &crate::cluster::control::Control) -> Value {
        let now = crate::state::unix_now() * 1000;
        Value::Array(
            c.members()
                .iter()
                .map(|m| {
                    json!({
                        "node": m.node,
                        "alive": m.alive,
                        "this": m.this,
                        "advertise": m.advertise,
                        "last_heartbeat": m.last_heartbeat_ms / 1000,
                        "heartbeat_age_ms": (now - m.last_heartbeat_ms).max(0),
                        "bindings": m.bindings,
                        "connections": m.connections,
                    })
                })
                .collect(),
        )
    }
}
