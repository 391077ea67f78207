//! The `Script` actor: the control arbiter's owner of route scripts. It compiles what the
//! reload job read ([`CompileScripts`]), keeps each compiled script by the digest of its
//! path and text (an unchanged file is never compiled twice), and remembers each file's
//! status and last error. It reads no file: the job reads them on a blocking thread, so the
//! control arbiter never waits on a disk. Must never publish: it hands the compiled
//! [`ScriptSet`] back to the reload, which publishes it with the TLS domains in one store.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::{Actor, Context, Handler, Message as ActixMessage, MessageResult};
use siprox::config::Config;
use siprox::script;

use crate::reload::error::{ScriptError, ScriptProblem};
use crate::state::ScriptSet;

/// One script file the configuration names, as the reload job read it.
#[derive(Debug, Clone)]
pub struct ScriptSource {
    /// The domain whose script it is; `None`: `[script] file`.
    pub domain: Option<String>,
    pub path: PathBuf,
    /// The text, or why it could not be read (the I/O error's text).
    pub text: Result<String, String>,
}

impl ScriptSource {
    /// Digest of the path and the text: the path is part of it because a compiled script
    /// names its file in its errors.
    fn digest(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.path.hash(&mut h);
        self.text.as_ref().ok().hash(&mut h);
        h.finish()
    }
}

/// Reads every script file `config` names (blocking: a reload thread or the start, never
/// an arbiter).
pub fn read_sources(config: &Config, base: &Path) -> Vec<ScriptSource> {
    let read = |domain: Option<&String>, file: &Path| {
        let path = crate::state::resolve(base, file);
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string());
        ScriptSource {
            domain: domain.cloned(),
            path,
            text,
        }
    };
    let mut v: Vec<ScriptSource> = config.script.file.iter().map(|f| read(None, f)).collect();
    v.extend(
        config
            .domains
            .iter()
            .filter_map(|(name, d)| d.script.as_ref().map(|f| read(Some(name), f))),
    );
    v
}

/// Compile every script the configuration names, with no cache (`siprox check`, the
/// start). Every error is returned, each naming the domain (if any), the file, line and
/// column.
pub fn compile_scripts(config: &Config, base: &Path) -> Result<ScriptSet, Vec<ScriptError>> {
    compile_sources(config, &read_sources(config, base))
}

/// Compile `sources` (read by [`read_sources`]) with no cache.
pub fn compile_sources(
    config: &Config,
    sources: &[ScriptSource],
) -> Result<ScriptSet, Vec<ScriptError>> {
    assemble(config, sources, &mut |s| compile(s))
}

fn compile(s: &ScriptSource) -> Result<script::Script, ScriptError> {
    let problem = match &s.text {
        Err(e) => ScriptProblem::Read(e.clone()),
        Ok(text) => match script::compile(text, &s.path.display().to_string()) {
            Ok(c) => return Ok(c),
            Err(e) => ScriptProblem::Compile(e),
        },
    };
    Err(ScriptError {
        domain: s.domain.clone(),
        path: s.path.clone(),
        problem,
    })
}

/// Whether a literal send socket (`udp:127.0.0.1:5060`) is one of the configured
/// listeners, as Kamailio refuses at start a `force_send_socket()` it does not listen on.
/// A listener on port 0 (tests: the port is known once bound) takes any port of its
/// address; the run checks the bound port.
fn listens_on(config: &Config, socket: &str) -> bool {
    let Ok((proto, addr)) = script::parse_socket(socket) else {
        return false;
    };
    config.listen.iter().any(|l| {
        let t = match l.proto {
            siprox::config::Proto::Udp => siprox::proxy::Transport::Udp,
            siprox::config::Proto::Tcp => siprox::proxy::Transport::Tcp,
            siprox::config::Proto::Tls => siprox::proxy::Transport::Tls,
        };
        proto.is_none_or(|p| p == t)
            && l.addr.ip() == addr.ip()
            && (l.addr.port() == addr.port() || l.addr.port() == 0)
    })
}

/// The set of `sources`, each compiled by `compile`; every failure is reported.
fn assemble(
    config: &Config,
    sources: &[ScriptSource],
    compile: &mut dyn FnMut(&ScriptSource) -> Result<script::Script, ScriptError>,
) -> Result<ScriptSet, Vec<ScriptError>> {
    let mut set = ScriptSet::default();
    let mut errors = Vec::new();
    for s in sources {
        let compiled = compile(s).and_then(|c| {
            let unknown: Vec<String> = c
                .htables()
                .iter()
                .filter(|t| !config.htables.contains_key(*t))
                .cloned()
                .collect();
            if !unknown.is_empty() {
                return Err(ScriptError {
                    domain: s.domain.clone(),
                    path: s.path.clone(),
                    problem: ScriptProblem::UnknownHtables(unknown),
                });
            }
            let sockets: Vec<String> = c
                .send_sockets()
                .iter()
                .filter(|t| !listens_on(config, t))
                .cloned()
                .collect();
            if !sockets.is_empty() {
                return Err(ScriptError {
                    domain: s.domain.clone(),
                    path: s.path.clone(),
                    problem: ScriptProblem::UnknownSockets(sockets),
                });
            }
            Ok(c)
        });
        match (compiled, &s.domain) {
            (Ok(c), None) => set.default = Some(c),
            (Ok(c), Some(name)) => {
                let names = config
                    .domains
                    .get(name)
                    .map(|d| d.names.as_slice())
                    .unwrap_or(&[]);
                set.add_domain(name, names, c);
            }
            (Err(e), _) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

/// Compile these sources into the scripts of the next snapshot. Replies with the whole set
/// or every error.
#[derive(Debug, ActixMessage)]
#[rtype(result = "Result<ScriptSet, Vec<ScriptError>>")]
pub struct CompileScripts {
    pub config: Arc<Config>,
    pub sources: Vec<ScriptSource>,
}

/// What the `Script` actor knows about one script file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptStatus {
    pub path: PathBuf,
    /// Digest of the path and text last compiled.
    pub digest: u64,
    /// The last error of this file (`None` once it compiles).
    pub last_error: Option<ScriptProblem>,
}

/// The status of every script file seen, by path.
#[derive(Debug, ActixMessage)]
#[rtype(result = "Vec<ScriptStatus>")]
pub struct GetScriptStatus;

/// The `Script` actor (control arbiter).
#[derive(Debug, Default)]
pub struct Script {
    /// Compiled scripts by [`ScriptSource::digest`]: only those of the last request are
    /// kept, so the cache never outgrows the configuration.
    cache: HashMap<u64, script::Script>,
    status: BTreeMap<PathBuf, ScriptStatus>,
    /// Scripts compiled (cache misses), for tests and logs.
    compiled: u64,
}

impl Script {
    /// The actor, its cache seeded with the scripts the runtime started with.
    pub fn new(sources: &[ScriptSource], running: &ScriptSet) -> Script {
        let mut me = Script::default();
        for s in sources {
            let c = match &s.domain {
                None => running.default.clone(),
                Some(d) => running.by_domain.get(d).cloned(),
            };
            if let Some(c) = c {
                me.cache.insert(s.digest(), c);
            }
            me.status.insert(
                s.path.clone(),
                ScriptStatus {
                    path: s.path.clone(),
                    digest: s.digest(),
                    last_error: None,
                },
            );
        }
        me
    }

    fn compile_all(
        &mut self,
        config: &Config,
        sources: &[ScriptSource],
    ) -> Result<ScriptSet, Vec<ScriptError>> {
        let mut used = HashMap::new();
        let (cache, status, compiled) = (&self.cache, &mut self.status, &mut self.compiled);
        let res = assemble(config, sources, &mut |s| {
            let digest = s.digest();
            let result = match cache.get(&digest).or_else(|| used.get(&digest)) {
                Some(c) => Ok(c.clone()),
                None => {
                    *compiled += 1;
                    compile(s)
                }
            };
            status.insert(
                s.path.clone(),
                ScriptStatus {
                    path: s.path.clone(),
                    digest,
                    last_error: result.as_ref().err().map(|e| e.problem.clone()),
                },
            );
            if let Ok(c) = &result {
                used.insert(digest, c.clone());
            }
            result
        });
        if res.is_ok() {
            // A refused set keeps the cache of the running one: reverting the file is free.
            self.cache = used;
        }
        res
    }
}

impl Actor for Script {
    type Context = Context<Self>;
}

impl Handler<CompileScripts> for Script {
    type Result = MessageResult<CompileScripts>;

    fn handle(&mut self, msg: CompileScripts, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.compile_all(&msg.config, &msg.sources))
    }
}

impl Handler<GetScriptStatus> for Script {
    type Result = MessageResult<GetScriptStatus>;

    fn handle(&mut self, _msg: GetScriptStatus, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.status.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(path: &str, text: &str) -> ScriptSource {
        ScriptSource {
            domain: None,
            path: PathBuf::from(path),
            text: Ok(text.to_owned()),
        }
    }

    #[test]
    fn an_unchanged_script_is_compiled_once_and_errors_are_kept_per_file() {
        let config = Arc::new(Config::default());
        let sys = actix::System::new();
        sys.block_on(async {
            let actor = Script::default().start();
            let ask = |s: ScriptSource| {
                actor.send(CompileScripts {
                    config: config.clone(),
                    sources: vec![s],
                })
            };
            let good = "route { forward(); }";
            assert!(ask(source("a.cfg", good)).await.expect("mailbox").is_ok());
            assert!(ask(source("a.cfg", good)).await.expect("mailbox").is_ok());
            let bad = ask(source("a.cfg", "route { nope(); }"))
                .await
                .expect("mailbox");
            let errors = bad.expect_err("unknown function");
            assert!(errors[0].to_string().contains("a.cfg:1"), "{errors:?}");
            let status = actor.send(GetScriptStatus).await.expect("mailbox");
            assert_eq!(status.len(), 1);
            assert!(status[0].last_error.is_some(), "{status:?}");
            // Back to the running text: served from the cache, the error cleared.
            assert!(ask(source("a.cfg", good)).await.expect("mailbox").is_ok());
            let status = actor.send(GetScriptStatus).await.expect("mailbox");
            assert_eq!(status[0].last_error, None);
        });
        // The actor's count of compiles: good once, bad once; the repeats were cache hits.
        let mut s = Script::default();
        let cfg = Config::default();
        for _ in 0..3 {
            s.compile_all(&cfg, &[source("b.cfg", "route { drop; }")])
                .expect("compiles");
        }
        assert_eq!(s.compiled, 1);
    }
}
