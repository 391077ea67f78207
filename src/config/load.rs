//! Merging conf.d/: which files count, in which order, merged how, overridden by which
//! environment variables, from contents the runtime read. Must never open a file, list a
//! directory or read the environment (the runtime does, in `siprox_actors::reload::files`), and must
//! never panic on what a file contains.

use std::cmp::Ordering;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::error::{ConfigError, ConfigErrors, Origin};
use super::schema::Config;
use super::validate::{validate, Provenance};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SIPROX_";
/// Separator of nested keys in environment variable names: `SIPROX_LOG__LEVEL` is `log.level`.
pub const ENV_SEPARATOR: &str = "__";
/// Environment variable naming the configuration directory. It shares the `SIPROX_` prefix,
/// so it is reserved: it is never read as a configuration key.
pub const ENV_CONFIG_DIR: &str = "SIPROX_CONFIG_DIR";
/// Subfolder of the configuration directory that holds one file per tenant domain.
pub const DOMAINS_DIR: &str = "domains";

/// One configuration file as the runtime read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// Path relative to the configuration directory (`10-x.toml`, `domains/a.toml`): the
    /// merge order sorts on its bytes.
    pub rel: PathBuf,
    /// The file's text.
    pub text: String,
}

/// Merges and validates the configuration of `dir` from the contents of its files, with
/// `SIPROX_...` overrides taken from `env` (every variable of the environment may be
/// passed: the others are skipped). `dir` only names things in errors (`dir/rel`).
///
/// Order: every file sorted byte-wise by its relative path, whatever order `files` lists
/// them in; each file is merged over the previous ones (tables merge, later scalars win,
/// arrays are concatenated); then the environment overrides (which replace, not append).
pub fn load_sources(
    dir: &Path,
    mut files: Vec<ConfigSource>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    // The sort is what makes the same files always give the same configuration, whatever
    // order the file system listed them in.
    files.sort_by(|a, b| {
        match a
            .rel
            .as_os_str()
            .as_encoded_bytes()
            .cmp(b.rel.as_os_str().as_encoded_bytes())
        {
            Ordering::Equal => a.text.cmp(&b.text),
            o => o,
        }
    });
    let (overrides, mut errors) = env_overrides(env);
    if files.is_empty() {
        errors.push(ConfigError::NoFiles {
            path: dir.to_path_buf(),
        });
    }

    // Each piece is first checked on its own: a figment extraction stops at the first error,
    // and on merged data an unknown key would be blamed on whichever file last touched its
    // table. Alone, every error names exactly its own file, and all files get checked.
    // Each file is parsed once: its figment is checked alone, then merged.
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(&f.rel)).collect();
    let leaves: Vec<Figment> = files
        .into_iter()
        .zip(&paths)
        .map(|(f, path)| {
            Figment::from(TomlFile {
                path: path.clone(),
                text: f.text,
            })
        })
        .collect();
    for (file, leaf) in paths.iter().zip(&leaves) {
        if let Err(e) = leaf.extract::<Config>() {
            let origin = Origin::File(file.clone());
            errors.extend(e.into_iter().map(|e| convert(e, &origin)));
        }
    }
    for var in &overrides {
        if let Err(e) = Figment::from(var.clone()).extract::<Config>() {
            let origin = Origin::Env(var.name.clone());
            errors.extend(e.into_iter().map(|e| convert(e, &origin)));
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }

    let figment = merge_tree(leaves);
    let figment = overrides
        .iter()
        .fold(figment, |f, var| f.merge(var.clone()));
    let mut config: Config = figment.extract().map_err(|e| {
        // Unexpected once every piece passed alone, but merging can still combine two
        // valid pieces into an invalid whole; blame the source figment records.
        ConfigErrors(
            e.into_iter()
                .map(|e| {
                    let origin = e
                        .metadata
                        .as_ref()
                        .and_then(origin_of)
                        .unwrap_or_else(|| Origin::Dir(dir.to_path_buf()));
                    convert(e, &origin)
                })
                .collect(),
        )
    })?;
    config.sources = paths;
    config.env_overrides = overrides.into_iter().map(|v| v.name).collect();

    let provenance = Provenance::new(dir, Some(&figment));
    let errors = validate(&config, &provenance);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// One file's text as a figment provider that names the file: values keep it as their
/// source, so validation errors name the file like a `Toml::file` would.
struct TomlFile {
    path: PathBuf,
    text: String,
}

impl Provider for TomlFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("TOML file", Source::File(self.path.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Toml::string(&self.text).data()
    }
}

/// The files merged in order, as a balanced tree of figments: merging one file into an
/// accumulated figment rebuilds the tables it touches, so file after file costs O(n^2) for
/// n tenant files (57 ms for 1,001); halves merged into halves cost O(n log n). Values keep
/// the tag of the file they came from (a figment merged into another keeps its metadata),
/// so every error still names its file.
fn merge_tree(mut figments: Vec<Figment>) -> Figment {
    match figments.len() {
        0 => Figment::new(),
        1 => figments.pop().unwrap_or_default(),
        n => {
            let right = figments.split_off(n / 2);
            merge_tree(figments).admerge(merge_tree(right))
        }
    }
}

/// Whether a file of the configuration directory (or of its `domains/`) is a configuration
/// file: `*.toml`, not hidden. Editor leftovers (`x.toml~`, `#x.toml#`, `.x.toml.swp`, `.#x.toml`)
/// fail one test or the other.
pub fn is_config_file_name(name: &OsStr) -> bool {
    let b = name.as_encoded_bytes();
    !b.starts_with(b".") && b.ends_with(b".toml")
}

/// One `SIPROX_...` variable, as a figment provider of its single key.
#[derive(Debug, Clone)]
struct EnvVar {
    /// Full variable name, as found (error messages quote it).
    name: String,
    /// Dotted, lowercased key path.
    key: String,
    value: String,
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        // The variable name as a custom source lets validation errors name the variable.
        Metadata::from("environment variable", Source::Custom(self.name.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let value: Value = match self.value.parse() {
            Ok(v) => v,
            Err(never) => match never {},
        };
        match figment::util::nest(&self.key, value).into_dict() {
            Some(dict) => Ok(Profile::Default.collect(dict)),
            None => Err(figment::Error::from(format!(
                "`{}` does not name a configuration key",
                self.name
            ))),
        }
    }
}

/// Picks the `SIPROX_` variables out of `env`, sorted by name so that overlapping ones
/// (`SIPROX_LOG` and `SIPROX_LOG__LEVEL`) always apply in the same order.
fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> (Vec<EnvVar>, Vec<ConfigError>) {
    let mut vars = Vec::new();
    let mut errors = Vec::new();
    for (name, value) in env {
        // Case-insensitive prefix, as figment's `Env::prefixed` has it.
        let Some(rest) = name
            .get(..ENV_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
            .and_then(|_| name.get(ENV_PREFIX.len()..))
        else {
            continue;
        };
        if name.eq_ignore_ascii_case(ENV_CONFIG_DIR) {
            continue;
        }
        let key = rest.replace(ENV_SEPARATOR, ".").to_ascii_lowercase();
        if key.split('.').any(str::is_empty) {
            errors.push(ConfigError::Invalid {
                origin: Origin::Env(name.clone()),
                key: String::new(),
                message: format!(
                    "empty key segment: nested keys are separated by exactly one `{ENV_SEPARATOR}`"
                ),
            });
            continue;
        }
        vars.push(EnvVar {
            name: name.clone(),
            key,
            value: value.trim().to_owned(),
        });
    }
    vars.sort_by(|a, b| a.name.cmp(&b.name));
    (vars, errors)
}

/// The origin recorded in figment metadata: a file, or one of our environment variables.
pub(crate) fn origin_of(md: &Metadata) -> Option<Origin> {
    match md.source.as_ref()? {
        Source::File(path) => Some(Origin::File(path.clone())),
        Source::Custom(name) => Some(Origin::Env(name.clone())),
        _ => None,
    }
}

/// A figment error as one of ours: our own wording, one line, key path in TOML style.
fn convert(e: figment::Error, origin: &Origin) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.clone(),
        key: render_key(e.path.iter().map(String::as_str)),
        message: describe(&e.kind),
    }
}

/// Renders a key path as an operator would write it: `listen[1].proto`,
/// `domains.'example.com'.names` (TOML literal-string keys, which read well inside the
/// double quotes of an error message).
pub(crate) fn render_key<'a>(path: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for (i, seg) in path.into_iter().enumerate() {
        if i > 0 && !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
            continue;
        }
        if i > 0 {
            out.push('.');
        }
        let bare = !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare {
            out.push_str(seg);
        } else {
            // Literal strings cannot hold `'`; fall back to an escaped basic string then.
            if seg.contains('\'') || seg.chars().any(char::is_control) {
                out.push_str(&format!("{seg:?}"));
            } else {
                out.push('\'');
                out.push_str(seg);
                out.push('\'');
            }
        }
    }
    out
}

/// One line saying what is wrong, without figment's doubled backquotes.
fn describe(kind: &Kind) -> String {
    let expected = |list: &[&str]| {
        if list.is_empty() {
            String::new()
        } else {
            format!(" (expected one of: {})", list.join(", "))
        }
    };
    match kind {
        Kind::UnknownField(field, exp) => format!("unknown key `{field}`{}", expected(exp)),
        Kind::UnknownVariant(value, exp) => format!("unknown value `{value}`{}", expected(exp)),
        Kind::MissingField(field) => format!("missing key `{field}`"),
        Kind::DuplicateField(field) => format!("duplicate key `{field}`"),
        Kind::Message(m) => one_line(m),
        other => one_line(&other.to_string()),
    }
}

/// Folds a multi-line message (the TOML parser draws a caret under the error) into its first
/// and last lines: `TOML parse error at line 3, column 7: expected `=``.
fn one_line(m: &str) -> String {
    let lines: Vec<&str> = m.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match lines.as_slice() {
        [] => "invalid value".to_owned(),
        [only] => (*only).to_owned(),
        [first, .., last] if !last.starts_with('|') => format!("{first}: {last}"),
        [first, ..] => (*first).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_names() {
        for ok in ["00-core.toml", "a.toml", "x.y.toml"] {
            assert!(is_config_file_name(OsStr::new(ok)), "{ok}");
        }
        for skip in [
            ".toml",
            ".hidden.toml",
            "x.toml~",
            ".x.toml.swp",
            "#x.toml#",
            ".#x.toml",
            "x.toml.bak",
            "README.md",
            "x.TOML.orig",
        ] {
            assert!(!is_config_file_name(OsStr::new(skip)), "{skip}");
        }
    }

    fn src(rel: &str, text: &str) -> ConfigSource {
        ConfigSource {
            rel: PathBuf::from(rel),
            text: text.to_owned(),
        }
    }

    const CORE: &str = "[[listen]]\nproto = \"udp\"\naddr = \"127.0.0.1:5060\"\n";

    #[test]
    fn contents_merge_in_byte_order_whatever_order_they_come_in() {
        let files = [
            src("domains/a.toml", "[log]\nlevel = \"warn\"\n"),
            src("00-core.toml", CORE),
            src("10-x.toml", "[log]\nlevel = \"debug\"\n"),
        ];
        let dir = Path::new("conf.d");
        let a = load_sources(dir, files.to_vec(), []).expect("valid");
        let mut reversed = files.to_vec();
        reversed.reverse();
        let b = load_sources(dir, reversed, []).expect("valid");
        // domains/ sorts after the top-level files: its value wins.
        assert_eq!(a.log.level, "warn");
        assert_eq!(a.log, b.log);
        assert_eq!(
            a.sources,
            ["00-core.toml", "10-x.toml", "domains/a.toml"].map(|r| dir.join(r))
        );
    }

    #[test]
    fn errors_name_the_file_by_directory_and_relative_path() {
        let files = vec![
            src("00-core.toml", CORE),
            src("domains/b.toml", "[log]\nlvel = 1\n"),
        ];
        let env = [("SIPROX_LOG__LEVL".to_owned(), "x".to_owned())];
        let errors = load_sources(Path::new("/etc/siprox"), files, env).unwrap_err();
        let text = errors.to_string();
        assert_eq!(errors.len(), 2, "{text}");
        assert!(
            text.contains("/etc/siprox/domains/b.toml: unknown key `lvel`"),
            "{text}"
        );
        assert!(text.contains("at key \"log.lvel\""), "{text}");
        assert!(
            text.contains("environment variable SIPROX_LOG__LEVL: unknown key `levl`"),
            "{text}"
        );
    }

    #[test]
    fn no_files_is_an_error_naming_the_directory() {
        let errors = load_sources(Path::new("conf.d"), Vec::new(), []).unwrap_err();
        assert!(errors.to_string().contains("conf.d: no *.toml"), "{errors}");
    }

    #[test]
    fn keys_render_like_toml() {
        assert_eq!(render_key(["listen", "1", "proto"]), "listen[1].proto");
        assert_eq!(render_key(["lisen"]), "lisen");
        assert_eq!(
            render_key(["domains", "example.com", "names", "0"]),
            "domains.'example.com'.names[0]"
        );
        assert_eq!(render_key(Vec::<&str>::new()), "");
    }

    #[test]
    fn env_names_map_to_keys_and_skip_the_config_dir() {
        let env = [
            ("SIPROX_LOG__LEVEL", "debug"),
            ("siprox_limits__max_headers", " 10 "),
            ("SIPROX_CONFIG_DIR", "/etc/siprox"),
            ("PATH", "/bin"),
            ("SIPROX", "x"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let (vars, errors) = env_overrides(env);
        assert!(errors.is_empty());
        let got: Vec<_> = vars
            .iter()
            .map(|v| (v.name.as_str(), v.key.as_str(), v.value.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("SIPROX_LOG__LEVEL", "log.level", "debug"),
                ("siprox_limits__max_headers", "limits.max_headers", "10"),
            ]
        );
    }

    #[test]
    fn env_name_with_empty_segment_is_an_error() {
        let (vars, errors) =
            env_overrides([("SIPROX_LOG____LEVEL".to_owned(), "debug".to_owned())]);
        assert!(vars.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("SIPROX_LOG____LEVEL"));
    }

    #[test]
    fn multi_line_messages_fold_to_one_line() {
        let m =
            "TOML parse error at line 1, column 6\n  |\n1 | x [[\n  |      ^\nexpected `.`, `=`\n";
        assert_eq!(
            one_line(m),
            "TOML parse error at line 1, column 6: expected `.`, `=`"
        );
        assert_eq!(one_line("plain"), "plain");
        assert_eq!(one_line(""), "invalid value");
    }
}
