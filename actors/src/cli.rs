//! Command-line interface of the `siprox` binary: argument parsing, `siprox check`, and the
//! hand-off to the runtime. Must never start serving on a configuration that failed to load,
//! and must never claim to serve when it does not.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use siprox::config::{self, Config, ConfigErrors, Loaded, Proto};

use crate::runtime::RuntimeOptions;

/// Exit status for an invalid configuration (and for command-line errors other than --help).
pub const EXIT_CONFIG_ERROR: u8 = 1;
/// Exit status when the configuration is valid but this build cannot serve it.
pub const EXIT_NOT_IMPLEMENTED: u8 = 2;

/// siprox: a SIP proxy. Without a command it runs with the configuration in DIR.
#[derive(Debug, Parser)]
#[command(name = "siprox", version, propagate_version = true)]
pub struct Cli {
    /// Configuration directory (conf.d): every *.toml in it and in its domains/ subfolder.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "DIR",
        env = config::ENV_CONFIG_DIR,
        default_value = "conf.d",
        global = true
    )]
    pub config_dir: PathBuf,

    /// What to do; without a command, siprox runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and validate the configuration exactly as a start would (files, keys, the files
    /// they point to, scripts, TLS material), print a summary, and exit (0 = valid, 1 = errors).
    Check {
        /// Print the merged configuration instead of the summary, each value with the file
        /// or environment variable it came from (`# default` when none set it).
        #[arg(long)]
        print: bool,
    },
    /// Write the development certificates a start would generate (`[tls] generate_dev_certs`:
    /// a local CA, a certificate for localhost, the `admin` client certificate for
    /// siproxctl), where `[tls]` names them, when none of them exist; then exit. Never
    /// overwrites a file. The Debian package runs it once, so that the service starts with
    /// /etc read-only.
    DevCerts,
    /// Convert a Kamailio configuration into a siprox configuration directory: `listen=`,
    /// `alias=`, the global parameters and modparams siprox has keys for, the TLS module's
    /// profiles, and the route blocks (as DIR/conf.d/scripts/kamailio.cfg). Every line that
    /// is not carried over is listed with the reason (also in DIR/IMPORT.txt); then the
    /// result is checked as `siprox check -c DIR/conf.d` would (exit 0 = valid, 1 = not).
    Import {
        /// Kamailio's main configuration file (kamailio.cfg).
        #[arg(value_name = "KAMAILIO_CFG")]
        cfg: PathBuf,
        /// The TLS module's profiles (tls.cfg); default: the file its `config` modparam names.
        #[arg(value_name = "TLS_CFG")]
        tls: Option<PathBuf>,
        /// Output directory (DIR/conf.d is made; it must not exist yet).
        #[arg(short = 'o', long = "out", value_name = "DIR")]
        out: PathBuf,
        /// Define NAME (as Kamailio's `-A NAME[=VALUE]`), e.g. `-D WITH_TLS`.
        #[arg(short = 'D', long = "define", value_name = "NAME[=VALUE]")]
        define: Vec<String>,
    },
}

/// Parses the process arguments and does what they say. Argument errors and `--help` /
/// `--version` exit inside (clap's own conventions).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Import {
            cfg,
            tls,
            out,
            define,
        }) => import(
            &cfg,
            tls.as_deref(),
            &out,
            &define,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        Some(Command::Check { print }) => check(
            &cli.config_dir,
            print,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        Some(Command::DevCerts) => dev_certs(&cli.config_dir, &mut std::io::stderr().lock()),
        None => {
            // The stderr lock must be released before `run`: a temporary in the `match`
            // head would live until the runtime exits and block every other thread's logs.
            let verified = verify(&cli.config_dir, false, &mut std::io::stderr().lock());
            match verified {
                Ok(v) => run(v),
                Err(code) => code,
            }
        }
    }
}

/// A configuration that passed every check a start makes before it binds.
pub struct Verified {
    /// The pipeline's result.
    pub loaded: Loaded,
    /// The pipeline's warnings (ignored environment variables).
    pub warnings: Vec<String>,
    /// The TLS domains, as built.
    pub tls: crate::state::TlsDomains,
    /// The route scripts, as compiled.
    pub scripts: crate::state::ScriptSet,
    /// The development certificates a start would generate (never over an existing file).
    pub dev_certs: Option<crate::tls::DevCertPlan>,
}

/// Everything `siprox check` and the start both run, in one place so that they accept and
/// refuse the same configurations with the same words: the core's pipeline (load, merge,
/// validate, digest), then what needs the files the configuration points to (`[auth]`
/// files, the management TLS material, route scripts, every TLS domain). Every error of
/// every stage that can run is written to `err`, one per line, after the warnings when
/// `print_warnings` is set or the configuration fails; otherwise the warnings are returned
/// for the start to log.
pub fn verify(dir: &Path, print_warnings: bool, err: &mut dyn Write) -> Result<Verified, ExitCode> {
    let outcome = crate::reload::files::load_outcome(dir);
    let warn = |err: &mut dyn Write| {
        for w in &outcome.warnings {
            let _ = writeln!(err, "warning: {w}");
        }
    };
    if print_warnings {
        warn(err);
    }
    let (loaded, mut lines) = match (outcome.loaded, outcome.invalid) {
        (Ok(l), _) => (l, Vec::new()),
        // Only validation failed: the files it points to are checked too, so that one
        // run shows every error.
        (Err(errors), Some(l)) => (*l, errors.iter().map(ToString::to_string).collect()),
        (Err(errors), None) => {
            if !print_warnings {
                warn(err);
            }
            report(&errors, err);
            return Err(ExitCode::from(EXIT_CONFIG_ERROR));
        }
    };
    let config = &loaded.config;
    let base = crate::runtime::RuntimeOptions::base_dir_for(config);
    lines.extend(
        crate::reload::files::check_pointed_files(&loaded, &base)
            .iter()
            .map(ToString::to_string),
    );
    lines.extend(probe_addresses(&loaded).iter().map(ToString::to_string));
    // Route scripts compile exactly as at start (and on reload).
    let scripts = match crate::reload::script::compile_scripts(config, &base) {
        Ok(s) => Some(s),
        Err(errors) => {
            lines.extend(errors.iter().map(ToString::to_string));
            None
        }
    };
    // What a start would generate, or why it would refuse (never over existing keys).
    let dev_certs = match crate::tls::dev_certs_plan(&config.tls, &base) {
        Ok(plan) => plan,
        Err(e) => {
            lines.push(e.to_string());
            None
        }
    };
    // TLS material: every domain's contexts built exactly as a reload builds them.
    let has_tls = config.listen.iter().any(|l| l.proto == Proto::Tls);
    let read = crate::reload::files::Pointed {
        files: crate::reload::files::FILES,
        config,
        origins: &loaded.origins,
    };
    let tls = crate::tls::build_domains(
        config,
        None,
        crate::tls::BuildOptions {
            base: &base,
            has_tls,
            // Generated at start when missing: not an error here.
            dev_certs_pending: true,
            now: crate::tls::unix_now(),
            read: &read,
        },
    );
    let tls = match tls {
        Ok(t) => Some(t),
        Err(errors) => {
            lines.extend(errors.iter().map(ToString::to_string));
            None
        }
    };
    match (tls, scripts) {
        (Some(tls), Some(scripts)) if lines.is_empty() => Ok(Verified {
            loaded,
            warnings: outcome.warnings,
            tls,
            scripts,
            dev_certs,
        }),
        _ => {
            if !print_warnings {
                warn(err);
            }
            for l in lines {
                let _ = writeln!(err, "error: {l}");
            }
            Err(ExitCode::from(EXIT_CONFIG_ERROR))
        }
    }
}

/// Each listener's (and the management listener's) IP address, bound with port 0 and
/// released at once: an address this host does not have (a typo, an interface that is not
/// up) fails the start, so check says it too. The port itself is not tried: it may be held
/// by the siprox that is running now, which is no reason to refuse a new configuration.
fn probe_addresses(loaded: &Loaded) -> Vec<config::ConfigError> {
    let config = &loaded.config;
    let mut errors = Vec::new();
    let mut probe =
        |proto: &str, addr: std::net::SocketAddr, origin: config::Origin, key: String| {
            let any = std::net::SocketAddr::new(addr.ip(), 0);
            let result = if proto == "udp" {
                std::net::UdpSocket::bind(any).map(drop)
            } else {
                std::net::TcpListener::bind(any).map(drop)
            };
            if let Err(e) = result {
                errors.push(config::ConfigError::Invalid {
                    origin,
                    key,
                    message: format!("cannot listen on {proto} {addr}: {e}"),
                });
            }
        };
    let mut seen: Vec<config::Origin> = Vec::new();
    for (i, l) in config.listen.iter().enumerate() {
        let origin = loaded.origins.of_or_dir(&["listen", &i.to_string()]);
        // The index within its own file, as the file's author counts (like validation).
        let local = seen.iter().filter(|o| **o == origin).count();
        seen.push(origin.clone());
        probe(
            l.proto.as_str(),
            l.addr,
            origin,
            format!("listen[{local}].addr"),
        );
    }
    if config.management.enabled {
        let origin = loaded.origins.of_or_dir(&["management", "listen"]);
        probe(
            "https",
            config.management.listen,
            origin,
            "management.listen".to_owned(),
        );
    }
    errors
}

/// `siprox check`: warnings and errors on `err`; the summary (or with `print`, the merged
/// configuration) on `out` and exit 0, or exit 1.
pub fn check(dir: &Path, print: bool, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    let v = match verify(dir, true, err) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let config = &v.loaded.config;
    // A closed stdout (`siprox check | head -0`) must not turn a valid config into a
    // failure, nor panic as `println!` would.
    if print {
        let _ = write!(out, "{}", siprox::config::render_with_origins(&v.loaded));
        return ExitCode::SUCCESS;
    }
    let has_tls = config.listen.iter().any(|l| l.proto == Proto::Tls);
    let (tls, scripts) = (&v.tls, &v.scripts);
    let _ = writeln!(out, "{}", config.summary());
    let _ = writeln!(
        out,
        "tls domains: {} server, {} client (default server: {})",
        tls.servers.len(),
        tls.clients.len(),
        if tls.default_server.is_some() {
            "[tls]"
        } else if has_tls && config.tls.default_server {
            "[tls], generated at start"
        } else {
            "none"
        }
    );
    let _ = writeln!(
        out,
        "route scripts: {}",
        if scripts.is_empty() {
            "none (built-in route)".to_owned()
        } else {
            format!(
                "{} compiled (default: {})",
                scripts.by_domain.len() + usize::from(scripts.default.is_some()),
                if scripts.default.is_some() {
                    "yes"
                } else {
                    "built-in"
                }
            )
        }
    );
    if let Some(plan) = &v.dev_certs {
        let files: Vec<_> = plan
            .files()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let _ = writeln!(
            out,
            "development certificates generated at start: {}",
            files.join(", ")
        );
    }
    ExitCode::SUCCESS
}

/// `siprox dev-certs`: the configuration must load; then the planned files are written, each
/// named on `err`. Exit 0 when nothing was needed or all were written, else 1.
pub fn dev_certs(dir: &Path, err: &mut dyn Write) -> ExitCode {
    let v = match verify(dir, true, err) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let Some(plan) = v.dev_certs else {
        let _ = writeln!(
            err,
            "development certificates: nothing to do (they exist, or [tls] generate_dev_certs is off)"
        );
        return ExitCode::SUCCESS;
    };
    let files: Vec<String> = plan
        .files()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let config = &v.loaded.config;
    match crate::tls::ensure_dev_certs(&config.tls, &RuntimeOptions::base_dir_for(config)) {
        Ok(_) => {
            let _ = writeln!(
                err,
                "development certificates written: {}",
                files.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            ExitCode::from(EXIT_CONFIG_ERROR)
        }
    }
}

/// Writes each error on its own line as `error: <file>: <message> at key "<key>"`.
pub fn report(errors: &ConfigErrors, err: &mut dyn Write) {
    for e in errors {
        let _ = writeln!(err, "error: {e}");
    }
}

/// How the daemon starts the runtime on what [`verify`] accepted: relative `[tls]` paths
/// resolved against the parent of the configuration directory, signals handled, `[log]`
/// reloads applied, and the TLS domains verify built handed over, so that a start loads
/// each certificate and key once.
pub fn start_options(config: &Config, tls: crate::state::TlsDomains) -> RuntimeOptions {
    RuntimeOptions {
        base_dir: RuntimeOptions::base_dir_for(config),
        handle_signals: true,
        log_hook: Some(crate::logging::apply),
        verified_tls: Some(Arc::new(tls)),
    }
}

/// Runs siprox with a verified configuration until SIGTERM/SIGINT: logging from `[log]`,
/// then the runtime (`crate::runtime`) with [`start_options`]. Exit 0 after a graceful
/// shutdown; 1 when the runtime cannot start (the error, naming the file or address, on
/// stderr).
pub fn run(v: Verified) -> ExitCode {
    let Verified {
        loaded,
        warnings,
        tls,
        ..
    } = v;
    let config = loaded.config;
    crate::logging::init(&config.log);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let opts = start_options(&config, tls);
    match crate::runtime::Runtime::start(config, opts) {
        Ok(handle) => {
            handle.wait();
            tracing::info!("siprox stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Once, on stderr, as every other start error: the log goes to stderr too, so a
            // log event here printed the same error a second time.
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG_ERROR)
        }
    }
}

/// Reads what `siprox import` converts, from the file system.
struct ImportFiles;

impl siprox::import::Files for ImportFiles {
    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
    fn exists(&self, path: &str) -> bool {
        Path::new(path).exists()
    }
}

/// `siprox import KAMAILIO_CFG [TLS_CFG] -o DIR`: writes DIR/conf.d and DIR/IMPORT.txt, prints
/// the report on `out`, then checks the result as `siprox check` does (errors on `err`).
pub fn import(
    cfg: &Path,
    tls: Option<&Path>,
    dir: &Path,
    defines: &[String],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| format!("error: cannot read {}: {e}", p.display()))
    };
    let texts = read(cfg).and_then(|c| Ok((c, tls.map(read).transpose()?)));
    let (cfg_text, tls_text) = match texts {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return ExitCode::from(EXIT_CONFIG_ERROR);
        }
    };
    let conf_d = dir.join("conf.d");
    if conf_d.exists() {
        let _ = writeln!(
            err,
            "error: {} exists: siprox import never writes over a configuration (pick a new -o DIR)",
            conf_d.display()
        );
        return ExitCode::from(EXIT_CONFIG_ERROR);
    }
    let mut defs = Vec::new();
    for d in defines {
        let (n, v) = d.split_once('=').unwrap_or((d, ""));
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            let _ = writeln!(err, "error: -D {d}: not NAME or NAME=VALUE");
            return ExitCode::from(EXIT_CONFIG_ERROR);
        }
        defs.push((n.to_owned(), v.to_owned()));
    }
    let cfg_name = cfg.to_string_lossy();
    let tls_name = tls.map(|t| t.to_string_lossy());
    let opts = siprox::import::Options {
        cfg: siprox::import::Source {
            name: &cfg_name,
            text: &cfg_text,
        },
        tls: match (&tls_name, &tls_text) {
            (Some(n), Some(t)) => Some(siprox::import::Source { name: n, text: t }),
            _ => None,
        },
        defines: defs,
    };
    let imp = siprox::import::kamailio(&opts, &ImportFiles);
    let mut report = String::new();
    {
        use std::fmt::Write as _;
        let _ = writeln!(report, "# siprox import {}", cfg.display());
        let _ = writeln!(
            report,
            "\n## Not carried over ({} lines): what the imported configuration does not do",
            imp.skipped.len()
        );
        for l in &imp.skipped {
            let _ = writeln!(report, "{l}");
        }
        let _ = writeln!(report, "\n## Carried over ({} lines)", imp.carried.len());
        for l in &imp.carried {
            let _ = writeln!(report, "{l}");
        }
        if imp.inactive > 0 {
            let _ = writeln!(
                report,
                "\n{} global statements are in inactive #!ifdef sections and were not converted \
                 (import again with -D NAME to include them).",
                imp.inactive
            );
        }
    }
    let mut files = imp.files.clone();
    files.push(("IMPORT.txt".to_owned(), report.clone()));
    for (rel, text) in &files {
        let path = dir.join(rel);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, text));
        if let Err(e) = written {
            let _ = writeln!(err, "error: cannot write {}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG_ERROR);
        }
    }
    let _ = write!(out, "{report}");
    let _ = writeln!(
        out,
        "\nwrote {} (conf.d/, IMPORT.txt); checking it as `siprox check -c {}` does:",
        dir.display(),
        conf_d.display()
    );
    match verify(&conf_d, true, err) {
        Ok(_) => {
            let _ = writeln!(
                out,
                "configuration OK: run it with `siprox -c {}`",
                conf_d.display()
            );
            ExitCode::SUCCESS
        }
        Err(code) => {
            let _ = writeln!(
                err,
                "the imported configuration does not pass `siprox check` yet: fix the errors above in {}",
                conf_d.display()
            );
            code
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn check_is_a_subcommand_and_config_defaults_to_conf_d() {
        let cli = Cli::try_parse_from(["siprox", "check"]).expect("parses");
        assert!(matches!(cli.command, Some(Command::Check { print: false })));
        let cli = Cli::try_parse_from(["siprox", "check", "--print"]).expect("parses");
        assert!(matches!(cli.command, Some(Command::Check { print: true })));
        // The default only holds when SIPROX_CONFIG_DIR is unset in the test environment.
        if std::env::var_os(config::ENV_CONFIG_DIR).is_none() {
            assert_eq!(cli.config_dir, PathBuf::from("conf.d"));
        }
        let cli = Cli::try_parse_from(["siprox", "check", "-c", "/etc/siprox"]).expect("parses");
        assert_eq!(cli.config_dir, PathBuf::from("/etc/siprox"));
        let cli = Cli::try_parse_from(["siprox", "-c", "x.d"]).expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.config_dir, PathBuf::from("x.d"));
    }

    #[test]
    fn check_reports_errors_one_per_line() {
        let dir = Path::new("/nonexistent/siprox/conf.d");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = check(dir, false, &mut out, &mut err);
        assert_eq!(code, ExitCode::from(EXIT_CONFIG_ERROR));
        assert!(out.is_empty());
        let err = String::from_utf8_lossy(&err);
        assert!(
            err.starts_with("error: /nonexistent/siprox/conf.d"),
            "{err}"
        );
        assert!(err.lines().all(|l| l.starts_with("error: ")), "{err}");
    }

    #[test]
    fn a_start_takes_the_tls_contexts_that_verify_built() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).expect("mkdir");
        crate::tls::generate_dev_certs(
            &certs.join("ca.pem"),
            &certs.join("ca.key"),
            &certs.join("server.pem"),
            &certs.join("server.key"),
        )
        .expect("dev certificates");
        let conf = dir.path().join("conf.d");
        std::fs::create_dir_all(&conf).expect("mkdir");
        std::fs::write(
            conf.join("00-core.toml"),
            "[[listen]]\nproto = \"tls\"\naddr = \"127.0.0.1:0\"\n[runtime]\nworkers = 1\n\
             [management]\nenabled = false\n[tls]\ngenerate_dev_certs = true\n",
        )
        .expect("write");
        let mut err = Vec::new();
        let Ok(v) = verify(&conf, false, &mut err) else {
            panic!("{}", String::from_utf8_lossy(&err));
        };
        let checked = v.tls.default_server.clone().expect("the default domain");
        let opts = RuntimeOptions {
            handle_signals: false,
            log_hook: None,
            ..start_options(&v.loaded.config, v.tls)
        };
        let rt = crate::runtime::Runtime::start(v.loaded.config, opts).expect("starts");
        let running = rt.snapshot().tls.default_server.clone().expect("running");
        // The very context the check built: its certificate and key were loaded once.
        assert!(Arc::ptr_eq(&checked.ctx, &running.ctx));
        rt.shutdown();
    }
}
