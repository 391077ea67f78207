//! The pure parts of `siproxctl`: friendly subcommands to RPC methods, argument typing,
//! the `~/.config/siproxctl.toml` settings, where the client certificate and CA come from
//! (and the hint when the server or the client is not trusted), the management URL, a
//! minimal HTTP/1.1 response reader, and the human rendering of results. No sockets here
//! (the binary owns those), so all of it is unit-tested; must never panic on what a server
//! answers.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// Default management URL (the `[management]` default listen address).
pub const DEFAULT_URL: &str = "https://127.0.0.1:5062";

/// `siproxctl.toml`: every key optional; command-line options and `SIPROXCTL_*` variables
/// override it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtlFile {
    pub url: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

impl CtlFile {
    /// Reads `path`; a missing file is empty settings only when `required` is false.
    pub fn load(path: &Path, required: bool) -> Result<CtlFile, String> {
        if !path.exists() {
            if required {
                return Err(format!("{}: no such file", path.display()));
            }
            return Ok(CtlFile::default());
        }
        use figment::providers::Format as _;
        figment::Figment::new()
            .merge(figment::providers::Toml::file_exact(path))
            .extract()
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The settings file used without `--config`: the user's own ([`CtlFile::user_path`])
    /// when it exists, else the system's ([`SYSTEM_PATH`], which the Debian package writes)
    /// when it exists, else the user's (absent: every setting at its default).
    pub fn default_path() -> Option<PathBuf> {
        CtlFile::default_path_of(CtlFile::user_path(), Path::new(SYSTEM_PATH))
    }

    /// [`CtlFile::default_path`] with the user's and the system's paths given.
    pub fn default_path_of(user: Option<PathBuf>, system: &Path) -> Option<PathBuf> {
        if user.as_ref().is_some_and(|p| p.exists()) {
            return user;
        }
        if system.exists() {
            return Some(system.to_path_buf());
        }
        user
    }

    /// `$XDG_CONFIG_HOME/siproxctl.toml`, else `~/.config/siproxctl.toml`.
    pub fn user_path() -> Option<PathBuf> {
        if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
            return Some(PathBuf::from(x).join("siproxctl.toml"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/siproxctl.toml"))
    }
}

/// The system-wide settings file: the package's, for root and the `siprox` group (relative
/// paths in it resolve against /etc/siprox).
pub const SYSTEM_PATH: &str = "/etc/siprox/siproxctl.toml";

/// Where a client certificate or CA setting came from (named in the hint after a refused
/// handshake, so that an operator sees which file was used and why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--cert` / `--ca` (or `SIPROXCTL_CERT` / `SIPROXCTL_CA`).
    Option,
    /// The settings file (relative paths in it resolve against its folder).
    Settings(PathBuf),
    /// siprox's development material, found in a `certs/` folder.
    Dev,
    /// Not set, and no development material found.
    Unset,
}

/// The client certificate, key and CA a call uses, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub cert_origin: Origin,
    pub ca_origin: Origin,
    /// The `certs/` folders searched for siprox's development material, in order.
    pub searched: Vec<PathBuf>,
}

/// `--cert`, `--key`, `--ca` as given (options or `SIPROXCTL_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

/// The `certs/` folders that may hold siprox's development material (`admin.pem`,
/// `admin.key`, `ca.pem`), most specific first: beside siprox's configuration directory
/// (siprox resolves relative paths against `conf.d/..`), then in the working directory (the
/// repository root, where `cargo run` is typed). Nothing further up: which certificate a
/// call presents must not depend on what happens to lie in a parent folder.
pub fn dev_search_dirs(conf_dir: Option<&Path>, cwd: Option<&Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some(c) = conf_dir {
        let parent = match c.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        out.push(parent.join("certs"));
    }
    let here = cwd.map_or_else(|| PathBuf::from("certs"), |c| c.join("certs"));
    if !out.contains(&here) {
        out.push(here);
    }
    out
}

/// Picks the client certificate, key and CA: the options, then the settings file (its
/// relative paths against its own folder, not the working directory), then the first of
/// `search` that holds siprox's development material. A key not given is the development
/// `admin.key` beside a development certificate, else the certificate file itself.
pub fn resolve_material(
    given: &Given,
    file: &CtlFile,
    file_path: Option<&Path>,
    search: &[PathBuf],
    exists: &dyn Fn(&Path) -> bool,
) -> Material {
    let file_dir = file_path.and_then(Path::parent);
    let from_file = |p: &Option<PathBuf>| {
        p.as_ref().map(|p| match file_dir {
            Some(d) if p.is_relative() => d.join(p),
            _ => p.clone(),
        })
    };
    let dev_dir = search
        .iter()
        .find(|d| exists(&d.join("admin.pem")) || exists(&d.join("ca.pem")));
    let dev = |f: &str| dev_dir.map(|d| d.join(f)).filter(|p| exists(p));
    let settings = || Origin::Settings(file_path.map(Path::to_path_buf).unwrap_or_default());

    let (cert, cert_origin) = match (&given.cert, from_file(&file.cert)) {
        (Some(c), _) => (Some(c.clone()), Origin::Option),
        (None, Some(c)) => (Some(c), settings()),
        (None, None) => match dev("admin.pem") {
            Some(c) => (Some(c), Origin::Dev),
            None => (None, Origin::Unset),
        },
    };
    let key = given
        .key
        .clone()
        .or_else(|| from_file(&file.key))
        .or_else(|| {
            (cert_origin == Origin::Dev)
                .then(|| dev("admin.key"))
                .flatten()
        })
        .or_else(|| cert.clone());
    let (ca, ca_origin) = match (&given.ca, from_file(&file.ca)) {
        (Some(c), _) => (Some(c.clone()), Origin::Option),
        (None, Some(c)) => (Some(c), settings()),
        (None, None) => match dev("ca.pem") {
            Some(c) => (Some(c), Origin::Dev),
            None => (None, Origin::Unset),
        },
    };
    Material {
        cert,
        key,
        ca,
        cert_origin,
        ca_origin,
        searched: search.to_vec(),
    }
}

/// Why a TLS connection to the management listener failed, as far as the client can tell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The server's certificate did not verify against the CA in use.
    #[error(
        "TLS handshake with {addr} failed: the server's certificate did not verify ({reason})"
    )]
    ServerNotTrusted { addr: String, reason: String },
    /// The handshake or the first read failed after the server's certificate verified: most
    /// often the server refused (or wanted) a client certificate.
    #[error("{what}")]
    ClientNotAccepted { what: String },
}

fn describe(p: Option<&PathBuf>, o: &Origin) -> String {
    match (p, o) {
        (Some(p), Origin::Option) => format!("{} (from the option)", p.display()),
        (Some(p), Origin::Settings(f)) => format!("{} (from {})", p.display(), f.display()),
        (Some(p), _) => format!("{} (development material)", p.display()),
        (None, _) => "none".to_owned(),
    }
}

fn searched(m: &Material, file: &str) -> String {
    if m.searched.is_empty() {
        return String::new();
    }
    let dirs: Vec<String> = m
        .searched
        .iter()
        .map(|d| d.join(file).display().to_string())
        .collect();
    format!("; looked for {}", dirs.join(", "))
}

/// What an operator should pass after `r`, naming the options and the files this call used
/// and looked for.
pub fn hint(r: &Refused, m: &Material) -> String {
    match r {
        Refused::ServerNotTrusted { .. } => format!(
            "hint: pass --ca FILE (or SIPROXCTL_CA, or `ca` in the settings file) with the CA \
             that signed the server's [management] certificate; for siprox's development \
             certificates that is certs/ca.pem beside its conf.d (--conf-dir DIR points there).\n  \
             CA used: {}{}",
            m.ca.as_ref().map_or_else(
                || "the system's CA store".to_owned(),
                |p| describe(Some(p), &m.ca_origin)
            ),
            if m.ca_origin == Origin::Unset {
                searched(m, "ca.pem")
            } else {
                String::new()
            }
        ),
        Refused::ClientNotAccepted { .. } => format!(
            "hint: the server may have refused the client certificate: pass --cert FILE --key \
             FILE (or SIPROXCTL_CERT/SIPROXCTL_KEY, or `cert`/`key` in the settings file) with \
             a certificate signed by [management] ca_file and named in [management] allow; for \
             development, certs/admin.pem and certs/admin.key beside siprox's conf.d \
             (--conf-dir DIR points there).\n  Certificate used: {}{}",
            describe(m.cert.as_ref(), &m.cert_origin),
            if m.cert_origin == Origin::Unset {
                searched(m, "admin.pem")
            } else {
                String::new()
            }
        ),
    }
}

/// `https://host[:port][/path]` -> (host, port, path). IPv6 in brackets.
pub fn parse_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("`{url}`: the management URL must start with https://"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{url}`: missing `]`"))?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{url}`: no host"));
    }
    let port = match port {
        None => 443,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{url}`: bad port `{p}`"))?,
    };
    Ok((host.to_owned(), port, path.to_owned()))
}

/// A command-line argument as an RPC parameter: integers and `true`/`false` typed, JSON
/// objects/arrays parsed, everything else a string.
pub fn parse_arg(s: &str) -> Value {
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    match s {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if s.starts_with('{') || s.starts_with('[') {
        if let Ok(v) = serde_json::from_str(s) {
            return v;
        }
    }
    Value::from(s)
}

/// Friendly words to `(method, params)`: `tls list`, `tls domains`, `tls kill 7`,
/// `reload`, `ul show alice@example.com`, `stats`, `version`, `kill`..., the words operators
/// bring from kamctl/kamcmd (`ul list`, `ul show` without an AOR, `ul lookup`, `ul rm`), or a
/// raw method name (`core.uptime`) followed by its arguments.
pub fn resolve_command(words: &[String]) -> Result<(String, Vec<Value>), String> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let (method, rest): (&str, &[&str]) = match w.as_slice() {
        [] => return Err("no command (try `siproxctl methods` or `siproxctl --help`)".into()),
        ["tls", "list" | "ls", r @ ..] => ("tls.list", r),
        ["tls", "info", r @ ..] => ("tls.info", r),
        ["tls", "domains" | "domain", r @ ..] | ["domains", r @ ..] => ("tls.domains", r),
        ["tls", "kill", r @ ..] => ("tls.kill", r),
        ["tls", "reload", "--cluster", r @ ..] => return Ok(cluster_reload("tls.reload", r)),
        ["tls", "reload", r @ ..] => ("tls.reload", r),
        ["reload" | "cfg.reload", "--dry-run", "--cluster", r @ ..] => {
            let mut r = r.to_vec();
            r.insert(0, "--dry-run");
            return Ok(cluster_reload("cfg.reload", &r));
        }
        ["reload" | "cfg.reload", "--dry-run", r @ ..] => {
            let mut params = vec![Value::from("dry_run")];
            params.extend(r.iter().map(|a| parse_arg(a)));
            return Ok(("cfg.reload".to_owned(), params));
        }
        ["reload" | "cfg.reload", "--cluster", r @ ..]
        | ["cfg" | "config", "reload", "--cluster", r @ ..] => {
            return Ok(cluster_reload("cfg.reload", r))
        }
        ["cluster", "reload", r @ ..] => return Ok(cluster_reload("cfg.reload", r)),
        ["cluster", "nodes" | "list" | "ls", r @ ..] | ["cluster", r @ ..] => ("cluster.nodes", r),
        ["tcp" | "conn" | "connections", "list" | "ls", r @ ..] | ["connections", r @ ..] => {
            ("core.tcp_list", r)
        }
        ["reload", r @ ..] | ["cfg" | "config", "reload", r @ ..] => ("cfg.reload", r),
        // kamctl: `ul show` without an AOR lists every binding.
        ["ul", "show"] | ["ul", "list" | "ls" | "dump", ..] => ("ul.dump", &[][..]),
        ["ul", "show" | "lookup", r @ ..] => ("ul.show", r),
        ["ul", "rm" | "del" | "delete", r @ ..] => ("ul.rm", r),
        ["stats", "get" | "show" | "all", r @ ..] | ["stats", r @ ..] => ("stats.get", r),
        ["version", r @ ..] | ["core", "version", r @ ..] => ("core.version", r),
        ["uptime", r @ ..] | ["core", "uptime", r @ ..] => ("core.uptime", r),
        ["kill", r @ ..] | ["core", "kill", r @ ..] => ("core.kill", r),
        ["methods", r @ ..] => ("system.listMethods", r),
        ["help", r @ ..] => ("system.methodHelp", r),
        [m, r @ ..] if m.contains('.') => (*m, r),
        [m, ..] => {
            return Err(format!(
                "unknown command `{m}` (a method is written like core.version; \
                 `siproxctl methods` lists them, `siproxctl --help` the commands)"
            ))
        }
    };
    Ok((
        method.to_owned(),
        rest.iter().map(|a| parse_arg(a)).collect(),
    ))
}

/// `reload --cluster [--dry-run] [SECONDS]`: the `cluster` flag, a dry run (every node
/// reads and builds its conf.d, publishes nothing), and how long to wait for the nodes.
fn cluster_reload(method: &str, rest: &[&str]) -> (String, Vec<Value>) {
    let mut params = vec![Value::from("cluster")];
    params.extend(rest.iter().map(|a| match *a {
        "--dry-run" => Value::from("dry_run"),
        a => parse_arg(a),
    }));
    (method.to_owned(), params)
}

/// True for a cluster-wide reload's answer in which some node did not reload (refused, or
/// no answer), or Redis failed: siproxctl then exits 1 after printing it.
pub fn cluster_reload_failed(v: &Value) -> bool {
    let Some(nodes) = v.get("nodes").and_then(Value::as_array) else {
        return false;
    };
    v.get("error").is_some()
        || nodes
            .iter()
            .any(|n| n.get("result").and_then(Value::as_str) != Some("ok"))
}

/// Status and body of an HTTP/1.1 response read to EOF (the client sends
/// `Connection: close`).
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = memchr_find(raw, b"\r\n\r\n").ok_or("truncated HTTP response from the server")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: `{status_line}`"))?;
    let mut body = raw[end + 4..].to_vec();
    for l in lines {
        if let Some((n, v)) = l.split_once(':') {
            if n.trim().eq_ignore_ascii_case("content-length") {
                if let Ok(len) = v.trim().parse::<usize>() {
                    if body.len() < len {
                        return Err("truncated HTTP body from the server".into());
                    }
                    body.truncate(len);
                }
            }
        }
    }
    Ok((status, body))
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Preferred column order of known result tables; other keys follow alphabetically.
const COLUMN_ORDER: &[&str] = &[
    "id",
    "node",
    "state",
    "heartbeat",
    "bindings",
    "connections",
    "advertise",
    "name",
    "peer",
    "transport",
    "direction",
    "domain",
    "side",
    "sni",
    "tls_version",
    "cipher",
    "peer_subject",
    "verified",
    "established",
    "age",
    "queued_bytes",
    "names",
    "certificate_subject",
    "not_after",
    "expires",
    "status",
    "detail",
];

/// Width of a terminal when `COLUMNS` does not say: tables are cut to fit it.
pub const DEFAULT_WIDTH: usize = 100;

/// The result of `method` for people, at most `width` columns wide where it is a table:
/// `tls.domains` as one line per domain with its essentials (the file list and reload
/// details are in `--json`), other results as [`render_human`] makes them.
pub fn render_for(method: &str, v: &Value, width: usize) -> String {
    match (method, v) {
        ("tls.domains", Value::Array(items)) if !items.is_empty() => {
            let rows: Vec<Value> = items.iter().map(domain_row).collect();
            table(&rows, width)
        }
        ("cluster.nodes", Value::Array(items)) if !items.is_empty() => {
            let rows: Vec<Value> = items.iter().map(node_row).collect();
            table(&rows, width)
        }
        ("cfg.reload" | "tls.reload", Value::Object(o)) if o.contains_key("nodes") => {
            let rows: Vec<Value> = o
                .get("nodes")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(reload_row).collect())
                .unwrap_or_default();
            let mut out = if rows.is_empty() {
                "(none)".to_owned()
            } else {
                table(&rows, width)
            };
            if let Some(e) = o.get("error").and_then(Value::as_str) {
                out.push_str(&format!("\nerror: {e}"));
            }
            out
        }
        _ => render_width(v, width),
    }
}

/// A result for people: strings as they are, objects as `key: value` lines, arrays of
/// objects as a table, and an empty result as `(none)`, so that "nothing" is never a blank.
pub fn render_human(v: &Value) -> String {
    render_width(v, usize::MAX)
}

fn render_width(v: &Value, width: usize) -> String {
    match v {
        Value::Null => "(none)".to_owned(),
        Value::Array(items) if items.is_empty() => "(none)".to_owned(),
        Value::Object(o) if o.is_empty() => "(none)".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_object) => table(items, width),
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join("\n"),
        Value::Object(o) => {
            let w = o.keys().map(String::len).max().unwrap_or(0);
            o.iter()
                .map(|(k, v)| format!("{k:<w$}  {}", scalar(v)))
                .collect::<Vec<_>>()
                .join("\n")
        }
        other => scalar(other),
    }
}

/// One `tls.domains` entry as the columns a person scans: name, side, names (or addresses),
/// expiry date, and whether its last load failed.
fn domain_row(d: &Value) -> Value {
    let list = |k: &str| {
        d.get(k)
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .map(|a| a.iter().map(scalar).collect::<Vec<_>>().join(","))
    };
    // 0 (or nothing): a domain without a certificate of its own (a client domain).
    let expires = d
        .get("not_after_unix")
        .and_then(Value::as_i64)
        .filter(|t| *t > 0)
        .map(date_of_unix)
        .unwrap_or_else(|| "-".to_owned());
    let status = match d.get("last_error") {
        None | Some(Value::Null) => "ok".to_owned(),
        Some(e) => format!("error: {}", first_text(e).unwrap_or_default()),
    };
    serde_json::json!({
        "domain": d.get("name").map_or_else(|| "-".to_owned(), scalar),
        "side": d.get("side").map_or_else(|| "-".to_owned(), scalar),
        "names": list("names").or_else(|| list("addresses")).unwrap_or_else(|| "-".to_owned()),
        "expires": expires,
        "status": status,
    })
}

/// One `cluster.nodes` member as the columns a person scans: the node (`*` marks this
/// one), alive or dead, seconds since its heartbeat, its bindings and connections, its
/// advertise URI.
fn node_row(m: &Value) -> Value {
    let name = m.get("node").map_or_else(|| "-".to_owned(), scalar);
    let this = m.get("this").and_then(Value::as_bool) == Some(true);
    let age = m
        .get("heartbeat_age_ms")
        .and_then(Value::as_i64)
        .map_or_else(
            || "-".to_owned(),
            |ms| format!("{:.1}s", ms as f64 / 1000.0),
        );
    serde_json::json!({
        "node": if this { format!("{name}*") } else { name },
        "state": match m.get("alive").and_then(Value::as_bool) {
            Some(true) => "alive",
            Some(false) => "dead",
            None => "-",
        },
        "heartbeat": age,
        "bindings": m.get("bindings").map_or_else(|| "-".to_owned(), scalar),
        "connections": m.get("connections").map_or_else(|| "-".to_owned(), scalar),
        "advertise": m.get("advertise").map_or_else(|| "-".to_owned(), scalar),
    })
}

/// One node's answer to a cluster-wide reload: the node, ok / refused / no answer, and
/// what it did or the first error.
fn reload_row(n: &Value) -> Value {
    let errors = n.get("errors").and_then(first_text);
    let detail = match (errors, n.get("outcome")) {
        (Some(e), _) => e,
        (None, Some(o)) => scalar(o),
        (None, None) => "-".to_owned(),
    };
    serde_json::json!({
        "node": n.get("node").map_or_else(|| "-".to_owned(), scalar),
        "status": n.get("result").map_or_else(|| "-".to_owned(), scalar),
        "detail": detail,
    })
}

/// The first error message in a reload record, whatever its shape (`{"outcome": {"errors":
/// [...]}}`, `{"error": "..."}`, a plain string).
fn first_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => a.iter().find_map(first_text),
        Value::Object(o) => ["errors", "error", "message", "outcome"]
            .iter()
            .filter_map(|k| o.get(*k))
            .find_map(first_text),
        _ => None,
    }
}

/// `YYYY-MM-DD` (UTC) of a Unix time (days to civil date, H. Hinnant's algorithm).
fn date_of_unix(t: i64) -> String {
    let z = t.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(","),
        Value::Object(_) => v.to_string(),
        other => other.to_string(),
    }
}

/// Column widths that fit `max` columns (two spaces between columns): the widest column
/// gives way first, never below its header or 6 characters, and the first one (what the
/// row is: an id, a domain) only when no other can.
fn fit(widths: &mut [usize], floors: &[usize], max: usize) {
    let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
    while total(widths) > max {
        let shrinkable = |i: usize| widths[i] > floors[i].max(6);
        let widest = |from: usize| {
            (from..widths.len())
                .filter(|i| shrinkable(*i))
                .max_by_key(|i| widths[*i])
        };
        let Some(i) = widest(1).or_else(|| widest(0)) else {
            return;
        };
        widths[i] -= 1;
    }
}

/// `s` cut to `w` characters, the cut marked with `~`.
fn cut(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(w.saturating_sub(1)).collect();
    out.push('~');
    out
}

fn table(items: &[Value], width: usize) -> String {
    let mut cols: Vec<String> = Vec::new();
    for i in items {
        if let Some(o) = i.as_object() {
            for k in o.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    let rank = |c: &String| {
        COLUMN_ORDER
            .iter()
            .position(|k| k == c)
            .unwrap_or(COLUMN_ORDER.len())
    };
    cols.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            cols.iter()
                .map(|c| i.get(c).map_or_else(|| "-".to_owned(), scalar))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(n, c)| {
            rows.iter()
                .map(|r| r[n].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let floors: Vec<usize> = cols.iter().map(String::len).collect();
    fit(&mut widths, &floors, width);
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{:<w$}", cut(c, *w)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(
        &cols.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>(),
    )];
    out.extend(rows.iter().map(|r| line(r)));
    out.join("\n")
}

/// siproxctl: manage a running siprox over JSON-RPC/XML-RPC with a client certificate.
///
/// Commands: tls list | tls info | tls domains | tls kill ID |
/// tls reload [--cluster [SECONDS]] | tcp list | reload [--dry-run] [--cluster [SECONDS]] |
/// cluster (= cluster nodes) | ul list (= ul dump, ul show) | ul show AOR | ul rm AOR | stats |
/// version | uptime | kill | methods | help METHOD | any METHOD [ARGS...] (e.g. core.uptime).
///
/// Without --cert/--ca (or settings), siproxctl uses siprox's development certificates
/// (certs/admin.pem, certs/admin.key, certs/ca.pem) found beside --conf-dir, else in the
/// working directory.
// This text is `siproxctl --help`, where `[X]` means optional, not a rustdoc link.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Debug, clap::Parser)]
#[command(name = "siproxctl", version)]
pub struct Cli {
    /// Management URL.
    #[arg(long, env = "SIPROXCTL_URL")]
    pub url: Option<String>,
    /// PEM client certificate (default: certs/admin.pem when it exists).
    #[arg(long, env = "SIPROXCTL_CERT")]
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate (default: the certificate file).
    #[arg(long, env = "SIPROXCTL_KEY")]
    pub key: Option<PathBuf>,
    /// PEM CA that signed the server's certificate (default: certs/ca.pem when it exists,
    /// else the system's CAs).
    #[arg(long, env = "SIPROXCTL_CA")]
    pub ca: Option<PathBuf>,
    /// siprox's configuration directory: the development certificates are looked for in
    /// its sibling certs/ first (as siprox resolves them).
    #[arg(long, value_name = "DIR", env = "SIPROX_CONFIG_DIR")]
    pub conf_dir: Option<PathBuf>,
    /// Settings file (url, cert, key, ca); default ~/.config/siproxctl.toml, else (when that
    /// does not exist) /etc/siprox/siproxctl.toml.
    #[arg(long, env = "SIPROXCTL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the raw result (or error) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Speak XML-RPC instead of JSON-RPC.
    #[arg(long)]
    pub xml: bool,
    /// Seconds to wait for the server.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// The command or METHOD and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn friendly_commands() {
        assert_eq!(
            resolve_command(&words("tls list")),
            Ok(("tls.list".into(), vec![]))
        );
        assert_eq!(
            resolve_command(&words("ul show alice@example.com")),
            Ok(("ul.show".into(), vec![json!("alice@example.com")]))
        );
        assert_eq!(
            resolve_command(&words("tls kill 12")),
            Ok(("tls.kill".into(), vec![json!(12)]))
        );
        assert_eq!(
            resolve_command(&words("reload")),
            Ok(("cfg.reload".into(), vec![]))
        );
        assert_eq!(
            resolve_command(&words("core.uptime")),
            Ok(("core.uptime".into(), vec![]))
        );
        // kamctl's words: `ul show` alone and `ul list` list every binding.
        for w in ["ul list", "ul show", "ul dump", "ul ls"] {
            assert_eq!(
                resolve_command(&words(w)),
                Ok(("ul.dump".into(), vec![])),
                "{w}"
            );
        }
        assert_eq!(
            resolve_command(&words("ul lookup bob@example.com")),
            Ok(("ul.show".into(), vec![json!("bob@example.com")]))
        );
        assert_eq!(
            resolve_command(&words("ul delete bob@example.com")),
            Ok(("ul.rm".into(), vec![json!("bob@example.com")]))
        );
        for (w, m) in [
            ("domains", "tls.domains"),
            ("tls ls", "tls.list"),
            ("cfg reload", "cfg.reload"),
            ("config reload", "cfg.reload"),
            ("core version", "core.version"),
            ("stats get", "stats.get"),
            ("connections", "core.tcp_list"),
        ] {
            assert_eq!(resolve_command(&words(w)), Ok((m.into(), vec![])), "{w}");
        }
        assert!(resolve_command(&words("frobnicate")).is_err());
        assert!(resolve_command(&[]).is_err());
    }

    #[test]
    fn cluster_commands() {
        for w in ["cluster", "cluster nodes", "cluster ls"] {
            assert_eq!(
                resolve_command(&words(w)),
                Ok(("cluster.nodes".into(), vec![])),
                "{w}"
            );
        }
        for (w, m, p) in [
            ("reload --cluster", "cfg.reload", json!(["cluster"])),
            (
                "reload --cluster --dry-run",
                "cfg.reload",
                json!(["cluster", "dry_run"]),
            ),
            (
                "reload --dry-run --cluster 3",
                "cfg.reload",
                json!(["cluster", "dry_run", 3]),
            ),
            ("reload --dry-run", "cfg.reload", json!(["dry_run"])),
            (
                "cfg reload --cluster 3",
                "cfg.reload",
                json!(["cluster", 3]),
            ),
            ("cluster reload", "cfg.reload", json!(["cluster"])),
            ("tls reload --cluster", "tls.reload", json!(["cluster"])),
        ] {
            let (method, params) = resolve_command(&words(w)).unwrap();
            assert_eq!((method.as_str(), Value::Array(params)), (m, p), "{w}");
        }
    }

    #[test]
    fn cluster_nodes_fit_100_columns_and_reload_failures_exit_1() {
        let node = |n: &str, alive: bool| {
            json!({"node": n, "alive": alive, "this": n == "a", "heartbeat_age_ms": 1500,
                   "advertise": format!("sip:{n}.very-long-internal-name.example.com:5071;transport=tls;x={}", "y".repeat(60)),
                   "bindings": 100000, "connections": 2000, "last_heartbeat": 1})
        };
        let v = json!([node("a", true), node("b", false)]);
        let out = render_for("cluster.nodes", &v, 100);
        assert!(out.lines().all(|l| l.chars().count() <= 100), "{out}");
        assert!(
            out.contains("a*") && out.contains("alive") && out.contains("dead"),
            "{out}"
        );
        assert!(out.contains("1.5s") && out.contains("100000"), "{out}");

        let ok = json!({"nodes": [{"node": "a", "result": "ok", "outcome": "unchanged"}]});
        assert!(!cluster_reload_failed(&ok));
        assert!(!cluster_reload_failed(&json!("queued")));
        let bad = json!({"nodes": [{"node": "a", "result": "ok"},
                                   {"node": "b", "result": "refused", "errors": ["x.toml: bad"]}]});
        assert!(cluster_reload_failed(&bad));
        let out = render_for("cfg.reload", &bad, 100);
        assert!(
            out.contains("refused") && out.contains("x.toml: bad"),
            "{out}"
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://127.0.0.1:5062"),
            Ok(("127.0.0.1".into(), 5062, "/".into()))
        );
        assert_eq!(
            parse_url("https://[::1]:9/RPC2"),
            Ok(("::1".into(), 9, "/RPC2".into()))
        );
        assert_eq!(
            parse_url("https://mgmt.example.com"),
            Ok(("mgmt.example.com".into(), 443, "/".into()))
        );
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("https://x:0").is_err());
        assert!(parse_url("https://:5").is_err());
    }

    #[test]
    fn http_responses() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_http_response(r), Ok((200, b"{}".to_vec())));
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
        assert!(parse_http_response(b"garbage").is_err());
    }

    #[test]
    fn human_tables() {
        let v = json!([{"id": 1, "peer": "127.0.0.1:1", "verified": null},
                       {"id": 22, "peer": "127.0.0.1:2", "verified": true}]);
        let t = render_human(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ID  PEER         VERIFIED");
        assert_eq!(lines[1], "1   127.0.0.1:1  -");
        assert_eq!(lines[2], "22  127.0.0.1:2  true");
        assert_eq!(render_human(&json!("queued")), "queued");
        assert_eq!(
            render_human(&json!({"a": 1, "bb": [1, 2]})),
            "a   1\nbb  1,2"
        );
    }

    #[test]
    fn empty_results_say_none() {
        for v in [json!([]), json!({}), json!(null)] {
            assert_eq!(render_human(&v), "(none)", "{v}");
            assert_eq!(render_for("ul.dump", &v, DEFAULT_WIDTH), "(none)", "{v}");
        }
        assert_eq!(render_for("tls.domains", &json!([]), 100), "(none)");
    }

    /// A `tls.domains` entry as the registry reports it, with long paths and names.
    fn domain(name: &str, error: Option<&str>) -> Value {
        json!({
            "name": name,
            "side": "server",
            "names": [format!("{name}"), format!("sip.{name}"), format!("*.pbx.{name}")],
            "addresses": ["203.0.113.10:5061"],
            "certificate_subject": format!("/O=Some Long Organisation Name Ltd/CN={name}"),
            "sans": [format!("DNS:{name}"), format!("DNS:sip.{name}")],
            "not_after": "Jan  5 12:00:00 2027 GMT",
            "not_after_unix": 1_799_150_400_i64,
            "files": [format!("/etc/siprox/certs/tenants/{name}/..data/tls.crt"),
                      format!("/etc/siprox/certs/tenants/{name}/..data/tls.key")],
            "last_reload": {"at": 1_764_800_000_i64, "cause": "Watch",
                            "outcome": {"result": "published", "changed": [name]}},
            "last_error": error.map(|e| json!({"at": 1_764_800_000_i64, "cause": "Watch",
                            "outcome": {"result": "failed", "errors": [e]}})),
        })
    }

    #[test]
    fn tls_domains_fit_100_columns_one_line_each() {
        let v = json!([
            domain("example.com", None),
            domain(
                "a-rather-long-customer-domain-name.example.org",
                Some("certificate /etc/siprox/certs/tenants/x/tls.crt expired on Jan 1 2026")
            ),
            json!({"name": "[tls client]", "side": "client", "names": [], "addresses": []}),
        ]);
        let out = render_for("tls.domains", &v, 100);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        for l in &lines {
            assert!(
                l.chars().count() <= 100,
                "{} columns: {l}",
                l.chars().count()
            );
        }
        assert!(lines[0].starts_with("DOMAIN"), "{out}");
        for h in ["SIDE", "NAMES", "EXPIRES", "STATUS"] {
            assert!(lines[0].contains(h), "{h}: {out}");
        }
        assert!(lines[1].starts_with("example.com") && lines[1].contains("2027-01-05"));
        assert!(lines[1].trim_end().ends_with("ok"), "{out}");
        assert!(lines[2].contains("error: cert"), "{out}");
        assert!(lines[3].starts_with("[tls client]") && lines[3].contains("client"));
        // Narrower still: every line still fits.
        let out = render_for("tls.domains", &v, 60);
        assert!(out.lines().all(|l| l.chars().count() <= 60), "{out}");
        assert_eq!(date_of_unix(0), "1970-01-01");
        assert_eq!(date_of_unix(951_782_400), "2000-02-29");
    }

    #[test]
    fn material_from_options_settings_file_or_the_dev_certs() {
        let exists = |p: &Path| {
            [
                "/srv/siprox/certs/admin.pem",
                "/srv/siprox/certs/admin.key",
                "/srv/siprox/certs/ca.pem",
            ]
            .iter()
            .any(|e| Path::new(e) == p)
        };
        // From elsewhere, told where siprox's conf.d is.
        let search = dev_search_dirs(
            Some(Path::new("/srv/siprox/conf.d")),
            Some(Path::new("/home/op")),
        );
        assert_eq!(
            search,
            vec![
                PathBuf::from("/srv/siprox/certs"),
                PathBuf::from("/home/op/certs")
            ]
        );
        let m = resolve_material(
            &Given::default(),
            &CtlFile::default(),
            None,
            &search,
            &exists,
        );
        assert_eq!(m.cert, Some(PathBuf::from("/srv/siprox/certs/admin.pem")));
        assert_eq!(m.key, Some(PathBuf::from("/srv/siprox/certs/admin.key")));
        assert_eq!(m.ca, Some(PathBuf::from("/srv/siprox/certs/ca.pem")));
        assert_eq!((&m.cert_origin, &m.ca_origin), (&Origin::Dev, &Origin::Dev));
        // Not told: nothing found, and the hint names the flags and where it looked.
        let search = dev_search_dirs(None, Some(Path::new("/home/op")));
        let m = resolve_material(
            &Given::default(),
            &CtlFile::default(),
            None,
            &search,
            &exists,
        );
        assert_eq!((m.cert.as_ref(), m.ca.as_ref()), (None, None));
        let h = hint(
            &Refused::ServerNotTrusted {
                addr: "127.0.0.1:5062".into(),
                reason: "unable to get local issuer certificate".into(),
            },
            &m,
        );
        assert!(h.contains("--ca FILE") && h.contains("--conf-dir"), "{h}");
        assert!(h.contains("the system's CA store"), "{h}");
        assert!(h.contains("/home/op/certs/ca.pem"), "{h}");
        let h = hint(&Refused::ClientNotAccepted { what: "x".into() }, &m);
        assert!(h.contains("--cert FILE --key FILE"), "{h}");
        assert!(h.contains("Certificate used: none"), "{h}");
        assert!(h.contains("/home/op/certs/admin.pem"), "{h}");
        // A settings file: its relative paths are relative to it; options win over it.
        let file = CtlFile {
            cert: Some(PathBuf::from("ops.pem")),
            ca: Some(PathBuf::from("/etc/ssl/mgmt-ca.pem")),
            ..CtlFile::default()
        };
        let settings = Path::new("/home/op/.config/siproxctl.toml");
        let m = resolve_material(&Given::default(), &file, Some(settings), &search, &exists);
        assert_eq!(m.cert, Some(PathBuf::from("/home/op/.config/ops.pem")));
        // No key given: the certificate file holds both (not the dev admin.key).
        assert_eq!(m.key, m.cert);
        assert_eq!(m.ca, Some(PathBuf::from("/etc/ssl/mgmt-ca.pem")));
        assert_eq!(m.ca_origin, Origin::Settings(settings.to_path_buf()));
        let given = Given {
            ca: Some(PathBuf::from("my-ca.pem")),
            ..Given::default()
        };
        let m = resolve_material(&given, &file, Some(settings), &search, &exists);
        assert_eq!(m.ca, Some(PathBuf::from("my-ca.pem")));
        let h = hint(
            &Refused::ServerNotTrusted {
                addr: "x".into(),
                reason: "y".into(),
            },
            &m,
        );
        assert!(h.contains("CA used: my-ca.pem (from the option)"), "{h}");
    }

    #[test]
    fn config_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("siproxctl.toml");
        std::fs::write(&p, "url = \"https://10.0.0.1:5062\"\ncert = \"/c.pem\"\n").expect("write");
        let f = CtlFile::load(&p, true).expect("load");
        assert_eq!(f.url.as_deref(), Some("https://10.0.0.1:5062"));
        assert_eq!(f.cert, Some(PathBuf::from("/c.pem")));
        std::fs::write(&p, "nope = 1\n").expect("write");
        assert!(CtlFile::load(&p, true).is_err());
        assert_eq!(
            CtlFile::load(&dir.path().join("missing.toml"), false),
            Ok(CtlFile::default())
        );
        assert!(CtlFile::load(&dir.path().join("missing.toml"), true).is_err());
    }

    #[test]
    fn the_users_settings_win_then_the_systems_then_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let user = dir.path().join("user.toml");
        let system = dir.path().join("system.toml");
        let pick = || CtlFile::default_path_of(Some(user.clone()), &system);
        // Neither exists: the user's (missing, so every setting at its default).
        assert_eq!(pick(), Some(user.clone()));
        std::fs::write(&system, "url = \"https://127.0.0.1:5062\"\n").expect("write");
        assert_eq!(pick(), Some(system.clone()));
        std::fs::write(&user, "").expect("write");
        assert_eq!(pick(), Some(user.clone()));
        assert_eq!(
            CtlFile::default_path_of(None, &system),
            Some(system.clone())
        );
    }
}
