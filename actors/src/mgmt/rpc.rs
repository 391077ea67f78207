//! The `Rpc` actor on the control arbiter: runs the management methods for the HTTPS
//! listener and for HTTP requests a route script dispatches from a SIP listener, and
//! renders `/metrics`. Must never wait for a worker; reloads are coalesced by the registry.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::fut::{wrap_future, ActorFutureExt};
use actix::{Actor, Addr, AsyncContext, Context, Handler, Recipient, ResponseActFuture};
use siprox::rpc::HttpResponse;
use tracing::{info, warn};

use crate::cluster::control::Control;
use crate::mgmt::methods::{Methods, ReloadGate};
use crate::state::messages::{Reload, ReloadCause, ReloadOutcome, RpcRequest as Request, Shutdown};
use crate::state::Shared;

pub use crate::mgmt::listener::Management;

/// Logs every call with its caller at INFO, and enforces [`Request::only`].
struct Logged<'a, H> {
    inner: H,
    caller: &'a str,
    only: Option<&'a str>,
}

impl<H: siprox::rpc::Handler> siprox::rpc::Handler for Logged<'_, H> {
    fn before_call(&mut self, method: &str) -> Result<(), siprox::rpc::Fault> {
        if self.only.is_some_and(|m| m != method) {
            warn!(caller = %self.caller, method, "RPC call refused: not the method the route script decided on");
            return Err(siprox::rpc::Fault::forbidden());
        }
        info!(caller = %self.caller, method, "RPC call");
        self.inner.before_call(method)
    }

    fn call(&mut self, method: &str, params: &[siprox::rpc::Value]) -> siprox::rpc::CallResult {
        self.inner.call(method, params)
    }
}

/// The `Rpc` actor: runs management methods on the control arbiter. Methods only read the
/// shared state or send messages; none waits for a worker.
pub struct Rpc {
    pub(crate) shared: Arc<Shared>,
    pub(crate) control: Recipient<Shutdown>,
    pub(crate) started: SystemTime,
    pub(crate) reload: ReloadGate,
    pub(crate) killing: bool,
    /// The cluster's control side (member list, cluster-wide reloads), once attached.
    pub(crate) cluster: Option<Arc<Control>>,
}

/// Hands the cluster's control side to the `Rpc` actor (sent once at start, on a node with
/// `[cluster]`).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct AttachCluster(pub Arc<Control>);

impl Handler<AttachCluster> for Rpc {
    type Result = ();

    fn handle(&mut self, msg: AttachCluster, _ctx: &mut Self::Context) {
        self.cluster = Some(msg.0);
    }
}

impl Actor for Rpc {
    type Context = Context<Self>;
}

impl Handler<Request> for Rpc {
    type Result = ResponseActFuture<Self, HttpResponse>;

    fn handle(&mut self, msg: Request, ctx: &mut Self::Context) -> Self::Result {
        let req = &msg.req;
        if req.method == "GET" && req.path() == "/metrics" {
            let mut r = if msg.allowed {
                HttpResponse::new(
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    crate::mgmt::metrics::render(self).into_bytes(),
                )
            } else {
                HttpResponse::text(403, "forbidden\n")
            };
            r.close = !req.keep_alive();
            return Box::pin(actix::fut::ready(r));
        }
        if !msg.allowed {
            info!(
                caller = %msg.caller,
                method = siprox::rpc::method_any(&req.body).as_deref().unwrap_or(""),
                "RPC call refused: caller not on [management] allow"
            );
        }
        if let (true, Some((method, wait))) = (msg.allowed, cluster_reload(&req.body)) {
            if msg.only.as_deref().is_none_or(|m| m == method) {
                if let Some(ctl) = self.cluster.clone() {
                    // Every node's result: answered once all live nodes did, or at `wait`.
                    // The actor goes on serving other calls meanwhile.
                    let what = if method == "tls.reload" {
                        "tls"
                    } else if waiting_reload(&req.body) == Some(true) {
                        "dry_run"
                    } else {
                        "cfg"
                    };
                    let fut = ctl.reload_cluster(what, wait);
                    return Box::pin(wrap_future::<_, Self>(fut).map(move |answer, act, ctx| {
                        let mut methods = Logged {
                            inner: Prepared {
                                method,
                                answer: Some(answer),
                                rest: Methods { rpc: act, ctx },
                            },
                            caller: &msg.caller,
                            only: msg.only.as_deref(),
                        };
                        siprox::rpc::serve(&msg.req, msg.allowed, &mut methods)
                    }));
                }
            }
        }
        // `ul.rm` on a cluster node: this node's bindings are removed now; those other nodes
        // own are removed by them, asked through the control stream, and the answer waits
        // for their results (bounded). The actor goes on serving other calls meanwhile.
        if let (true, Some(ctl), Some(aor)) = (msg.allowed, self.cluster.clone(), ul_rm(&req.body))
        {
            if msg.only.as_deref().is_none_or(|m| m == "ul.rm") {
                let local = crate::mgmt::methods::adapters::registrar(
                    &self.shared,
                    Some(&ctl),
                    "ul.rm",
                    &[serde_json::Value::from(aor.clone())],
                );
                if let (Ok(mut answer), Ok(key)) =
                    (local, crate::mgmt::methods::adapters::aor_key(&aor))
                {
                    let nodes: Vec<String> = answer
                        .get("elsewhere")
                        .and_then(serde_json::Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|e| e.get("node").and_then(serde_json::Value::as_str))
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default();
                    if !nodes.is_empty() {
                        let fut = ctl.remove_elsewhere(
                            key,
                            nodes,
                            crate::cluster::control::DEFAULT_RELOAD_WAIT,
                        );
                        return Box::pin(wrap_future::<_, Self>(fut).map(
                            move |results, act, ctx| {
                                if let Some(o) = answer.as_object_mut() {
                                    let all_ok = results.iter().all(|r| r["result"] == "ok");
                                    o.insert(
                                        "elsewhere".to_owned(),
                                        serde_json::Value::from(results),
                                    );
                                    o.insert(
                                    "note".to_owned(),
                                    serde_json::Value::from(if all_ok {
                                        "removed here and by the other nodes that held bindings \
                                         (written behind, from Redis too)"
                                    } else {
                                        "removed here; not every other node that held bindings \
                                         answered (see elsewhere)"
                                    }),
                                );
                                }
                                let mut methods = Logged {
                                    inner: Prepared {
                                        method: "ul.rm",
                                        answer: Some(answer),
                                        rest: Methods { rpc: act, ctx },
                                    },
                                    caller: &msg.caller,
                                    only: msg.only.as_deref(),
                                };
                                siprox::rpc::serve(&msg.req, msg.allowed, &mut methods)
                            },
                        ));
                    }
                    let mut methods = Logged {
                        inner: Prepared {
                            method: "ul.rm",
                            answer: Some(answer),
                            rest: Methods { rpc: self, ctx },
                        },
                        caller: &msg.caller,
                        only: msg.only.as_deref(),
                    };
                    let r = siprox::rpc::serve(&msg.req, msg.allowed, &mut methods);
                    return Box::pin(actix::fut::ready(r));
                }
            }
        }
        let waits = msg.allowed
            && msg.only.as_deref().is_none_or(|m| m == "cfg.reload")
            && waiting_reload(&req.body).is_some();
        if let (true, Some(reloader)) = (waits, self.shared.reloader()) {
            // `cfg.reload` with `wait` or `dry_run`: answered once the registry is done, with
            // what it did (or would do). The registry coalesces; the gate's rate limit is
            // for the fire-and-forget form, which a loop could repeat without waiting.
            let cause = match waiting_reload(&req.body) {
                Some(true) => ReloadCause::DryRun,
                _ => ReloadCause::Request,
            };
            let sent = reloader.send(Reload { cause });
            let fut = async move {
                sent.await.unwrap_or_else(|e| ReloadOutcome::Failed {
                    errors: vec![format!("the registry is not running: {e}")],
                })
            };
            return Box::pin(wrap_future::<_, Self>(fut).map(move |outcome, act, ctx| {
                let answer = crate::mgmt::methods::adapters::reload_answer(&act.shared, &outcome);
                let mut methods = Logged {
                    inner: Prepared {
                        method: "cfg.reload",
                        answer: Some(answer),
                        rest: Methods { rpc: act, ctx },
                    },
                    caller: &msg.caller,
                    only: msg.only.as_deref(),
                };
                siprox::rpc::serve(&msg.req, msg.allowed, &mut methods)
            }));
        }
        let mut methods = Logged {
            inner: Methods { rpc: self, ctx },
            caller: &msg.caller,
            only: msg.only.as_deref(),
        };
        let r = siprox::rpc::serve(req, msg.allowed, &mut methods);
        Box::pin(actix::fut::ready(r))
    }
}

/// Answers one method with a value computed before (a reload that was waited for), and
/// every other method as usual.
struct Prepared<H> {
    method: &'static str,
    answer: Option<siprox::rpc::Value>,
    rest: H,
}

impl<H: siprox::rpc::Handler> siprox::rpc::Handler for Prepared<H> {
    fn call(&mut self, method: &str, params: &[siprox::rpc::Value]) -> siprox::rpc::CallResult {
        if method == self.method {
            if let Some(a) = self.answer.take() {
                return Ok(a);
            }
        }
        self.rest.call(method, params)
    }
}

/// `Some((method, wait))` for a JSON-RPC `cfg.reload` / `tls.reload` call (not a batch)
/// whose params ask for a cluster-wide reload: `["cluster"]`, `["cluster", SECONDS]`,
/// `{"cluster": true, "timeout": SECONDS}`.
fn cluster_reload(body: &[u8]) -> Option<(&'static str, Duration)> {
    use crate::cluster::control::{DEFAULT_RELOAD_WAIT, MAX_RELOAD_WAIT};
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let method = match v.get("method")?.as_str()? {
        "cfg.reload" => "cfg.reload",
        "tls.reload" => "tls.reload",
        _ => return None,
    };
    let secs = |x: &serde_json::Value| x.as_f64().filter(|s| s.is_finite() && *s > 0.0);
    let wait = match v.get("params")? {
        serde_json::Value::Array(a) => {
            if !a.iter().any(|p| {
                p.as_str() == Some("cluster")
                    || p.get("cluster").and_then(serde_json::Value::as_bool) == Some(true)
            }) {
                return None;
            }
            a.iter()
                .find_map(|p| secs(p).or_else(|| p.get("timeout").and_then(secs)))
        }
        o @ serde_json::Value::Object(_) => {
            if o.get("cluster").and_then(serde_json::Value::as_bool) != Some(true) {
                return None;
            }
            o.get("timeout").and_then(secs)
        }
        _ => return None,
    };
    let wait = wait.map_or(DEFAULT_RELOAD_WAIT, |s| {
        Duration::from_secs_f64(s.min(MAX_RELOAD_WAIT.as_secs_f64()))
    });
    Some((method, wait))
}

/// The AoR of a JSON-RPC `ul.rm` call (not a batch): `["AOR"]` or `{"aor": "AOR"}`.
fn ul_rm(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("method")?.as_str()? != "ul.rm" {
        return None;
    }
    let aor = match v.get("params")? {
        serde_json::Value::Array(a) => a.first()?.as_str()?,
        o @ serde_json::Value::Object(_) => o.get("aor")?.as_str()?,
        _ => return None,
    };
    Some(aor.to_owned())
}

/// `Some(dry_run)` for a JSON-RPC `cfg.reload` call (not a batch) whose params ask to wait
/// (`["wait"]`, `{"wait": true}`) or for a dry run (`["dry_run"]`, `{"dry_run": true}`).
fn waiting_reload(body: &[u8]) -> Option<bool> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("method")?.as_str()? != "cfg.reload" {
        return None;
    }
    let flag = |name: &str| match v.get("params") {
        Some(serde_json::Value::Array(a)) => a.iter().any(|p| {
            p.as_str() == Some(name)
                || p.get(name).and_then(serde_json::Value::as_bool) == Some(true)
        }),
        Some(o @ serde_json::Value::Object(_)) => {
            o.get(name).and_then(serde_json::Value::as_bool) == Some(true)
        }
        _ => false,
    };
    if flag("dry_run") {
        Some(true)
    } else if flag("wait") {
        Some(false)
    } else {
        None
    }
}

impl Rpc {
    /// An `Rpc` actor without a management listener: it serves the RPCs a route script
    /// dispatches from a SIP listener (SER style).
    pub(crate) fn standalone(shared: Arc<Shared>, control: Recipient<Shutdown>) -> Addr<Rpc> {
        let min = shared
            .snapshot
            .load()
            .config
            .management
            .reload_min_interval
            .get();
        Rpc {
            shared,
            control,
            started: SystemTime::now(),
            reload: ReloadGate::new(min),
            killing: false,
            cluster: None,
        }
        .start()
    }

    /// `core.kill`: a graceful shutdown a moment from now, so that the caller gets its
    /// answer before the listener goes away.
    pub(crate) fn schedule_kill(&mut self, ctx: &mut Context<Self>) {
        if self.killing {
            return;
        }
        self.killing = true;
        ctx.run_later(Duration::from_millis(200), |act, _| {
            act.control.do_send(Shutdown);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &str, params: &str) -> Vec<u8> {
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#).into_bytes()
    }

    #[test]
    fn a_cluster_reload_is_recognised_with_its_wait() {
        use crate::cluster::control::{DEFAULT_RELOAD_WAIT, MAX_RELOAD_WAIT};
        let some = |m: &'static str, s: f64| Some((m, Duration::from_secs_f64(s)));
        assert_eq!(
            cluster_reload(&call("cfg.reload", r#"["cluster"]"#)),
            Some(("cfg.reload", DEFAULT_RELOAD_WAIT))
        );
        assert_eq!(
            cluster_reload(&call("tls.reload", r#"["cluster", 3]"#)),
            some("tls.reload", 3.0)
        );
        assert_eq!(
            cluster_reload(&call("cfg.reload", r#"{"cluster": true, "timeout": 0.5}"#)),
            some("cfg.reload", 0.5)
        );
        assert_eq!(
            cluster_reload(&call("cfg.reload", r#"["cluster", 9999]"#)),
            Some(("cfg.reload", MAX_RELOAD_WAIT))
        );
        // Not a cluster reload: the local forms, other methods, a negative wait ignored.
        assert_eq!(cluster_reload(&call("cfg.reload", r#"["wait"]"#)), None);
        assert_eq!(
            cluster_reload(&call("cfg.reload", r#"{"cluster": false}"#)),
            None
        );
        assert_eq!(cluster_reload(&call("ul.rm", r#"["cluster"]"#)), None);
        assert_eq!(
            cluster_reload(&call("cfg.reload", r#"["cluster", -1]"#)),
            Some(("cfg.reload", DEFAULT_RELOAD_WAIT))
        );
        assert_eq!(cluster_reload(b"[{}]"), None);
    }
}
