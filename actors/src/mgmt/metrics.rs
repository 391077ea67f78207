//! `GET /metrics` on the management listener: the runtime's counters in the OpenMetrics text
//! format (`prometheus-client`). Built from a snapshot of the counters on each scrape, so the
//! data plane pays nothing for it (its counters are plain relaxed atomics). Families whose
//! data is not collected yet are registered anyway (empty or zero), so dashboards and alerts
//! can be written against stable names; `docs/rpc.md` lists which.

use std::collections::BTreeMap;
use std::time::SystemTime;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::mgmt::methods::adapters;
use crate::mgmt::rpc::Rpc;

type Labels = Vec<(String, String)>;

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    r.register(name, help, c);
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    r.register(name, help, g);
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The whole exposition.
pub(crate) fn render(rpc: &Rpc) -> String {
    let s = rpc.shared.stats();
    let mut r = Registry::with_prefix("siprox");

    counter(
        &mut r,
        "messages_received",
        "SIP messages received (all transports)",
        s.messages_in,
    );
    let by_method: Family<Labels, Counter> = Family::default();
    for (m, n) in rpc.shared.stats.sip.requests() {
        by_method.get_or_create(&labels(&[("method", m)])).inc_by(n);
    }
    r.register("messages", "SIP requests received by method", by_method);
    let by_code: Family<Labels, Counter> = Family::default();
    for (code, n) in rpc.shared.stats.sip.replies() {
        by_code
            .get_or_create(&labels(&[("code", &code.to_string())]))
            .inc_by(n);
    }
    r.register("replies", "SIP replies sent by status code", by_code);

    let conns: Family<Labels, Gauge> = Family::default();
    let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for i in rpc.shared.table.infos() {
        let domain = i
            .tls
            .as_ref()
            .and_then(|t| t.domain.as_deref())
            .unwrap_or_default()
            .to_owned();
        *counts.entry((i.transport.to_string(), domain)).or_default() += 1;
    }
    for ((t, d), n) in counts {
        conns
            .get_or_create(&labels(&[("transport", &t), ("domain", &d)]))
            .set(n);
    }
    r.register(
        "connections",
        "Open TCP/TLS connections by transport and TLS domain",
        conns,
    );
    gauge(
        &mut r,
        "connections_open",
        "Open TCP/TLS connections (handshaking included)",
        i64::try_from(s.connections_open).unwrap_or(i64::MAX),
    );
    gauge(
        &mut r,
        "connections_max",
        "[connections] max_connections: connections_open / connections_max is how near the limit is",
        i64::try_from(
            rpc.shared
                .snapshot
                .load()
                .config
                .connections
                .max_connections,
        )
        .unwrap_or(i64::MAX),
    );
    counter(
        &mut r,
        "connections_accepted",
        "TCP/TLS connections accepted",
        s.accepted,
    );
    let refused: Family<Labels, Counter> = Family::default();
    refused
        .get_or_create(&labels(&[("reason", "max_connections")]))
        .inc_by(s.refused_total_limit);
    refused
        .get_or_create(&labels(&[("reason", "max_connections_per_ip")]))
        .inc_by(s.refused_ip_limit);
    refused
        .get_or_create(&labels(&[("reason", "fd_limit")]))
        .inc_by(s.refused_fd_limit);
    r.register(
        "connections_refused",
        "Connections refused by admission limits or at the open-file limit",
        refused,
    );

    let st = &rpc.shared.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    counter(
        &mut r,
        "tls_handshakes",
        "TLS handshakes completed",
        load(&st.tls_handshakes),
    );
    let hs_fail: Family<Labels, Counter> = Family::default();
    for (label, c) in crate::state::TlsFailureLabel::ALL
        .iter()
        .zip(st.tls_failures.iter())
    {
        hs_fail
            .get_or_create(&labels(&[("reason", label.as_str())]))
            .inc_by(load(c));
    }
    r.register(
        "tls_handshake_failures",
        "TLS handshakes that failed or timed out, by reason",
        hs_fail,
    );
    counter(
        &mut r,
        "connect_failures",
        "Outgoing connects that failed or timed out",
        s.connect_failures,
    );

    let (reloads, failures) = adapters::reload_counts(&rpc.shared);
    counter(
        &mut r,
        "reloads",
        "Reloads run by the domain registry (all causes)",
        reloads,
    );
    counter(
        &mut r,
        "reload_failures",
        "Reloads refused (the running configuration kept serving)",
        failures,
    );
    counter(
        &mut r,
        "rpc_reloads",
        "Reloads started by tls.reload / cfg.reload",
        rpc.reload.started,
    );
    counter(
        &mut r,
        "rpc_reloads_coalesced",
        "tls.reload / cfg.reload calls folded into a pending reload",
        rpc.reload.coalesced,
    );

    let domain_failures: Family<Labels, Counter> = Family::default();
    for (d, n) in adapters::domain_failures(&rpc.shared) {
        domain_failures
            .get_or_create(&labels(&[("domain", &d)]))
            .inc_by(n);
    }
    r.register(
        "domain_reload_failures",
        "Reloads (and the start) that could not build a TLS domain: it kept its last good configuration, or stayed out",
        domain_failures,
    );

    let not_after: Family<Labels, Gauge> = Family::default();
    for (d, t) in adapters::cert_not_after(&rpc.shared) {
        not_after.get_or_create(&labels(&[("domain", &d)])).set(t);
    }
    r.register(
        "tls_certificate_not_after_seconds",
        "notAfter of each TLS server domain's certificate, Unix seconds",
        not_after,
    );

    let wq: Family<Labels, Counter> = Family::default();
    wq.get_or_create(&labels(&[("reason", "queue_full")]))
        .inc_by(s.write_queue_overflows);
    wq.get_or_create(&labels(&[("reason", "send_timeout")]))
        .inc_by(s.send_timeouts);
    r.register(
        "write_queue_closes",
        "Connections closed for their write queue",
        wq,
    );
    counter(
        &mut r,
        "memory_trims",
        "Heap memory returned to the OS after the number of connections fell",
        s.memory_trims,
    );
    counter(
        &mut r,
        "idle_timeouts",
        "Connections closed by idle_timeout",
        s.idle_timeouts,
    );
    counter(
        &mut r,
        "message_timeouts",
        "Streams closed because a message took longer than message_timeout to arrive",
        s.message_timeouts,
    );
    counter(
        &mut r,
        "framing_errors",
        "Streams closed after losing SIP framing",
        s.framing_errors,
    );
    counter(
        &mut r,
        "udp_unparsable",
        "UDP datagrams that did not parse",
        s.udp_unparsable,
    );
    counter(
        &mut r,
        "dropped",
        "Messages the proxy decided to drop",
        s.dropped,
    );
    counter(
        &mut r,
        "responses_unmatched",
        "Responses siprox could not route back (also counted in dropped); each reason logged at INFO",
        s.responses_unmatched,
    );
    counter(
        &mut r,
        "send_failures",
        "Messages that could not be sent",
        s.send_failures,
    );
    counter(
        &mut r,
        "dns_failures",
        "Next hops DNS could not resolve",
        s.dns_failures,
    );
    counter(
        &mut r,
        "script_errors",
        "Route-script runtime errors",
        rpc.shared
            .stats
            .script_errors
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    counter(
        &mut r,
        "flow_tokens_refused",
        "Requests refused for a forged or altered Record-Route flow token",
        rpc.shared
            .snapshot
            .load()
            .proxy
            .flow_counter()
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    gauge(
        &mut r,
        "transactions",
        "Live SIP transactions (server and client, all workers)",
        i64::try_from(s.transactions).unwrap_or(i64::MAX),
    );
    counter(
        &mut r,
        "transactions_refused",
        "Requests refused at [transactions] max_transactions (503 with Retry-After)",
        s.transactions_refused,
    );
    // This node's own bindings (on a cluster node the registrar store counts those; the
    // replica has its own family below).
    let bindings = rpc
        .shared
        .location
        .get()
        .map_or(0, |l| l.registrar_store().len());
    gauge(
        &mut r,
        "registrations",
        "Registered contacts in the location store",
        i64::try_from(bindings).unwrap_or(i64::MAX),
    );

    if let Some(c) = &rpc.cluster {
        cluster(&mut r, c);
    }

    let up = SystemTime::now()
        .duration_since(rpc.started)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    gauge(&mut r, "uptime_seconds", "Seconds since siprox started", up);

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

/// The cluster's families, on a node with `[cluster]` only (a single node has none of it).
fn cluster(r: &mut Registry, c: &crate::cluster::control::Control) {
    use std::sync::atomic::Ordering::Relaxed;
    let store = c.store();
    let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    counter(
        r,
        "cluster_queue_dropped",
        "Changes of this node's bindings dropped because the write-behind queue to Redis was full (the whole store is pushed again after)",
        store.outbox.dropped.load(Relaxed),
    );
    counter(
        r,
        "cluster_writes_deferred",
        "Changes taken while Redis was unreachable, covered by the full push once it is back",
        store.outbox.deferred.load(Relaxed),
    );
    gauge(
        r,
        "cluster_queue_length",
        "Changes waiting in the write-behind queue to Redis",
        n(store.outbox.queued()),
    );
    gauge(
        r,
        "cluster_replica_bindings",
        "Other nodes' bindings held in this node's replica (dead nodes' included)",
        n(store.replica.len()),
    );
    gauge(
        r,
        "cluster_replica_current",
        "1 when the replica follows Redis (connected and synced), 0 when it may be stale",
        i64::from(store.replica.current.load(Relaxed)),
    );
    gauge(
        r,
        "cluster_nodes_alive",
        "Cluster members whose liveness key exists, as last read (this node included)",
        n(c.members().iter().filter(|m| m.alive).count()),
    );
    counter(
        r,
        "cluster_changes_announced",
        "AoR sets of this node written to Redis and appended to the change stream (real changes, and every AoR of a full push)",
        store.outbox.announced.load(Relaxed),
    );
    counter(
        r,
        "cluster_refreshes_unannounced",
        "AoR sets of this node written to Redis without a stream entry: refreshes that change nothing another node routes by",
        store.outbox.refreshed.load(Relaxed),
    );
    counter(
        r,
        "cluster_replay_dropped",
        "Accepted digest nonce counts not shared with the other nodes because the queue to Redis was full",
        store.replay_dropped.get().map_or(0, |d| d.load(Relaxed)),
    );
    gauge(
        r,
        "cluster_members_current",
        "1 when the member list was read from Redis at the last heartbeat, 0 when it is stale",
        i64::from(c.current.load(Relaxed)),
    );
}
