//! The management methods: names, parameters, results and help, in one table. It is what
//! `system.listMethods` and `system.methodHelp` answer and what `docs/rpc.md` documents;
//! a method the runtime implements but this table lacks is a bug (a runtime test checks).

/// One documented method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodDoc {
    pub name: &'static str,
    /// Positional parameters, e.g. `id: int`; empty when it takes none.
    pub params: &'static str,
    /// What it returns.
    pub result: &'static str,
    /// One sentence.
    pub help: &'static str,
}

impl MethodDoc {
    /// `system.methodHelp`'s answer.
    pub fn help_text(&self) -> String {
        let params = if self.params.is_empty() {
            "none"
        } else {
            self.params
        };
        format!("{}\nparams: {params}\nresult: {}", self.help, self.result)
    }
}

/// Every method, in listing order.
pub const METHODS: &[MethodDoc] = &[
    MethodDoc {
        name: "system.listMethods",
        params: "",
        result: "array of method names",
        help: "The methods this server implements.",
    },
    MethodDoc {
        name: "system.methodHelp",
        params: "method: string",
        result: "string",
        help: "Help text of one method: what it does, its parameters and its result.",
    },
    MethodDoc {
        name: "core.version",
        params: "",
        result: "string, e.g. \"siprox 0.1.0\"",
        help: "The server's name and version.",
    },
    MethodDoc {
        name: "core.uptime",
        params: "",
        result:
            "struct {now: int (Unix seconds), up_since: int (Unix seconds), uptime: int (seconds)}",
        help: "How long this siprox has been running.",
    },
    MethodDoc {
        name: "core.kill",
        params: "",
        result: "string \"shutting down\"",
        help: "Graceful shutdown, as on SIGTERM: stop accepting, drain queued writes, exit.",
    },
    MethodDoc {
        name: "core.tcp_list",
        params: "",
        result: "array of connection structs (as tls.list), TCP and TLS",
        help: "Every open TCP and TLS connection.",
    },
    MethodDoc {
        name: "tls.list",
        params: "",
        result: "array of struct {id: int, peer: string, transport: string, direction: string, \
                 domain: string|nil, sni: string|nil, tls_version: string|nil, cipher: string|nil, \
                 peer_subject: string|nil, verified: bool|nil, age: int (seconds), \
                 queued_bytes: int}",
        help: "Every open TLS connection with its TLS facts (nil where not known).",
    },
    MethodDoc {
        name: "tls.info",
        params: "",
        result: "struct {connections: int, tls_connections: int, by_domain: struct {domain: int}}",
        help: "Open connection counts, TLS ones by domain.",
    },
    MethodDoc {
        name: "tls.domains",
        params: "",
        result: "array of struct {name: string, names: array, certificate_subject: string, \
                 sans: array, not_after: string, not_after_unix: int, files: array, \
                 last_reload: struct|nil, last_error: struct {at: int, error: string}|nil \
                 (this domain's: it serves its last good build, or is left out), \
                 last_good_load: int|nil (Unix time), reload_failures: int}",
        help: "Every TLS domain: names, certificate, files, last reload result, and its own \
               last error and last good load.",
    },
    MethodDoc {
        name: "tls.kill",
        params: "id: int",
        result: "string \"closed\"",
        help: "Close one connection (by the id tls.list shows) at once.",
    },
    MethodDoc {
        name: "tls.reload",
        params: "none, or \"cluster\" and an optional wait in seconds (JSON-RPC; also \
                 {\"cluster\": true, \"timeout\": s})",
        result: "none: string \"queued\" or \"coalesced\"; cluster: as cfg.reload with cluster",
        help: "Re-read TLS material. Coalesced and rate-limited: calls while a reload is \
               pending join it. `cluster`: every live node of the cluster reloads its own \
               conf.d, as cfg.reload with cluster.",
    },
    MethodDoc {
        name: "cfg.reload",
        params: "none, \"wait\", \"dry_run\", or \"cluster\" and an optional wait in seconds (JSON-RPC; also {\"wait\": true} / {\"dry_run\": true} / {\"cluster\": true, \"timeout\": s})",
        result: "none: string \"queued\" or \"coalesced\"; wait: struct {result: \"published\"|\"unchanged\"|\"failed\", changed, refused, errors, restart_only: array of struct {key, configured, in_force, class}, scripts: array of struct {file, error}, domain_errors: array of struct {domain, error}}; dry_run: struct {result: \"dry_run\", would: \"publish\"|\"change nothing\"|\"refuse\", live, restart_only, domains, refused, errors}; cluster: struct {request: string, reload: \"cfg\"|\"tls\"|\"dry_run\", waited_ms: int, nodes: array of struct {node, result: \"ok\"|\"refused\"|\"no answer\", outcome, changed, refused, errors, preview (dry_run)}, error: string (only when Redis failed)}",
        help: "Re-read conf.d (TLS domains and scripts included). Without params: coalesced and \
               rate-limited, answered at once. `wait`: answered when the reload is done, with \
               what it applied, refused and could not apply before a restart. `dry_run`: what a \
               reload would do now; nothing is applied. `cluster`: every live node of the cluster \
               (this one included) reloads its own conf.d (with `dry_run`: says what it \
               would do); answered with each node's result once all answered or the wait \
               (default 8 s, at most 60) ran out.",
    },
    MethodDoc {
        name: "ul.dump",
        params: "",
        result: "array of struct {aor: string, bindings: array of struct {contact, expires (Unix time), q, call_id, cseq, path, flow..., node (on a cluster node)}}",
        help: "Every registration in the location table (on a cluster node: this node's \
               and the live nodes' from the replica, each naming its node).",
    },
    MethodDoc {
        name: "ul.show",
        params: "aor: string",
        result: "array of one struct {aor: string, bindings: array} (fault 404 when none)",
        help: "The registrations of one address of record (user@domain).",
    },
    MethodDoc {
        name: "ul.rm",
        params: "aor: string",
        result: "int (bindings removed); on a cluster node struct {removed: int, \
                 elsewhere: array of struct {node, bindings} or, once asked, \
                 {node, result: \"ok\"|\"refused\"|\"no answer\", removed, errors}, note: string}",
        help: "Remove every registration of one address of record (on a cluster node: this \
               node's, from Redis too; the nodes that own the others are asked to remove \
               theirs, and their results are waited for, at most 8 s).",
    },
    MethodDoc {
        name: "cluster.nodes",
        params: "",
        result: "array of struct {node: string, alive: bool, this: bool, advertise: string, \
                 last_heartbeat: int (Unix seconds), heartbeat_age_ms: int, bindings: int, \
                 connections: int}",
        help: "The cluster's members as this node last read them from Redis (every \
               heartbeat): alive or dead by their liveness key, with the bindings and \
               connections each published with its heartbeat.",
    },
    MethodDoc {
        name: "stats.get",
        params: "",
        result: "struct of counters (name: int)",
        help: "The runtime counters: connections, messages, failures.",
    },
];

/// The documentation of `name`.
pub fn find(name: &str) -> Option<&'static MethodDoc> {
    METHODS.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_documented() {
        for (i, m) in METHODS.iter().enumerate() {
            assert!(!m.help.is_empty() && !m.result.is_empty(), "{}", m.name);
            assert!(
                METHODS[i + 1..].iter().all(|o| o.name != m.name),
                "{}",
                m.name
            );
        }
        assert!(find("tls.kill").is_some_and(|m| m.help_text().contains("id: int")));
    }
}
