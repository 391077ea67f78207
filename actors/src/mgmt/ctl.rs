//! The pure parts of `siproxctl`: friendly subcommands to RPC methods, argument typing,
//! the `~/.config/siproxctl.toml` settings, the management URL, a minimal HTTP/1.1 response
//! reader, and the human rendering of results. No sockets here (the binary owns those), so
//! all of it is unit-tested; must never panic on what a server answers.

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

    /// `$XDG_CONFIG_HOME/siproxctl.toml`, else `~/.config/siproxctl.toml`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
            return Some(PathBuf::from(x).join("siproxctl.toml"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/siproxctl.toml"))
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
/// `reload`, `ul show alice@example.com`, `stats`, `version`, `kill`..., or a raw method
/// name (`core.uptime`) followed by its arguments.
pub fn resolve_command(words: &[String]) -> Result<(String, Vec<Value>), String> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let (method, rest): (&str, &[&str]) = match w.as_slice() {
        [] => return Err("no command (try `siproxctl methods` or `siproxctl --help`)".into()),
        ["tls", "list", r @ ..] => ("tls.list", r),
        ["tls", "info", r @ ..] => ("tls.info", r),
        ["tls", "domains", r @ ..] => ("tls.domains", r),
        ["tls", "kill", r @ ..] => ("tls.kill", r),
        ["tls", "reload", r @ ..] => ("tls.reload", r),
        ["tcp", "list", r @ ..] => ("core.tcp_list", r),
        ["reload", r @ ..] | ["cfg", "reload", r @ ..] => ("cfg.reload", r),
        ["ul", "show", r @ ..] => ("ul.show", r),
        ["ul", "dump", r @ ..] => ("ul.dump", r),
        ["ul", "rm", r @ ..] => ("ul.rm", r),
        ["stats", r @ ..] => ("stats.get", r),
        ["version", r @ ..] => ("core.version", r),
        ["uptime", r @ ..] => ("core.uptime", r),
        ["kill", r @ ..] => ("core.kill", r),
        ["methods", r @ ..] => ("system.listMethods", r),
        ["help", r @ ..] => ("system.methodHelp", r),
        [m, r @ ..] if m.contains('.') => (*m, r),
        [m, ..] => {
            return Err(format!(
                "unknown command `{m}` (a method is written like core.version; \
                 `siproxctl methods` lists them)"
            ))
        }
    };
    Ok((
        method.to_owned(),
        rest.iter().map(|a| parse_arg(a)).collect(),
    ))
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
    "name",
    "peer",
    "transport",
    "direction",
    "domain",
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
];

/// A result for people: strings as they are, objects as `key: value` lines, arrays of
/// objects as a table.
pub fn render_human(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            table(items)
        }
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

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(","),
        Value::Object(_) => v.to_string(),
        other => other.to_string(),
    }
}

fn table(items: &[Value]) -> String {
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
    let widths: Vec<usize> = cols
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
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
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
        assert!(resolve_command(&words("frobnicate")).is_err());
        assert!(resolve_command(&[]).is_err());
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
}
