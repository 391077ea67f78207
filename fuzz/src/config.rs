//! The configuration pipeline on any conf.d contents: load, merge, validate, render what
//! `siprox check --print` shows, and classify the changes between two configurations as a
//! reload does. Pure (the pipeline never opens a file). Must never panic.

use std::path::{Path, PathBuf};

use siprox::config::{diff, load_config, pin_restart_only, render_with_origins, ConfigSource};

/// The relative paths the input's parts are given, in order.
const NAMES: [&str; 4] = [
    "00-core.toml",
    "domains/tenant.toml",
    "10-listen.toml",
    "scripts.toml",
];

/// Target `config_files`: the input, as text, cut at each `\x00` into at most four files
/// (`NAMES`); a part that starts with `SIPROX_` is instead environment lines `NAME=value`.
/// The whole is loaded; when it loads, so is the first file alone, and the changes between
/// the two are classified and pinned as a reload does.
pub fn config_files(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut files = Vec::new();
    let mut env = Vec::new();
    for (i, part) in text.split('\0').take(NAMES.len()).enumerate() {
        if part.starts_with("SIPROX_") {
            env.extend(part.lines().filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            }));
        } else {
            files.push(ConfigSource {
                rel: PathBuf::from(NAMES[i]),
                text: part.to_owned(),
            });
        }
    }
    let dir = Path::new("/etc/siprox/conf.d");
    let first = files.first().cloned();
    let outcome = load_config(dir, files, env.clone());
    let _ = outcome.warnings.join("\n");
    if let Some(invalid) = &outcome.invalid {
        let _ = render_with_origins(invalid);
    }
    match &outcome.loaded {
        Err(e) => {
            let _ = e.to_string();
        }
        Ok(all) => {
            let _ = render_with_origins(all);
            let Some(first) = first else { return };
            if let Ok(one) = load_config(dir, vec![first], env).loaded {
                for (old, new) in [(&one.config, &all.config), (&all.config, &one.config)] {
                    let changes = diff(old, new);
                    let _ = pin_restart_only(old, new, &changes);
                }
            }
        }
    }
}
