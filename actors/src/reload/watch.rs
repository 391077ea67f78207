//! What the reload watches: the directories a configuration depends on, and one debounced
//! watcher over all of them that asks the `DomainRegistry` for a reload. Directories, never
//! files: certbot renames and Kubernetes `..data` symlink swaps blind a watch on the file
//! itself. Must never reload on its own reads (access events).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::state::resolve;
use crate::tls::{client_sources, server_sources};
use actix::Recipient;
use notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use siprox::config::Config;
use tracing::warn;

use crate::state::{Reload, ReloadCause};

/// One debounced watcher over every watched directory.
pub struct Watcher {
    inner: Debouncer<RecommendedWatcher, RecommendedCache>,
    watched: BTreeSet<PathBuf>,
}

impl Watcher {
    /// A watcher (watching nothing yet) that sends one [`Reload`] per debounced burst.
    pub fn start(debounce: Duration, reload: Recipient<Reload>) -> Result<Watcher, notify::Error> {
        let handler = move |res: DebounceEventResult| {
            let relevant = match res {
                // Our own reads show up as Access(Open/Close): reloading on them would loop.
                Ok(events) => events
                    .iter()
                    .any(|e| !matches!(e.kind, EventKind::Access(_))),
                Err(_) => true,
            };
            if relevant {
                reload.do_send(Reload {
                    cause: ReloadCause::Files,
                });
            }
        };
        Ok(Watcher {
            inner: new_debouncer(debounce, None, handler)?,
            watched: BTreeSet::new(),
        })
    }

    /// Watches exactly `dirs` (adding before removing, so no event is missed in between).
    pub fn watch_exactly(&mut self, dirs: BTreeSet<PathBuf>) {
        for d in dirs.difference(&self.watched) {
            if let Err(e) = self.inner.watch(d, RecursiveMode::NonRecursive) {
                warn!(dir = %d.display(), error = %e, "cannot watch directory (the periodic check still covers it)");
            }
        }
        for d in self.watched.difference(&dirs) {
            let _ = self.inner.unwatch(d);
        }
        self.watched = dirs;
    }
}

/// The directories to watch for `config`: conf.d, conf.d/domains, and the directory of
/// every file a domain or `[tls]` refers to (the nearest existing ancestor when it does not
/// exist yet, so that its creation is seen).
pub fn watch_dirs(config: &Config, config_dir: Option<&Path>, base: &Path) -> BTreeSet<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(f) = &config.script.file {
        files.push(resolve(base, f));
    }
    // The digest users file reloads like everything else.
    for f in [
        &config.auth.users_file,
        &config.auth.secret_file,
        &config.auth.flow_key_file,
    ]
    .into_iter()
    .flatten()
    {
        files.push(resolve(base, f));
    }
    // The same file lists the TLS domains are built from, so that a file a domain reads is
    // always a file the watcher sees.
    let t = &config.tls;
    files.extend(server_sources(base, &t.server_tls()));
    files.extend(client_sources(base, &t.client_tls()));
    for d in config.domains.values() {
        if let Some(f) = d.script.as_ref().filter(|p| !p.as_os_str().is_empty()) {
            files.push(resolve(base, f));
        }
        if let Some(s) = &d.server {
            files.extend(server_sources(base, s));
        }
        if let Some(c) = &d.client {
            files.extend(client_sources(base, c));
        }
    }
    let mut dirs = BTreeSet::new();
    if let Some(c) = config_dir {
        dirs.insert(c.to_path_buf());
        let d = c.join(siprox::config::DOMAINS_DIR);
        if d.is_dir() {
            dirs.insert(d);
        }
    }
    for f in files {
        // Not canonicalized: a Kubernetes mount is watched where the symlinks live.
        let mut dir = f.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d.is_dir() {
                dirs.insert(d);
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
    }
    dirs
}
