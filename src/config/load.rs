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

/// Suffix of the file-level key that makes a file's entries of a collection replace the
/// entries of the files before it instead of being appended: `listen_replace = true`.
pub const REPLACE_SUFFIX: &str = "_replace";

/// The arrays of tables that are collections: each file appends its entries to those of the
/// files before it (unless it sets `<name>_replace = true`). Every other list is a value like
/// any scalar: the last file that sets it wins.
pub const COLLECTIONS: &[&str] = &["listen"];

/// What the pipeline gives every caller (`siprox check`, the start, every reload): the
/// configuration and what identifies its inputs.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The merged, validated configuration.
    pub config: Config,
    /// [`digest`] of the files and the environment variables this configuration was loaded
    /// from: a reload whose inputs have the same digest has nothing new to read.
    pub digest: u64,
    /// Where each value came from, for errors found later (files the values point to) and
    /// for `siprox check --print`.
    pub origins: Origins,
}

/// The pipeline's answer: the configuration or every error, and in both cases the warnings
/// (environment variables ignored) that the runtime logs and `check` prints.
#[derive(Debug)]
pub struct Outcome {
    /// The configuration, or every error of every file, key and variable.
    pub loaded: Result<Loaded, ConfigErrors>,
    /// One line each, to be shown at WARN.
    pub warnings: Vec<String>,
    /// When every file and variable read well and only validation failed: the merged
    /// configuration anyway, so that `siprox check` can go on to the checks of the files it
    /// points to and report those errors too. Never to serve from.
    pub invalid: Option<Box<Loaded>>,
}

/// Where the merged values came from (the merged figment keeps each value's source).
#[derive(Debug, Clone)]
pub struct Origins {
    dir: PathBuf,
    figment: Option<Figment>,
}

impl Origins {
    /// No file: a configuration built in code (every value "from" `dir`).
    pub fn none(dir: &Path) -> Self {
        Origins {
            dir: dir.to_path_buf(),
            figment: None,
        }
    }

    /// The file or variable that set the value at `path` (`["domains", "a.com", "server",
    /// "certificate"]`, array indexes as digits); `None` when no source set it (a default).
    pub fn of(&self, path: &[&str]) -> Option<Origin> {
        self.provenance().origin_of_path(path)
    }

    /// Like [`Origins::of`], the configuration directory when no source set the value.
    pub fn of_or_dir(&self, path: &[&str]) -> Origin {
        self.of(path)
            .unwrap_or_else(|| Origin::Dir(self.dir.clone()))
    }

    /// The configuration directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn provenance(&self) -> Provenance<'_> {
        Provenance::new(&self.dir, self.figment.as_ref())
    }
}

/// Merges and validates the configuration of `dir` (see [`load_config`]); the
/// configuration alone, for callers that need neither warnings nor digest.
pub fn load_sources(
    dir: &Path,
    files: Vec<ConfigSource>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    load_config(dir, files, env).loaded.map(|l| l.config)
}

/// The configuration pipeline: load (the contents the runtime read), merge, validate,
/// digest. `siprox check`, the start and every reload call this one function, so they
/// accept and refuse the same inputs with the same words. `env` may hold the whole process
/// environment: only `SIPROX_<SECTION>[__<KEY>]` variables with a known section are
/// configuration; other `SIPROX_` variables are named in one warning. `dir` only names
/// things in errors (`dir/rel`).
///
/// Order: every file sorted byte-wise by its relative path, whatever order `files` lists
/// them in; each file is merged over the previous ones: tables merge key by key, a later
/// scalar or plain list replaces the earlier one, the entries of a collection
/// ([`COLLECTIONS`]: `[[listen]]`) are appended unless the file sets `listen_replace =
/// true`; then the environment overrides (which replace).
///
/// Every error is reported: each file is checked alone (each wrong key is removed and the
/// file checked again, so one file's errors are all found), then the merged whole.
pub fn load_config(
    dir: &Path,
    mut files: Vec<ConfigSource>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Outcome {
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
    let EnvSplit {
        vars: overrides,
        mut errors,
        ignored,
    } = env_overrides(env);
    let warnings = if ignored.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "ignored environment variable{} {}: not SIPROX_<SECTION>__<KEY> with a known \
             section ({})",
            if ignored.len() == 1 { "" } else { "s" },
            ignored.join(", "),
            known_sections().join(", ")
        )]
    };
    let digest = digest_of(&files, &overrides);
    if files.is_empty() {
        errors.push(ConfigError::NoFiles {
            path: dir.to_path_buf(),
        });
    }

    // Each piece is first checked on its own: a figment extraction stops at the first error,
    // and on merged data an unknown key would be blamed on whichever file last touched its
    // table. Alone, every error names exactly its own file, and all files get checked.
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(&f.rel)).collect();
    // Top-level sections where a value was dropped: merged validation of those could only
    // repeat (or invent) what the file errors already say.
    let mut pruned = std::collections::BTreeSet::new();
    let mut leaves = Vec::new();
    for (f, path) in files.into_iter().zip(&paths) {
        let origin = Origin::File(path.clone());
        let parsed = match Toml::string(&f.text).data() {
            Ok(mut map) => map.remove(&Profile::Default).unwrap_or_default(),
            Err(e) => {
                errors.extend(e.into_iter().map(|e| convert(e, &origin)));
                continue;
            }
        };
        let (leaf, file_errors) = check_alone(path, parsed, &mut pruned);
        errors.extend(file_errors.into_iter().map(|e| {
            // serde knows the key, not where it is written: find its line in the text.
            let line = super::lines::line_of(&f.text, &e.path);
            let mut e = convert(e, &origin);
            if let (Some(line), ConfigError::Invalid { message, .. }) = (line, &mut e) {
                *message = format!("line {line}: {message}");
            }
            e
        }));
        leaves.push(leaf);
    }
    let mut good_vars = Vec::new();
    for var in overrides {
        match Figment::from(var.clone()).extract::<Config>() {
            Ok(_) => good_vars.push(var),
            Err(e) => {
                let origin = Origin::Env(var.name.clone());
                errors.extend(e.into_iter().map(|e| convert(e, &origin)));
                if let Some(top) = var.key.split('.').next() {
                    pruned.insert(top.to_owned());
                }
            }
        }
    }

    let collections = collect_collections(&leaves);
    let figment = merge_tree(leaves.into_iter().map(|l| l.figment).collect());
    let figment = figment.merge(collections);
    let figment = good_vars
        .iter()
        .fold(figment, |f, var| f.merge(var.clone()));
    let mut config: Config = match figment.extract() {
        Ok(c) => c,
        Err(e) => {
            // Unexpected once every piece passed alone, but merging can still combine two
            // valid pieces into an invalid whole; blame the source figment records.
            errors.extend(e.into_iter().map(|e| {
                let origin = e
                    .metadata
                    .as_ref()
                    .and_then(origin_of)
                    .unwrap_or_else(|| Origin::Dir(dir.to_path_buf()));
                convert(e, &origin)
            }));
            return Outcome {
                loaded: Err(ConfigErrors(errors)),
                warnings,
                invalid: None,
            };
        }
    };
    config.sources = paths;
    config.env_overrides = good_vars.into_iter().map(|v| v.name).collect();
    // `[cluster.tls]` is a TLS domain like any other from here on (checked, loaded and
    // reloaded with them); a domain written in conf.d under its name is refused below.
    let clash = config.domains.contains_key(crate::config::CLUSTER_DOMAIN);
    if let Some(d) = config
        .cluster
        .as_ref()
        .and_then(crate::config::cluster_domain)
    {
        if !clash {
            config
                .domains
                .insert(crate::config::CLUSTER_DOMAIN.to_owned(), d);
        }
    }

    let read_well = errors.is_empty();
    let provenance = Provenance::new(dir, Some(&figment));
    if clash {
        errors.push(ConfigError::Invalid {
            origin: Origin::Dir(dir.to_path_buf()),
            key: "domains".to_owned(),
            message: format!(
                "`{}` is the name of the domain made from [cluster.tls]; name yours otherwise",
                crate::config::CLUSTER_DOMAIN
            ),
        });
    }
    errors.extend(validate(&config, &provenance).into_iter().filter(|e| {
        let top = e.key().split(['.', '[']).next().unwrap_or("");
        top.is_empty() || !pruned.contains(top)
    }));
    let loaded = Loaded {
        config,
        digest,
        origins: Origins {
            dir: dir.to_path_buf(),
            figment: Some(figment),
        },
    };
    if errors.is_empty() {
        return Outcome {
            loaded: Ok(loaded),
            warnings,
            invalid: None,
        };
    }
    Outcome {
        loaded: Err(ConfigErrors(errors)),
        warnings,
        invalid: read_well.then(|| Box::new(loaded)),
    }
}

/// The digest of everything [`load_config`] reads: each file's relative path and text, and
/// the `SIPROX_` variables that are configuration (names and values). Computed here so that
/// the reload's "did anything change" and the pipeline hash the same inputs the same way.
pub fn digest(files: &[ConfigSource], env: impl IntoIterator<Item = (String, String)>) -> u64 {
    let mut files: Vec<&ConfigSource> = files.iter().collect();
    files.sort_by(|a, b| {
        a.rel
            .as_os_str()
            .as_encoded_bytes()
            .cmp(b.rel.as_os_str().as_encoded_bytes())
            .then_with(|| a.text.cmp(&b.text))
    });
    let vars = env_overrides(env).vars;
    digest_sorted(files.into_iter(), &vars)
}

fn digest_of(files: &[ConfigSource], vars: &[EnvVar]) -> u64 {
    digest_sorted(files.iter(), vars)
}

fn digest_sorted<'a>(files: impl Iterator<Item = &'a ConfigSource>, vars: &[EnvVar]) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same inputs give the same digest in every process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.rel.hash(&mut h);
        f.text.hash(&mut h);
    }
    for v in vars {
        v.name.hash(&mut h);
        v.value.hash(&mut h);
    }
    h.finish()
}

/// One file checked alone, with the values that failed removed.
struct Leaf {
    figment: Figment,
    /// `<collection>_replace = true` was set for these collections.
    replace: Vec<&'static str>,
}

/// How many wrong keys one file may have before the rest of it is left unchecked (each one
/// costs an extraction of the file).
const MAX_ERRORS_PER_FILE: usize = 100;

/// Checks one file's table alone and returns it with every failing value removed, with the
/// errors: serde stops at the first error, so the failing key is removed and the file
/// extracted again until it passes. An error inside a list drops the whole list (its later
/// entries would be renumbered). `pruned` collects the top-level sections that lost a value.
fn check_alone(
    path: &Path,
    mut dict: Dict,
    pruned: &mut std::collections::BTreeSet<String>,
) -> (Leaf, Vec<figment::Error>) {
    let mut errors = Vec::new();
    let mut replace = Vec::new();
    for name in COLLECTIONS {
        let key = format!("{name}{REPLACE_SUFFIX}");
        match dict.remove(&key) {
            None => {}
            Some(Value::Bool(_, true)) => replace.push(*name),
            Some(Value::Bool(_, false)) => {}
            Some(other) => {
                let mut e = figment::Error::from(format!(
                    "`{key}` must be true or false, not {}",
                    describe_value(&other)
                ));
                e.path = vec![key];
                errors.push(e);
            }
        }
    }
    let figment = loop {
        let figment = Figment::from(TomlFile {
            path: path.to_path_buf(),
            dict: dict.clone(),
        });
        let e = match figment.extract::<Config>() {
            Ok(_) => break figment,
            Err(e) => e,
        };
        let removed = errors.len() < MAX_ERRORS_PER_FILE && remove_at(&mut dict, &e.path);
        if let Some(top) = e.path.first() {
            pruned.insert(top.clone());
        }
        errors.push(e);
        if !removed {
            // Nothing left to remove: keep only what passes, an empty file.
            pruned.extend(dict.keys().cloned());
            break Figment::from(TomlFile {
                path: path.to_path_buf(),
                dict: Dict::new(),
            });
        }
    };
    (Leaf { figment, replace }, errors)
}

/// Removes the value at `path` from `dict` (or the list that holds it); false when there is
/// nothing to remove (an error about the whole file, or a path that names nothing).
fn remove_at(dict: &mut Dict, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return dict.remove(first).is_some();
    }
    match dict.get_mut(first) {
        Some(Value::Dict(_, inner)) => {
            if remove_at(inner, rest) {
                true
            } else {
                // A missing key in a table is an error of the table: drop the table.
                dict.remove(first).is_some()
            }
        }
        // Inside a list: the list goes (see `check_alone`).
        Some(_) => dict.remove(first).is_some(),
        None => false,
    }
}

fn describe_value(v: &Value) -> String {
    match v {
        Value::String(_, s) => format!("the string {s:?}"),
        Value::Num(..) => "a number".to_owned(),
        Value::Array(..) => "a list".to_owned(),
        Value::Dict(..) => "a table".to_owned(),
        _ => "that value".to_owned(),
    }
}

/// The merged entries of every collection, in file order: appended, or restarted by a file
/// that sets `<name>_replace = true`. Each entry keeps the tag of the file it came from.
fn collect_collections(leaves: &[Leaf]) -> Collections {
    let mut merged = Dict::new();
    for name in COLLECTIONS {
        let mut entries: Option<Vec<Value>> = None;
        for leaf in leaves {
            let these = match leaf.figment.find_value(name) {
                Ok(Value::Array(_, items)) => Some(items),
                _ => None,
            };
            if leaf.replace.contains(name) {
                entries = Some(these.unwrap_or_default());
            } else if let Some(items) = these {
                entries.get_or_insert_with(Vec::new).extend(items);
            }
        }
        if let Some(entries) = entries {
            merged.insert((*name).to_owned(), Value::from(entries));
        }
    }
    Collections(merged)
}

/// The merged collections as a provider merged over the files' (which replaced each other).
struct Collections(Dict);

impl Provider for Collections {
    fn metadata(&self) -> Metadata {
        // No source: the list itself is no single file's; its entries keep their files' tags.
        Metadata::named("collections of every file")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

/// One file's table as a figment provider that names the file: values keep it as their
/// source, so validation errors name the file like a `Toml::file` would.
struct TomlFile {
    path: PathBuf,
    dict: Dict,
}

impl Provider for TomlFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("TOML file", Source::File(self.path.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// The files merged in order, as a balanced tree of figments: merging one file into an
/// accumulated figment rebuilds the tables it touches, so file after file costs O(n^2) for
/// n tenant files (57 ms for 1,001); halves merged into halves cost O(n log n) (`merge` is
/// associative: later wins, tables merge key by key). Values keep the tag of the file they
/// came from (a figment merged into another keeps its metadata), so every error still names
/// its file.
fn merge_tree(mut figments: Vec<Figment>) -> Figment {
    match figments.len() {
        0 => Figment::new(),
        1 => figments.pop().unwrap_or_default(),
        n => {
            let right = figments.split_off(n / 2);
            merge_tree(figments).merge(merge_tree(right))
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

/// The `SIPROX_` variables of an environment, sorted out.
struct EnvSplit {
    /// Configuration: a known section, sorted by name so that overlapping ones
    /// (`SIPROX_LOG` and `SIPROX_LOG__LEVEL`) always apply in the same order.
    vars: Vec<EnvVar>,
    /// Known section, malformed name.
    errors: Vec<ConfigError>,
    /// `SIPROX_` variables that are not configuration (`SIPROX_HOME`), sorted.
    ignored: Vec<String>,
}

/// The top-level keys of the configuration (`log`, `listen`, ...): the sections an
/// environment variable may name.
pub fn known_sections() -> Vec<String> {
    // From the schema itself (its derived `Deserialize`'s field list, optional sections
    // like `[cluster]` included, which a serialized default leaves out), so a new section
    // is known here the day it exists.
    let mut fields: &'static [&'static str] = &[];
    let _ = <Config as serde::Deserialize>::deserialize(FieldNames(&mut fields));
    let mut out: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
    out.sort();
    out
}

/// A deserializer that only notes the field names of the struct asked of it, then stops.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("only the field names are read"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("only the field names are read"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

/// Picks the configuration variables out of `env`: `SIPROX_<SECTION>` or
/// `SIPROX_<SECTION>__<KEY>...` where `<SECTION>` is a known section (any case, as figment's
/// `Env::prefixed` has it). Any other `SIPROX_` variable belongs to something else (a
/// wrapper script's `SIPROX_HOME`): it is ignored, and named so that a misspelt section is
/// not silently lost.
fn env_overrides(env: impl IntoIterator<Item = (String, String)>) -> EnvSplit {
    let sections = known_sections();
    let mut split = EnvSplit {
        vars: Vec::new(),
        errors: Vec::new(),
        ignored: Vec::new(),
    };
    for (name, value) in env {
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
        let section = key.split('.').next().unwrap_or("");
        if !sections.iter().any(|s| s == section) {
            split.ignored.push(name);
            continue;
        }
        if key.split('.').any(str::is_empty) {
            split.errors.push(ConfigError::Invalid {
                origin: Origin::Env(name.clone()),
                key: String::new(),
                message: format!(
                    "empty key segment: nested keys are separated by exactly one `{ENV_SEPARATOR}`"
                ),
            });
            continue;
        }
        split.vars.push(EnvVar {
            name,
            key,
            value: value.trim().to_owned(),
        });
    }
    split.vars.sort_by(|a, b| a.name.cmp(&b.name));
    split.ignored.sort();
    split
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
            text.contains("/etc/siprox/domains/b.toml: line 2: unknown key `lvel`"),
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
        let EnvSplit {
            vars,
            errors,
            ignored,
        } = env_overrides(env);
        assert!(errors.is_empty());
        assert!(ignored.is_empty(), "{ignored:?}");
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
        let EnvSplit { vars, errors, .. } =
            env_overrides([("SIPROX_LOG____LEVEL".to_owned(), "debug".to_owned())]);
        assert!(vars.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("SIPROX_LOG____LEVEL"));
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_later_file_replaces_a_list_instead_of_appending_to_it() {
        let files = vec![
            src(
                "00-core.toml",
                &format!("{CORE}[auth]\nalgorithms = [\"SHA-256\", \"MD5\"]\n[management]\nallow = [\"admin\", \"ops\"]\n"),
            ),
            src(
                "50-baresip.toml",
                "[auth]\nalgorithms = [\"MD5\"]\n[management]\nallow = [\"ops\"]\n",
            ),
        ];
        let c = load_sources(Path::new("conf.d"), files, []).expect("valid");
        assert_eq!(c.auth.algorithms, ["MD5"]);
        assert_eq!(c.management.allow, ["ops"], "a drop-in revokes `admin`");
        // Tables still merge key by key: the nonce TTL of the defaults is untouched.
        assert_eq!(
            c.auth.nonce_ttl,
            crate::config::AuthConfig::default().nonce_ttl
        );
    }

    #[test]
    fn listeners_append_across_files_unless_a_file_replaces_them() {
        let tcp = "[[listen]]\nproto = \"tcp\"\naddr = \"127.0.0.1:5061\"\n";
        let dir = Path::new("conf.d");
        let appended = load_sources(
            dir,
            vec![src("00-core.toml", CORE), src("10-tcp.toml", tcp)],
            [],
        )
        .expect("valid");
        let addrs = |c: &Config| c.listen.iter().map(|l| l.addr.port()).collect::<Vec<_>>();
        assert_eq!(addrs(&appended), [5060, 5061]);

        let replacing = format!("listen_replace = true\n{tcp}");
        let replaced = load_config(
            dir,
            vec![
                src("00-core.toml", CORE),
                src("10-tcp.toml", &replacing),
                src(
                    "20-more.toml",
                    "[[listen]]\nproto = \"tls\"\naddr = \"127.0.0.1:5062\"\n",
                ),
            ],
            [],
        )
        .loaded
        .expect("valid");
        assert_eq!(addrs(&replaced.config), [5061, 5062]);
        // Each entry still names the file it came from.
        assert_eq!(
            replaced.origins.of(&["listen", "0", "addr"]),
            Some(Origin::File(dir.join("10-tcp.toml")))
        );
        assert_eq!(
            replaced.origins.of(&["listen", "1"]),
            Some(Origin::File(dir.join("20-more.toml")))
        );

        // Replacing with nothing removes them all: then there is no listener.
        let errors = load_sources(
            dir,
            vec![
                src("00-core.toml", CORE),
                src("10-x.toml", "listen_replace = true\n"),
            ],
            [],
        )
        .unwrap_err();
        assert!(errors.to_string().contains("no listener"), "{errors}");
        let errors = load_sources(
            dir,
            vec![
                src("00-core.toml", CORE),
                src("10-x.toml", "listen_replace = 1\n"),
            ],
            [],
        )
        .unwrap_err();
        assert!(
            errors
                .to_string()
                .contains("conf.d/10-x.toml: line 1: `listen_replace` must be true or false, not a number at key \"listen_replace\""),
            "{errors}"
        );
    }

    #[test]
    fn environment_overrides_replace_lists_too() {
        let files = vec![src(
            "00-core.toml",
            &format!("{CORE}[auth]\nalgorithms = [\"SHA-256\", \"MD5\"]\n"),
        )];
        let c = load_sources(
            Path::new("conf.d"),
            files,
            env(&[("SIPROX_AUTH__ALGORITHMS", "[\"MD5\"]")]),
        )
        .expect("valid");
        assert_eq!(c.auth.algorithms, ["MD5"]);
    }

    #[test]
    fn every_error_of_every_file_is_reported() {
        let files = vec![
            src("00-core.toml", CORE),
            src(
                "10-a.toml",
                "[log]\nlvel = 1\nlevel = 7\n[limits]\nmax_headers = \"x\"\nbogus = 1\n",
            ),
            src("20-b.toml", "[connections]\nsend_timeout = \"soon\"\n"),
            src("30-c.toml", "[log\n"),
            src("40-d.toml", "[runtime]\nworkers = 1000000\n"),
        ];
        let errors = load_sources(Path::new("conf.d"), files, []).unwrap_err();
        let text = errors.to_string();
        for want in [
            "conf.d/10-a.toml: line 2: unknown key `lvel`",
            "conf.d/10-a.toml: line 3: invalid type",
            "at key \"log.level\"",
            "at key \"limits.max_headers\"",
            "conf.d/10-a.toml: line 6: unknown key `bogus`",
            "conf.d/20-b.toml:",
            "at key \"connections.send_timeout\"",
            "conf.d/30-c.toml: TOML parse error at line 1",
            // Merged validation still runs for what the files left intact.
            "conf.d/40-d.toml: ",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn unknown_siprox_variables_are_ignored_with_one_warning() {
        let out = load_config(
            Path::new("conf.d"),
            vec![src("00-core.toml", CORE)],
            env(&[
                ("SIPROX_HOME", "/x"),
                ("SIPROX_BIN", "/usr/bin/siprox"),
                ("SIPROX_LOG__LEVEL", "debug"),
                ("SIPROX_CONFIG_DIR", "/etc/siprox"),
            ]),
        );
        let loaded = out
            .loaded
            .expect("unrelated variables do not stop the load");
        assert_eq!(loaded.config.log.level, "debug");
        assert_eq!(loaded.config.env_overrides, ["SIPROX_LOG__LEVEL"]);
        assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
        assert!(
            out.warnings[0].starts_with("ignored environment variables SIPROX_BIN, SIPROX_HOME:"),
            "{:?}",
            out.warnings
        );
        // A known section with an unknown key is still an error: that is a typo.
        let errors = load_sources(
            Path::new("conf.d"),
            vec![src("00-core.toml", CORE)],
            env(&[("SIPROX_LOG__LEVL", "debug")]),
        )
        .unwrap_err();
        assert!(errors.to_string().contains("SIPROX_LOG__LEVL"), "{errors}");
    }

    #[test]
    fn the_digest_covers_files_and_configuration_variables_only() {
        let files = vec![src("00-core.toml", CORE)];
        let base = digest(&files, []);
        let loaded = load_config(Path::new("conf.d"), files.clone(), [])
            .loaded
            .expect("valid");
        assert_eq!(loaded.digest, base, "the pipeline and `digest` agree");
        assert_eq!(
            digest(&files, env(&[("SIPROX_HOME", "/x"), ("PATH", "/")])),
            base
        );
        assert_ne!(digest(&files, env(&[("SIPROX_LOG__LEVEL", "debug")])), base);
        let edited = vec![src("00-core.toml", &format!("{CORE}# comment\n"))];
        assert_ne!(digest(&edited, []), base);
    }

    #[test]
    fn known_sections_come_from_the_schema() {
        let s = known_sections();
        // `cluster` is optional: absent from a serialized default, a section all the same.
        for want in [
            "listen",
            "log",
            "auth",
            "domains",
            "management",
            "tls",
            "cluster",
        ] {
            assert!(s.iter().any(|k| k == want), "{want} in {s:?}");
        }
        assert!(!s.iter().any(|k| k == "sources"), "{s:?}");
        assert!(!s.iter().any(|k| k == "env_overrides"), "{s:?}");
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
