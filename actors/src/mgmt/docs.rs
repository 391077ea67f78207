//! siprox.conf(5), generated: every key of the packaged configuration with its value, from
//! the code (the loaded reference configuration serialized, so a key added to
//! `siprox::config` with a default shows up here by itself), followed by the commented reference,
//! `conf.d/00-core.toml`. Must refuse to generate when the reference does not mention a key
//! of the schema: the page and the code never disagree on the key list.

use serde_json::Value;
use siprox::config::Config;

/// Every leaf key of `config` as `section.key` (`listen.proto` for `[[listen]]`), with its
/// value as TOML would show it (`-` when unset), in schema order.
pub fn config_keys(config: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    match serde_json::to_value(config) {
        Ok(v) => walk(&v, "", &mut out),
        Err(e) => out.push(("?".to_owned(), e.to_string())),
    }
    out
}

fn walk(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                walk(v, &join(k), out);
            }
        }
        Value::Array(a) if a.first().is_some_and(Value::is_object) => {
            if let Some(first) = a.first() {
                walk(first, path, out);
            }
        }
        Value::Null => out.push((path.to_owned(), "-".to_owned())),
        other => out.push((path.to_owned(), other.to_string())),
    }
}

/// The keys of `config` that `reference` never names (as a whole word).
pub fn undocumented(config: &Config, reference: &str) -> Vec<String> {
    config_keys(config)
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| {
            let last = k.rsplit('.').next().unwrap_or(k);
            !has_word(reference, last)
        })
        .collect()
}

fn has_word(text: &str, word: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// Escapes text for roff: backslashes, and a leading `.` or `'` that would be a request.
fn roff(line: &str) -> String {
    let s = line.replace('\\', "\\e");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// siprox.conf(5) for `config` (the reference loaded) and `reference` (its text), or the
/// keys the reference does not document.
pub fn conf_manpage(
    config: &Config,
    reference: &str,
    version: &str,
) -> Result<String, Vec<String>> {
    let missing = undocumented(config, reference);
    if !missing.is_empty() {
        return Err(missing);
    }
    let mut s = String::new();
    s.push_str(&format!(
        ".TH SIPROX.CONF 5 \"\" \"siprox {version}\" \"File Formats\"\n\
         .SH NAME\nsiprox.conf \\- siprox configuration: /etc/siprox/conf.d/*.toml\n\
         .SH SYNOPSIS\n/etc/siprox/conf.d/*.toml, /etc/siprox/conf.d/domains/*.toml\n\
         .SH DESCRIPTION\n\
         Every *.toml file of the configuration directory and of its domains/ folder is read \
         in byte-wise order of its relative path, each merged over the earlier ones: a value \
         or plain list replaces the earlier one, tables merge key by key, [[listen]] entries \
         are appended (a file with listen_replace = true replaces them). \
         SIPROX_<SECTION>__<KEY> environment variables override the files. Unknown keys are \
         errors. Relative paths resolve against the parent of the configuration directory \
         (/etc/siprox for the package: certs/, and var/, a link to /var/lib/siprox).\n\
         .PP\n\\fBsiprox check\\fR validates a configuration as a start would; \
         \\fBsiprox check \\-\\-print\\fR shows every value with the file it came from; \
         \\fBsystemctl reload siprox\\fR (SIGHUP) applies it.\n\
         .SH KEYS\nEvery key of the packaged configuration with its value (\\- when \
         unset), as the code serializes it; optional keys it leaves out (certificate \
         passwords, secret files, [cluster], ...) are in the reference below.\n"
    ));
    let mut section = String::new();
    for (key, value) in config_keys(config) {
        let (sec, leaf) = key.rsplit_once('.').unwrap_or(("", key.as_str()));
        if sec != section {
            section = sec.to_owned();
            s.push_str(&format!(".SS [{}]\n", roff(&section)));
        }
        s.push_str(&format!(".TP\n\\fB{}\\fR = {}\n", roff(leaf), roff(&value)));
    }
    s.push_str(".SH REFERENCE\nThe packaged /etc/siprox/conf.d/00-core.toml, which comments every key:\n.PP\n.nf\n");
    for line in reference.lines() {
        s.push_str(&roff(line));
        s.push('\n');
    }
    s.push_str(
        ".fi\n.SH FILES\n/etc/siprox/conf.d/, /etc/siprox/certs/, /var/lib/siprox/\n\
         .SH SEE ALSO\n\\fBsiprox\\fR(8), \\fBsiproxctl\\fR(8), \\fBsystemctl\\fR(1)\n",
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> (Config, String) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf.d");
        let text = std::fs::read_to_string(dir.join("00-core.toml")).expect("reference");
        let outcome = crate::reload::files::load_outcome(&dir);
        let loaded = outcome.loaded.expect("the reference loads");
        (loaded.config, text)
    }

    #[test]
    fn the_reference_documents_every_key_of_the_schema() {
        let (config, text) = reference();
        let keys = config_keys(&config);
        // Sections from the code, not from the reference text.
        for k in [
            "listen.proto",
            "tls.certificate",
            "auth.users_file",
            "transactions.t1",
        ] {
            assert!(keys.iter().any(|(key, _)| key == k), "{k} in {keys:?}");
        }
        assert_eq!(undocumented(&config, &text), Vec::<String>::new());
        let page = conf_manpage(&config, &text, "0").expect("page");
        assert!(page.contains(".SS [management]\n"), "{page}");
        // A key the reference does not name is refused, not silently left out.
        let cut = text.replace("reload_min_interval", "rmi");
        assert_eq!(
            conf_manpage(&config, &cut, "0").unwrap_err(),
            vec!["management.reload_min_interval".to_owned()]
        );
    }
}
