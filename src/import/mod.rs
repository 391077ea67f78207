//! `siprox import`: a Kamailio configuration (`kamailio.cfg`, the files it imports, and the
//! TLS module's `tls.cfg`) into a siprox configuration directory.
//!
//! What it carries over:
//! - `listen=` into `[[listen]]` (no `listen=` at all: every address, as Kamailio does),
//!   `alias=` into one SIP-only domain, the global parameters siprox has a key for
//!   (`debug`, `tcp_connection_lifetime`, `tcp_max_connections`, ...);
//! - the `modparam`s siprox understands (registrar expiry and Path, usrloc's timer, the TLS
//!   module's `config` file);
//! - `tls.cfg` profiles: `[server:default]` and `[client:default]` into `[tls]`,
//!   `[server:IP:PORT]` and `[server:any]` with a `server_name` into a server domain each,
//!   `[client:IP:PORT]` into a client domain each;
//! - the route blocks, verbatim and on the same lines, with the preprocessor directives
//!   (`#!define`, `#!ifdef`...), so that a script error names the line of the original.
//!
//! Every active line that is not carried over is listed with the reason, so that the
//! operator knows exactly what the imported configuration does not do. Lines in inactive
//! `#!ifdef` sections are counted, not listed (import again with `-D NAME` to include them).
//!
//! Sans-IO: the caller reads the files (through [`Files`]) and writes the result.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

#[cfg(test)]
mod tests;

/// The configuration files as the caller reads them.
pub trait Files {
    /// The text of the file at `path` (as written in the configuration, made absolute by the
    /// caller's rules), or `None` when it cannot be read.
    fn read(&self, path: &str) -> Option<String>;
    /// True when a file exists at `path` (certificates, keys, CA files).
    fn exists(&self, path: &str) -> bool;
}

/// One input file.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Its path, as given (names it in the report; relative imports are resolved against
    /// its directory).
    pub name: &'a str,
    pub text: &'a str,
}

/// What to import.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    pub cfg: Source<'a>,
    /// `tls.cfg`; when `None`, the file named by `modparam("tls", "config", ...)` is read.
    pub tls: Option<Source<'a>>,
    /// Kamailio's `-A NAME[=VALUE]` (`siprox import -D`).
    pub defines: Vec<(String, String)>,
}

/// The siprox configuration made, and the report.
#[derive(Debug, Clone, Default)]
pub struct Import {
    /// Files to write, by path relative to the output directory.
    pub files: Vec<(String, String)>,
    /// Lines carried over: where, the text, what it became.
    pub carried: Vec<Line>,
    /// Lines not carried over: where, the text, why.
    pub skipped: Vec<Line>,
    /// Global statements in inactive `#!ifdef` sections (not converted).
    pub inactive: usize,
}

/// A line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub file: String,
    pub line: usize,
    pub text: String,
    pub why: String,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.text, self.why
        )
    }
}

/// Where the route script goes, relative to the output directory.
pub const SCRIPT_PATH: &str = "conf.d/scripts/kamailio.cfg";
/// The main generated configuration file.
pub const MAIN_TOML: &str = "conf.d/00-imported.toml";

const MAX_INCLUDE_DEPTH: usize = 10;

/// A line of the expanded configuration (imports inlined).
struct SrcLine {
    file: String,
    line: usize,
    text: String,
}

/// Import a Kamailio configuration.
pub fn kamailio(opts: &Options<'_>, fs: &dyn Files) -> Import {
    let mut imp = Import::default();
    let dir = parent_dir(opts.cfg.name);
    let mut lines = Vec::new();
    expand(opts.cfg, &dir, fs, 0, &mut lines, &mut imp);

    let mut st = State {
        defs: opts.defines.iter().cloned().collect(),
        ..State::default()
    };
    // The original, line for line (so that an error names the original's line): global
    // statements commented out with `# [import]` (they are in conf.d/00-imported.toml);
    // `-D` defines first, as Kamailio's `-A` would.
    let mut script = String::new();
    for (name, value) in &opts.defines {
        let _ = writeln!(script, "#!define {name} {value}");
    }
    let mut stmt: Option<Stmt> = None;
    for l in &lines {
        let t = l.text.trim_start();
        if st.route_depth == 0 && stmt.is_none() && !st.in_comment && is_directive(t) {
            st.directive(t);
            script.push_str(&l.text);
            script.push('\n');
            continue;
        }
        if st.route_depth > 0 || (stmt.is_none() && !st.in_comment && starts_route(t)) {
            st.route_depth = scan(&l.text, st.route_depth, &mut st.in_comment).0;
            if st.route_depth < 0 {
                st.route_depth = 0;
            }
            script.push_str(&l.text);
            script.push('\n');
            continue;
        }
        // The global section: comments and blank lines stay; statements are converted.
        let (_, code) = scan(&l.text, 0, &mut st.in_comment);
        if stmt.is_none() && code.trim().is_empty() {
            script.push_str(&l.text);
            script.push('\n');
            continue;
        }
        script.push_str("# [import] ");
        script.push_str(&l.text);
        script.push('\n');
        let s = stmt.get_or_insert_with(|| Stmt {
            file: l.file.clone(),
            line: l.line,
            text: String::new(),
            parens: 0,
        });
        if !s.text.is_empty() {
            s.text.push(' ');
        }
        s.text.push_str(code.trim());
        s.parens += depth_parens(&code);
        if s.parens <= 0 {
            if let Some(s) = stmt.take() {
                if st.active() {
                    st.global(s, &mut imp);
                } else {
                    imp.inactive += 1;
                }
            }
        }
    }
    if let Some(s) = stmt.take() {
        imp.skipped.push(Line {
            file: s.file,
            line: s.line,
            text: s.text,
            why: "unterminated statement (unbalanced parentheses)".into(),
        });
    }

    // tls.cfg: the one given, else the TLS module's `config`.
    let tls_text;
    let tls_src = match opts.tls {
        Some(s) => Some(s),
        None => match &st.tls_config {
            Some(p) => match fs.read(&resolve(&dir, p)) {
                Some(t) => {
                    tls_text = t;
                    Some(Source {
                        name: p,
                        text: &tls_text,
                    })
                }
                None => {
                    imp.skipped.push(Line {
                        file: opts.cfg.name.into(),
                        line: st.tls_config_line,
                        text: format!("modparam(\"tls\", \"config\", \"{p}\")"),
                        why: "the file cannot be read: give it as the second argument".into(),
                    });
                    None
                }
            },
            None => None,
        },
    };
    let mut cfg = st.cfg;
    if let Some(src) = tls_src {
        tls_cfg(src, fs, &mut cfg, &mut imp);
    }
    cfg.finish(opts, &mut imp);
    imp.files.insert(0, (SCRIPT_PATH.into(), script));
    imp
}

/// Inline `import_file` / `include_file` (Kamailio resolves a relative path against the
/// including file's directory; a missing `import_file` is skipped, a missing
/// `include_file` is an error).
fn expand(
    src: Source<'_>,
    dir: &str,
    fs: &dyn Files,
    depth: usize,
    out: &mut Vec<SrcLine>,
    imp: &mut Import,
) {
    for (i, text) in src.text.lines().enumerate() {
        let t = text.trim();
        let inc = [
            "import_file",
            "include_file",
            "#!import_file",
            "#!include_file",
        ]
        .iter()
        .find_map(|k| t.strip_prefix(k).map(|r| (k.trim_start_matches("#!"), r)));
        if let Some((kind, rest)) = inc {
            let path = rest.trim().trim_end_matches(';').trim().trim_matches('"');
            let here = Line {
                file: src.name.into(),
                line: i + 1,
                text: t.into(),
                why: String::new(),
            };
            out.push(SrcLine {
                file: src.name.into(),
                line: i + 1,
                text: format!("# [import] {text}"),
            });
            let full = resolve(dir, path);
            match fs.read(&full) {
                Some(body) if depth < MAX_INCLUDE_DEPTH => {
                    imp.carried.push(Line {
                        why: format!("inlined ({full})"),
                        ..here
                    });
                    expand(
                        Source {
                            name: &full,
                            text: &body,
                        },
                        &parent_dir(&full),
                        fs,
                        depth + 1,
                        out,
                        imp,
                    );
                }
                Some(_) => imp.skipped.push(Line {
                    why: "imports nested too deeply".into(),
                    ..here
                }),
                None if kind == "import_file" => imp.carried.push(Line {
                    why: format!("{full} not found: skipped, as Kamailio does"),
                    ..here
                }),
                None => imp.skipped.push(Line {
                    why: format!("{full} cannot be read (Kamailio would not start)"),
                    ..here
                }),
            }
            continue;
        }
        out.push(SrcLine {
            file: src.name.into(),
            line: i + 1,
            text: text.to_owned(),
        });
    }
}

fn parent_dir(path: &str) -> String {
    match path.rfind('/') {
        Some(0) => "/".into(),
        Some(k) => path[..k].into(),
        None => ".".into(),
    }
}

fn resolve(dir: &str, path: &str) -> String {
    if path.starts_with('/') || dir == "." {
        path.into()
    } else if dir.ends_with('/') {
        format!("{dir}{path}")
    } else {
        format!("{dir}/{path}")
    }
}

fn is_directive(t: &str) -> bool {
    t.starts_with("#!") || t.starts_with("!!")
}

/// The route block keywords.
fn starts_route(t: &str) -> bool {
    const KW: &[&str] = &[
        "request_route",
        "reply_route",
        "route",
        "failure_route",
        "onreply_route",
        "branch_route",
        "event_route",
        "onsend_route",
    ];
    let word: String = t
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if !KW.contains(&word.as_str()) {
        return false;
    }
    let rest = t[word.len()..].trim_start();
    rest.starts_with('{') || rest.starts_with('[') || rest.is_empty()
}

/// Scan a line: the brace depth after it (from `depth`), and its code with comments and
/// string contents kept (comments removed). Tracks `/* */` across lines.
fn scan(line: &str, mut depth: i32, in_comment: &mut bool) -> (i32, String) {
    let b = line.as_bytes();
    let mut code = String::with_capacity(line.len());
    let mut i = 0;
    let mut start = 0;
    let flush = |code: &mut String, s: usize, e: usize| {
        if let Some(p) = line.get(s..e) {
            code.push_str(p);
        }
    };
    while i < b.len() {
        if *in_comment {
            if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                *in_comment = false;
                i += 2;
                start = i;
            } else {
                i += 1;
            }
            continue;
        }
        match b[i] {
            b'"' | b'\'' => i = skip_quoted(b, i),
            b'#' => {
                flush(&mut code, start, i);
                return (depth, code);
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                flush(&mut code, start, i);
                return (depth, code);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                flush(&mut code, start, i);
                *in_comment = true;
                i += 2;
            }
            b'{' => {
                depth += 1;
                i += 1;
            }
            b'}' => {
                depth -= 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    if !*in_comment {
        flush(&mut code, start, b.len().min(i));
    }
    (depth, code)
}

/// The index just past the string literal that opens at `i` (a `"` or `'`, backslash
/// escapes skipped), or the end when it is not closed.
fn skip_quoted(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let mut i = i + 1;
    while i < b.len() && b[i] != q {
        if b[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    (i + 1).min(b.len())
}

/// Open minus closed parentheses outside strings.
fn depth_parens(code: &str) -> i32 {
    let b = code.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' => {
                i = skip_quoted(b, i);
                continue;
            }
            b'(' => n += 1,
            b')' => n -= 1,
            _ => {}
        }
        i += 1;
    }
    n
}

/// A global statement, possibly over several lines.
struct Stmt {
    file: String,
    line: usize,
    text: String,
    parens: i32,
}

#[derive(Default)]
struct State {
    defs: HashMap<String, String>,
    /// Open `#!ifdef`s: (this branch on, parent on, seen else).
    conds: Vec<(bool, bool, bool)>,
    route_depth: i32,
    in_comment: bool,
    cfg: Cfg,
    tls_config: Option<String>,
    tls_config_line: usize,
}

impl State {
    fn active(&self) -> bool {
        self.conds.last().is_none_or(|c| c.0)
    }

    /// Follow the preprocessor, as Kamailio does, to know which global lines are active.
    fn directive(&mut self, t: &str) {
        let body = &t[2..];
        let word: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let rest = body[word.len()..].trim();
        let on = self.active();
        match word.to_ascii_lowercase().as_str() {
            "ifdef" | "ifndef" => {
                let defined = self.defs.contains_key(rest);
                let want = word.eq_ignore_ascii_case("ifdef");
                self.conds.push((on && defined == want, on, false));
            }
            "else" => {
                if let Some(c) = self.conds.last_mut() {
                    c.0 = c.1 && !c.0;
                    c.2 = true;
                }
            }
            "endif" => {
                self.conds.pop();
            }
            _ if !on => {}
            "define" | "def" | "trydef" | "trydefine" | "redefine" | "redef" => {
                let (name, value) = match rest.split_once(char::is_whitespace) {
                    Some((n, v)) => (n, v.trim()),
                    None => (rest, ""),
                };
                let keep = matches!(word.to_ascii_lowercase().as_str(), "trydef" | "trydefine")
                    && self.defs.contains_key(name);
                if !keep && !name.is_empty() {
                    self.defs.insert(name.into(), value.into());
                }
            }
            "undef" => {
                self.defs.remove(rest);
            }
            _ => {}
        }
    }

    /// Replace defined names outside strings, as the preprocessor would (bounded).
    fn subst(&self, s: &str) -> String {
        let mut cur = s.to_owned();
        for _ in 0..8 {
            let next = subst_once(&cur, &self.defs);
            if next == cur {
                break;
            }
            cur = next;
        }
        cur
    }

    fn global(&mut self, s: Stmt, imp: &mut Import) {
        let text = s.text.trim().trim_end_matches(';').trim().to_owned();
        let line = |why: String| Line {
            file: s.file.clone(),
            line: s.line,
            text: text.clone(),
            why,
        };
        let expanded = self.subst(&text);
        let res = if let Some(rest) = expanded.strip_prefix("loadmodule") {
            loadmodule(unquote(rest.trim()))
        } else if expanded.starts_with("loadpath") || expanded.starts_with("mpath") {
            Ok("siprox's modules are built in".into())
        } else if let Some(rest) = expanded.strip_prefix("modparam") {
            match modparam_args(rest) {
                Some((m, p, v)) if m == "tls" && p == "config" => {
                    self.tls_config = Some(v);
                    self.tls_config_line = s.line;
                    Ok("read as tls.cfg".into())
                }
                Some((m, p, v)) => self.cfg.modparam(&m, &p, &v),
                None => Err("not a modparam(\"module\", \"name\", value)".into()),
            }
        } else if let Some((name, value)) = expanded.split_once('=') {
            self.cfg.core(name.trim(), value.trim())
        } else {
            Err("not a Kamailio global statement siprox knows".into())
        };
        match res {
            Ok(why) => imp.carried.push(line(why)),
            Err(why) => imp.skipped.push(line(why)),
        }
    }
}

fn subst_once(s: &str, defs: &HashMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' {
            let st = i;
            i = skip_quoted(b, i);
            out.push_str(s.get(st..i).unwrap_or(""));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let w = &s[st..i];
            // `$name` and `$name(...)` are pseudo-variables, never defines.
            let pv = st > 0 && b[st - 1] == b'$';
            match defs.get(w) {
                Some(v) if !pv => out.push_str(v),
                _ => out.push_str(w),
            }
        } else {
            let st = i;
            i += 1;
            while i < b.len() && !b[i].is_ascii() {
                i += 1;
            }
            out.push_str(s.get(st..i).unwrap_or(""));
        }
    }
    out
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(s)
}

/// `("mod", "param", value)` -> its three parts (value unquoted; adjacent string literals
/// joined, as Kamailio's parser does).
fn modparam_args(rest: &str) -> Option<(String, String, String)> {
    let inner = rest
        .trim()
        .strip_prefix('(')?
        .trim_end()
        .strip_suffix(')')?;
    let mut parts = Vec::new();
    let mut cur = String::new();
    let b = inner.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    let st = i;
                    i += 1;
                    while i < b.len() && !inner.is_char_boundary(i) {
                        i += 1;
                    }
                    cur.push_str(&inner[st..i]);
                }
                i += 1;
            }
            b',' => {
                parts.push(std::mem::take(&mut cur));
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                let st = i;
                i += 1;
                while i < b.len() && !inner.is_char_boundary(i) {
                    i += 1;
                }
                cur.push_str(&inner[st..i]);
            }
        }
    }
    parts.push(cur);
    if parts.len() != 3 {
        return None;
    }
    let v = parts.pop()?;
    let p = parts.pop()?;
    let m = parts.pop()?;
    Some((m, p, v))
}

/// Modules whose functions siprox has built in.
const BUILT_IN: &[&str] = &[
    "tm",
    "tmx",
    "sl",
    "rr",
    "pv",
    "maxfwd",
    "usrloc",
    "registrar",
    "textops",
    "textopsx",
    "siputils",
    "xlog",
    "sanity",
    "kex",
    "corex",
    "tls",
    "ctl",
    "jsonrpcs",
    "xhttp",
    "cfg_rpc",
    "counters",
    "auth",
    "outbound",
    "path",
    "selects",
    "htable",
];

fn loadmodule(m: &str) -> Result<String, String> {
    let name = m
        .rsplit('/')
        .next()
        .unwrap_or(m)
        .trim_end_matches(".so")
        .to_owned();
    if BUILT_IN.contains(&name.as_str()) {
        let what = match name.as_str() {
            "jsonrpcs" | "xhttp" | "ctl" | "cfg_rpc" | "kex" | "counters" => {
                "built in: the management RPC ([management], siproxctl, docs/rpc.md)"
            }
            "tls" => "built in: [tls] and conf.d/domains",
            "auth" => "built in: [auth] (digest against users_file)",
            _ => "built in",
        };
        return Ok(what.into());
    }
    Err(match name.as_str() {
        n if n.starts_with("db_") => {
            "no database: siprox keeps registrations in memory, a snapshot file or Redis ([location], [cluster])".into()
        }
        "auth_db" => "no database credentials: digest users come from [auth] users_file".into(),
        "acc" => "no accounting module: log from the script with xlog()".into(),
        "nathelper" | "rtpproxy" | "rtpengine" => {
            "no NAT helper or media relay: siprox relays signalling only".into()
        }
        _ => format!("siprox has no equivalent of the `{name}` module"),
    })
}

/// The siprox configuration being built.
#[derive(Default)]
struct Cfg {
    listens: Vec<(String, String, Option<String>)>,
    listen_lines: usize,
    aliases: Vec<String>,
    enable_tls: bool,
    port: Option<u16>,
    log_level: Option<String>,
    connections: BTreeMap<&'static str, String>,
    registrar: BTreeMap<&'static str, String>,
    location: BTreeMap<&'static str, String>,
    use_path: Option<bool>,
    path_mode: Option<i64>,
    tls: BTreeMap<&'static str, String>,
    domains: BTreeMap<String, Domain>,
    tcp_max: Option<u64>,
    tls_max: Option<u64>,
    htables: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Domain {
    file_comment: String,
    names: Vec<String>,
    server: BTreeMap<&'static str, String>,
    client: BTreeMap<&'static str, String>,
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn int_value(v: &str) -> Option<i64> {
    unquote(v).trim().parse().ok()
}

fn yes(v: &str) -> Option<bool> {
    match unquote(v).trim().to_ascii_lowercase().as_str() {
        "yes" | "on" | "true" | "1" | "enable" | "enabled" => Some(true),
        "no" | "off" | "false" | "0" | "disable" | "disabled" => Some(false),
        _ => None,
    }
}

impl Cfg {
    fn core(&mut self, name: &str, value: &str) -> Result<String, String> {
        let v = unquote(value);
        match name {
            "listen" => {
                let n = self.listen(v)?;
                Ok(format!("[[listen]] ({n})"))
            }
            "alias" => {
                let host = alias_host(v);
                if !self.aliases.contains(&host) {
                    self.aliases.push(host.clone());
                }
                Ok(format!("[domains.\"aliases\"] names += {host}"))
            }
            "port" => match v.parse::<u16>() {
                Ok(p) => {
                    self.port = Some(p);
                    Ok("the default port of listen= lines".into())
                }
                Err(_) => Err("not a port number".into()),
            },
            "enable_tls" => match yes(v) {
                Some(b) => {
                    self.enable_tls = b;
                    Ok(if b { "TLS listeners" } else { "no TLS listener" }.into())
                }
                None => Err("not yes/no".into()),
            },
            "debug" => {
                let Some(n) = int_value(v) else {
                    return Err("not a number".into());
                };
                let level = match n {
                    i64::MIN..=-1 => "error",
                    0 => "warn",
                    1 | 2 => "info",
                    _ => "debug",
                };
                self.log_level = Some(level.into());
                Ok(format!("[log] level = \"{level}\""))
            }
            "tcp_connection_lifetime" => self.secs("idle_timeout", v),
            "tcp_connect_timeout" => self.secs("connect_timeout", v),
            "tcp_send_timeout" => self.secs("send_timeout", v),
            "tls_handshake_timeout" => self.secs("handshake_timeout", v),
            "tcp_max_connections" | "tls_max_connections" => {
                let Some(n) = int_value(v).filter(|n| *n >= 0) else {
                    return Err("not a number".into());
                };
                if name == "tcp_max_connections" {
                    self.tcp_max = Some(n as u64);
                } else {
                    self.tls_max = Some(n as u64);
                }
                Ok("[connections] max_connections (TCP and TLS together in siprox)".into())
            }
            "children" | "tcp_children" | "sctp_children" | "socket_workers" => Err(
                "siprox runs one worker thread per core ([runtime] workers), not processes".into(),
            ),
            "log_stderror" | "log_facility" | "log_prefix" | "log_name" | "memdbg" | "memlog"
            | "mem_summary" | "corelog" => Err(
                "siprox logs to stderr (the journal under systemd); [log] format = \"json\" for structured logs".into(),
            ),
            "enable_sctp" if yes(v) == Some(false) => Ok("siprox has no SCTP".into()),
            "enable_sctp" => Err("siprox has no SCTP".into()),
            "auto_aliases" | "dns" | "rev_dns" | "use_dns_cache" | "use_dns_failover"
            | "dns_try_ipv6" | "dns_srv_lb" | "dns_try_naptr" => Err(
                "siprox resolves with the system resolver (RFC 3263 SRV/A/AAAA) and knows its own names from [[listen]], advertise and domain names".into(),
            ),
            "tcp_accept_no_cl" => Err(
                "siprox reads HTTP requests (RPC over a SIP port) by their Content-Length".into(),
            ),
            _ => Err(format!("siprox has no setting for the core parameter `{name}`")),
        }
    }

    fn secs(&mut self, key: &'static str, v: &str) -> Result<String, String> {
        let Some(n) = int_value(v).filter(|n| *n > 0) else {
            return Err("not a positive number of seconds".into());
        };
        self.connections.insert(key, q(&format!("{n}s")));
        Ok(format!("[connections] {key} = \"{n}s\""))
    }

    /// `listen=[proto:]addr[:port] [advertise host[:port]] [name "x"]`.
    fn listen(&mut self, v: &str) -> Result<usize, String> {
        let mut words = v.split_whitespace();
        let spec = words.next().ok_or("empty listen")?;
        let mut advertise = None;
        while let Some(w) = words.next() {
            match w.to_ascii_lowercase().as_str() {
                "advertise" | "as" => advertise = words.next().map(|s| unquote(s).to_owned()),
                "name" | "virtual" => {
                    words.next();
                }
                _ => return Err(format!("unknown listen option `{w}`")),
            }
        }
        let (proto, rest) = match spec.split_once(':') {
            Some((p, r))
                if ["udp", "tcp", "tls", "sctp", "ws", "wss", "any"]
                    .contains(&p.to_ascii_lowercase().as_str()) =>
            {
                (Some(p.to_ascii_lowercase()), r)
            }
            _ => (None, spec),
        };
        let (host, port) = split_host_port(rest);
        if host.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "`{host}` is not an IP address (siprox listens on addresses, not interface or host names)"
            ));
        }
        let protos: Vec<&str> = match proto.as_deref() {
            Some("udp") => vec!["udp"],
            Some("tcp") => vec!["tcp"],
            Some("tls") => vec!["tls"],
            Some("sctp") | Some("ws") | Some("wss") => {
                return Err("siprox has no SCTP or WebSocket transport".into())
            }
            _ => vec!["udp", "tcp", "tls"],
        };
        let mut n = 0;
        for p in protos {
            let port = port
                .or(self.port)
                .unwrap_or(if p == "tls" { 5061 } else { 5060 });
            let ip = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            self.listens
                .push((p.into(), format!("{ip}:{port}"), advertise.clone()));
            n += 1;
        }
        self.listen_lines += 1;
        Ok(n)
    }

    fn modparam(&mut self, m: &str, p: &str, v: &str) -> Result<String, String> {
        let int = || int_value(v).ok_or_else(|| format!("`{v}` is not a number"));
        match (m, p) {
            ("registrar", "max_expires" | "min_expires" | "default_expires" | "max_contacts") => {
                let n = int()?;
                let key = match p {
                    "max_expires" => "max_expires",
                    "min_expires" => "min_expires",
                    "default_expires" => "default_expires",
                    _ => "max_contacts",
                };
                self.registrar.insert(key, n.to_string());
                Ok(format!("[registrar] {key} = {n}"))
            }
            ("registrar", "use_path") => {
                self.use_path = Some(int()? != 0);
                Ok("[registrar] path_mode".into())
            }
            ("registrar", "path_mode") => {
                self.path_mode = Some(int()?);
                Ok("[registrar] path_mode".into())
            }
            ("htable", "htable") => {
                // "name=>size=8;autoexpire=300;..."
                let Some((name, params)) = v.split_once("=>") else {
                    return Err("not `name=>params`".into());
                };
                let name = name.trim();
                if crate::config::htable::check_name(name).is_some() {
                    return Err(format!("`{name}` is not a table name siprox accepts"));
                }
                let mut expire = 0;
                let mut ignored = Vec::new();
                for p in params.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                    match p.split_once('=') {
                        Some(("autoexpire", n)) => {
                            expire = n
                                .trim()
                                .parse::<u64>()
                                .map_err(|_| format!("autoexpire `{n}` is not a number"))?;
                        }
                        Some(("size", _)) => {}
                        _ => ignored.push(p.to_owned()),
                    }
                }
                self.htables.insert(name.to_owned(), expire);
                let mut why = format!("[htables.{name}] autoexpire = \"{expire}s\"");
                if !ignored.is_empty() {
                    why.push_str(&format!(" (not carried: {})", ignored.join(";")));
                }
                Ok(why)
            }
            ("usrloc", "timer_interval") => {
                let n = int()?;
                self.location.insert("expire_interval", q(&format!("{n}s")));
                Ok(format!("[location] expire_interval = \"{n}s\""))
            }
            ("registrar", "method_filtering" | "gruu_enabled") if int_value(v) == Some(0) => {
                Ok("siprox's behaviour (off)".into())
            }
            ("tm", "fr_timer" | "fr_inv_timer") => Err(
                "no global final-response timers: call t_set_fr(invite_ms, other_ms) before t_relay() (without it: Timer B/F, 64*T1)".into(),
            ),
            ("usrloc", "db_mode" | "db_url") | (_, "db_url") => {
                Err("no database: [location] snapshot_file or the Redis [cluster]".into())
            }
            ("tls", _) => Err(format!("the TLS module's `{p}`: set it per domain in conf.d (README \"TLS domains\")")),
            _ => Err(format!("siprox has no setting for modparam `{m}` `{p}`")),
        }
    }

    fn finish(mut self, opts: &Options<'_>, imp: &mut Import) {
        if self.listen_lines == 0 {
            // Kamailio without listen= binds every address on 5060 (and 5061 for TLS).
            for p in ["udp", "tcp"] {
                self.listens.push((p.into(), "0.0.0.0:5060".into(), None));
            }
            if self.enable_tls {
                self.listens
                    .push(("tls".into(), "0.0.0.0:5061".into(), None));
            }
        }
        if !self.enable_tls {
            // Kamailio listens with TLS only once enable_tls is set.
            self.listens.retain(|l| l.0 != "tls");
        }
        let mut t = String::new();
        let _ = writeln!(
            t,
            "# Imported from {} by `siprox import`. Every key is documented in the README\n\
             # (\"Configuration\"); what could not be carried over is listed in IMPORT.txt.",
            opts.cfg.name
        );
        t.push('\n');
        for (p, a, adv) in &self.listens {
            let _ = writeln!(t, "[[listen]]\nproto = {}\naddr = {}", q(p), q(a));
            if let Some(adv) = adv {
                let _ = writeln!(t, "advertise = {}", q(adv));
            }
            t.push('\n');
        }
        if let Some(l) = &self.log_level {
            let _ = writeln!(t, "[log]\nlevel = {}\n", q(l));
        }
        match (self.tcp_max, self.tls_max) {
            (None, None) => {}
            (a, b) => {
                let n = a.unwrap_or(0) + b.unwrap_or(0);
                self.connections.insert("max_connections", n.to_string());
            }
        }
        section(&mut t, "connections", &self.connections);
        match (self.use_path, self.path_mode) {
            (Some(false), _) => {
                self.registrar.insert("path_mode", q("off"));
            }
            (Some(true), m) => {
                let mode = if m == Some(2) { "strict" } else { "lazy" };
                self.registrar.insert("path_mode", q(mode));
            }
            _ => {}
        }
        section(&mut t, "registrar", &self.registrar);
        section(&mut t, "location", &self.location);
        section(&mut t, "tls", &self.tls);
        for (name, expire) in &self.htables {
            let _ = writeln!(t, "[htables.{name}]\nautoexpire = \"{expire}s\"\n");
        }
        let _ = writeln!(t, "[script]\nfile = {}", q(SCRIPT_PATH));
        imp.files.push((MAIN_TOML.into(), t));
        if !self.aliases.is_empty() {
            let names: Vec<String> = self.aliases.iter().map(|a| q(a)).collect();
            imp.files.push((
                "conf.d/domains/aliases.toml".into(),
                format!(
                    "# The alias= lines of {}: SIP domains that `uri == myself` knows.\n\
                     [domains.\"aliases\"]\nnames = [{}]\n",
                    opts.cfg.name,
                    names.join(", ")
                ),
            ));
        }
        for (name, d) in &self.domains {
            let mut t = String::new();
            let _ = writeln!(t, "# {}", d.file_comment);
            let key = q(name);
            let _ = writeln!(t, "[domains.{key}]");
            if !d.names.is_empty() {
                let names: Vec<String> = d.names.iter().map(|a| q(a)).collect();
                let _ = writeln!(t, "names = [{}]", names.join(", "));
            }
            if !d.server.is_empty() {
                t.push('\n');
                section(&mut t, &format!("domains.{key}.server"), &d.server);
            }
            if !d.client.is_empty() {
                t.push('\n');
                section(&mut t, &format!("domains.{key}.client"), &d.client);
            }
            imp.files
                .push((format!("conf.d/domains/{}.toml", file_name(name)), t));
        }
    }
}

fn file_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn section(t: &mut String, name: &str, keys: &BTreeMap<&'static str, String>) {
    if keys.is_empty() {
        return;
    }
    let _ = writeln!(t, "[{name}]");
    for (k, v) in keys {
        let _ = writeln!(t, "{k} = {v}");
    }
    t.push('\n');
}

fn alias_host(v: &str) -> String {
    let v = v.split_whitespace().next().unwrap_or(v);
    let rest = match v.split_once(':') {
        Some((p, r)) if ["udp", "tcp", "tls", "sctp", "any"].contains(&p) => r,
        _ => v,
    };
    split_host_port(rest).0
}

/// `host[:port]`, `[v6]:port`, or a bare IPv6 address.
fn split_host_port(s: &str) -> (String, Option<u16>) {
    if let Some(r) = s.strip_prefix('[') {
        if let Some((h, rest)) = r.split_once(']') {
            let port = rest.strip_prefix(':').and_then(|p| p.parse().ok());
            return (h.into(), port);
        }
    }
    if s.matches(':').count() > 1 {
        return (s.into(), None);
    }
    match s.rsplit_once(':') {
        Some((h, p)) => match p.parse() {
            Ok(p) => (h.into(), Some(p)),
            Err(_) => (s.into(), None),
        },
        None => (s.into(), None),
    }
}

/// A tls.cfg profile: its header's line, the header, and its keys (line, key, value).
type Profile = (usize, String, Vec<(usize, String, String)>);

/// The TLS module's profiles.
fn tls_cfg(src: Source<'_>, fs: &dyn Files, cfg: &mut Cfg, imp: &mut Import) {
    let dir = parent_dir(src.name);
    // (header line, header, keys with their lines)
    let mut profiles: Vec<Profile> = Vec::new();
    for (i, raw) in src.text.lines().enumerate() {
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(h) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            profiles.push((i + 1, h.trim().to_owned(), Vec::new()));
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            imp.skipped.push(Line {
                file: src.name.into(),
                line: i + 1,
                text: t.into(),
                why: "not `key = value`".into(),
            });
            continue;
        };
        match profiles.last_mut() {
            Some(p) => p.2.push((i + 1, k.trim().to_owned(), v.trim().to_owned())),
            None => imp.skipped.push(Line {
                file: src.name.into(),
                line: i + 1,
                text: t.into(),
                why: "outside a [server:...] or [client:...] profile".into(),
            }),
        }
    }
    for (hline, header, keys) in profiles {
        let at = |line: usize, text: &str, why: String| Line {
            file: src.name.into(),
            line,
            text: text.into(),
            why,
        };
        let (side, target) = match header.split_once(':') {
            Some((s, t))
                if s.eq_ignore_ascii_case("server") || s.eq_ignore_ascii_case("client") =>
            {
                (s.to_ascii_lowercase(), t.trim().to_owned())
            }
            _ => {
                imp.skipped.push(at(
                    hline,
                    &format!("[{header}]"),
                    "not a [server:...] or [client:...] profile".into(),
                ));
                continue;
            }
        };
        let server = side == "server";
        let get = |k: &str| {
            keys.iter()
                .find(|(_, kk, _)| kk == k)
                .map(|(_, _, v)| v.clone())
        };
        let default = target.eq_ignore_ascii_case("default");
        let any = target.eq_ignore_ascii_case("any");
        // A profile whose certificate is missing cannot be built: siprox would refuse it.
        let missing: Vec<String> = ["certificate", "private_key", "ca_list", "crl"]
            .iter()
            .filter_map(|k| get(k).map(|v| resolve(&dir, &v)))
            .filter(|p| !fs.exists(p))
            .collect();
        let name = if default {
            None
        } else if any {
            match get("server_name") {
                Some(n) => Some(n),
                None => {
                    imp.skipped.push(at(
                        hline,
                        &format!("[{header}]"),
                        "an `any` profile without server_name cannot be picked by siprox".into(),
                    ));
                    continue;
                }
            }
        } else {
            Some(format!(
                "tls-{side}-{}",
                target.replace([':', '[', ']'], "-")
            ))
        };
        let mut map: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut verify_cert = None;
        let mut require_cert = None;
        for (line, k, v) in &keys {
            let text = format!("{k} = {v}");
            let file_key = |key: &'static str| -> (Option<(&'static str, String)>, String) {
                (Some((key, q(&resolve(&dir, v)))), key.to_string())
            };
            let (set, why): (Option<(&'static str, String)>, String) = match k.as_str() {
                "certificate" if server || default => {
                    let key = if server {
                        "certificate"
                    } else {
                        "client_certificate"
                    };
                    file_key(key)
                }
                "certificate" => file_key("certificate"),
                "private_key" if !server && default => file_key("client_private_key"),
                "private_key" => file_key("private_key"),
                "ca_list" => file_key("ca_file"),
                "ca_path" => file_key("ca_dir"),
                "crl" => file_key("crl_file"),
                "cipher_list" => (Some(("ciphers", q(v))), "ciphers".into()),
                "verify_depth" => match v.parse::<u32>() {
                    Ok(n) if server || default => {
                        (Some(("verify_depth", n.to_string())), "verify_depth".into())
                    }
                    _ => (
                        None,
                        "siprox has verify_depth on the server side only".into(),
                    ),
                },
                "method" | "tls_method" => match tls_versions(v) {
                    Some((min, max, note)) => {
                        map.insert("min_version", q(min));
                        if let Some(max) = max {
                            map.insert("max_version", q(max));
                        }
                        (None, format!("min_version = \"{min}\"{note}"))
                    }
                    None => (None, String::new()),
                },
                "verify_certificate" => {
                    verify_cert = yes(v);
                    let key = if server {
                        "verify_client"
                    } else {
                        "verify_server"
                    };
                    (None, key.into())
                }
                "require_certificate" => {
                    require_cert = yes(v);
                    let key = if server {
                        "verify_client"
                    } else {
                        "verify_server"
                    };
                    (None, key.into())
                }
                "server_name" if server => (None, "sni".into()),
                "server_name" if !default => (Some(("server_name", q(v))), "server_name".into()),
                "server_name_mode" if server && any => (None, "sni".into()),
                "server_id" => (
                    None,
                    "siprox picks client domains by destination or server name".into(),
                ),
                _ => (None, String::new()),
            };
            if why.is_empty() {
                imp.skipped.push(at(
                    *line,
                    &text,
                    format!("siprox has no setting for the tls.cfg key `{k}` (or this value)"),
                ));
                continue;
            }
            if let Some((key, val)) = set {
                map.insert(key, val);
            }
            imp.carried.push(at(*line, &text, why));
        }
        if server {
            let vc = match (verify_cert, require_cert) {
                (Some(true), Some(true)) => Some("require"),
                (Some(true), _) => Some("optional"),
                (Some(false), _) => Some("off"),
                (None, Some(true)) => Some("require"),
                _ => None,
            };
            if let Some(vc) = vc {
                map.insert("verify_client", q(vc));
            }
        } else if let Some(v) = verify_cert {
            map.insert("verify_server", v.to_string());
        }
        if !missing.is_empty() {
            // Leave out what cannot be loaded, and say so.
            let what = if default {
                "[tls] keeps siprox's own certificate (generate_dev_certs for a first run)"
            } else {
                "this profile is left out"
            };
            imp.skipped.push(at(
                hline,
                &format!("[{header}]"),
                format!("{} not found: {what}", missing.join(", ")),
            ));
            if !default {
                continue;
            }
            for k in [
                "certificate",
                "private_key",
                "client_certificate",
                "client_private_key",
                "ca_file",
                "crl_file",
            ] {
                if let Some(v) = map.get(k) {
                    if missing.iter().any(|m| q(m) == *v) {
                        map.remove(k);
                        if k == "certificate" {
                            map.remove("private_key");
                        }
                        if k == "client_certificate" {
                            map.remove("client_private_key");
                        }
                    }
                }
            }
        }
        match name {
            None => {
                for (k, v) in map {
                    if !server && k == "ca_file" && cfg.tls.contains_key("ca_file") {
                        if cfg.tls.get("ca_file") != Some(&v) {
                            imp.skipped.push(at(
                                hline,
                                &format!("[{header}] ca_list"),
                                "[tls] has one ca_file for both sides: the server's is kept".into(),
                            ));
                        }
                        continue;
                    }
                    if !server
                        && matches!(k, "min_version" | "max_version" | "ciphers")
                        && cfg.tls.contains_key(k)
                    {
                        continue;
                    }
                    cfg.tls.insert(k, v);
                }
            }
            Some(n) => {
                let d = cfg.domains.entry(n.clone()).or_default();
                d.file_comment = format!("[{header}] of {}", src.name);
                if server {
                    if any {
                        let mode = get("server_name_mode").and_then(|m| m.parse::<i64>().ok());
                        let sni: Vec<String> = match mode {
                            Some(1) => vec![n.clone(), format!("*.{n}")],
                            Some(2) => vec![format!("*.{n}")],
                            _ => vec![n.clone()],
                        };
                        let list: Vec<String> = sni.iter().map(|s| q(s)).collect();
                        map.insert("sni", format!("[{}]", list.join(", ")));
                        d.names = vec![n.clone()];
                    } else {
                        map.insert("listen", format!("[{}]", q(&target)));
                        if let Some(sn) = get("server_name") {
                            map.insert("sni", format!("[{}]", q(&sn)));
                        }
                    }
                    d.server = map;
                } else {
                    if !any {
                        map.insert("destinations", format!("[{}]", q(&target)));
                    } else if let Some(sn) = get("server_name") {
                        map.insert("server_names", format!("[{}]", q(&sn)));
                    }
                    d.client = map;
                }
            }
        }
    }
}

/// Kamailio's `method` into siprox's versions (siprox speaks TLS 1.2 and 1.3 only).
fn tls_versions(v: &str) -> Option<(&'static str, Option<&'static str>, &'static str)> {
    let v = v.trim().to_ascii_uppercase();
    Some(match v.as_str() {
        "TLSV1.2+" => ("1.2", None, ""),
        "TLSV1.3" | "TLSV1.3+" => ("1.3", Some("1.3"), ""),
        "TLSV1.2" => ("1.2", Some("1.2"), ""),
        "SSLV23" | "TLSV1+" | "TLSV1.1+" | "TLSV1" | "TLSV1.1" | "ANY" => (
            "1.2",
            None,
            " (siprox speaks TLS 1.2 and 1.3 only: older versions are refused)",
        ),
        _ => return None,
    })
}
