//! `siprox check --print`: the merged configuration as TOML, each value followed by the file
//! or environment variable it came from (`# default` when none set it), like `nginx -T` or
//! `systemd-analyze cat-config`. Must never print a secret's value: the configuration holds
//! paths and variable names, never key material, and this prints only the configuration.

use std::fmt::Write as _;

use super::load::Loaded;

/// The merged configuration of `loaded` as TOML that loads back to the same configuration,
/// with one origin comment per value and per `[[listen]]` entry.
pub fn render_with_origins(loaded: &Loaded) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# siprox: merged configuration of {}, with where each value came from",
        loaded.origins.dir().display()
    );
    for f in &loaded.config.sources {
        let _ = writeln!(out, "# file {}", f.display());
    }
    for v in &loaded.config.env_overrides {
        let _ = writeln!(out, "# env  {v}");
    }
    let _ = writeln!(out, "# (optional keys that are not set are not shown)");
    let value = match toml::Value::try_from(&loaded.config) {
        Ok(toml::Value::Table(t)) => t,
        Ok(_) | Err(_) => {
            // The schema serializes to a table; anything else is a bug, not input.
            let _ = writeln!(out, "# (the configuration could not be rendered)");
            return out;
        }
    };
    let r = Renderer { loaded };
    r.table(&mut out, &mut Vec::new(), &value);
    out
}

struct Renderer<'a> {
    loaded: &'a Loaded,
}

impl Renderer<'_> {
    fn origin(&self, path: &[String]) -> String {
        let segs: Vec<&str> = path.iter().map(String::as_str).collect();
        match self.loaded.origins.of(&segs) {
            Some(o) => o.to_string(),
            None => "default".to_owned(),
        }
    }

    /// The scalars and plain lists of `t` under its header, then its sub-tables and
    /// arrays of tables, each under their own header.
    fn table(&self, out: &mut String, path: &mut Vec<String>, t: &toml::Table) {
        for (k, v) in t {
            if is_table_like(v) {
                continue;
            }
            path.push(k.clone());
            let line = format!("{} = {}", key(k), v);
            let _ = writeln!(out, "{line:<48} # {}", self.origin(path));
            path.pop();
        }
        for (k, v) in t {
            path.push(k.clone());
            match v {
                toml::Value::Table(sub) => {
                    let has_values = sub.values().any(|v| !is_table_like(v));
                    if has_values || sub.is_empty() {
                        let _ = writeln!(out, "\n[{}]", header(path));
                    }
                    self.table(out, path, sub);
                }
                toml::Value::Array(items) if is_table_like(v) => {
                    for (i, item) in items.iter().enumerate() {
                        path.push(i.to_string());
                        let line = format!("\n[[{}]]", header(&path[..path.len() - 1]));
                        let _ = writeln!(out, "{line:<49} # {}", self.origin(path));
                        if let toml::Value::Table(sub) = item {
                            self.table(out, path, sub);
                        }
                        path.pop();
                    }
                }
                _ => {}
            }
            path.pop();
        }
    }
}

/// A table, or a non-empty list of tables (`[[listen]]`).
fn is_table_like(v: &toml::Value) -> bool {
    match v {
        toml::Value::Table(_) => true,
        toml::Value::Array(items) => {
            !items.is_empty() && items.iter().all(|i| matches!(i, toml::Value::Table(_)))
        }
        _ => false,
    }
}

/// One key as TOML writes it: bare when it can be, quoted otherwise.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_owned()
    } else {
        toml::Value::String(k.to_owned()).to_string()
    }
}

fn header(path: &[String]) -> String {
    path.iter().map(|k| key(k)).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_config, ConfigSource};
    use std::path::{Path, PathBuf};

    #[test]
    fn every_value_names_its_file_and_the_output_loads_back() {
        let files = vec![
            ConfigSource {
                rel: PathBuf::from("00-core.toml"),
                text: "[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:5060\"\n[auth]\nalgorithms = [\"SHA-256\", \"MD5\"]\n".to_owned(),
            },
            ConfigSource {
                rel: PathBuf::from("50-baresip.toml"),
                text: "[auth]\nalgorithms = [\"MD5\"]\n[domains.'a.example']\nnames = [\"a.example\"]\n".to_owned(),
            },
        ];
        let env = [("SIPROX_LOG__LEVEL".to_owned(), "debug".to_owned())];
        let loaded = load_config(Path::new("conf.d"), files, env)
            .loaded
            .expect("valid");
        let text = render_with_origins(&loaded);
        let line = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no line {start:?} in:\n{text}"))
                .to_owned()
        };
        assert!(
            line("algorithms = [\"MD5\"]").ends_with("# conf.d/50-baresip.toml"),
            "{text}"
        );
        assert!(
            line("level = \"debug\"").ends_with("# environment variable SIPROX_LOG__LEVEL"),
            "{text}"
        );
        assert!(line("nonce_ttl = ").ends_with("# default"), "{text}");
        assert!(
            line("[[listen]]").ends_with("# conf.d/00-core.toml"),
            "{text}"
        );
        assert!(line("names = [\"a.example\"]").ends_with("# conf.d/50-baresip.toml"));
        assert!(text.contains("\n[domains.\"a.example\"]\n"), "{text}");

        // The printed configuration is itself a configuration, and the same one.
        let again = load_config(
            Path::new("printed"),
            vec![ConfigSource {
                rel: PathBuf::from("all.toml"),
                text: text.clone(),
            }],
            [],
        )
        .loaded
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let mut want = loaded.config.clone();
        want.sources = again.config.sources.clone();
        want.env_overrides.clear();
        assert_eq!(again.config, want);
    }
}
