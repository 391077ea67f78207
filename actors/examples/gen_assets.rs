//! Writes what the Debian package ships beside the binaries, from the code: the man pages
//! siprox(8) and siproxctl(8) from the clap definitions (clap_mangen), siprox.conf(5) from
//! the configuration schema and conf.d/00-core.toml (`siprox_actors::mgmt::docs`), and bash, zsh
//! and fish completions (clap_complete). Run by deploy/package.sh before `cargo deb`:
//!
//!   cargo run -p siprox-actors --example gen_assets -- OUT_DIR
//!
//! Fails (and writes nothing more) when conf.d/00-core.toml leaves a key of the schema out.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gen_assets OUT_DIR");
        return ExitCode::from(2);
    };
    match run(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen_assets: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(out: &Path) -> Result<(), String> {
    let man = out.join("man");
    let completions = out.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let write = |p: PathBuf, bytes: &[u8]| {
        std::fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))
    };
    let version = env!("CARGO_PKG_VERSION");
    for (cmd, name) in [
        (siprox_actors::cli::Cli::command(), "siprox"),
        (siprox_actors::mgmt::ctl::Cli::command(), "siproxctl"),
    ] {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .section("8")
            .manual("System Administration")
            .source(format!("siprox {version}"))
            .render(&mut page)
            .map_err(|e| e.to_string())?;
        write(man.join(format!("{name}.8")), &page)?;
        for (shell, file) in [
            (Shell::Bash, name.to_owned()),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), name, &mut script);
            write(completions.join(file), &script)?;
        }
    }
    let conf_d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf.d");
    let reference = std::fs::read_to_string(conf_d.join("00-core.toml"))
        .map_err(|e| format!("{}: {e}", conf_d.display()))?;
    let config = siprox_actors::reload::files::load_outcome(&conf_d)
        .loaded
        .map_err(|e| format!("conf.d does not load: {e:?}"))?
        .config;
    let page =
        siprox_actors::mgmt::docs::conf_manpage(&config, &reference, version).map_err(|keys| {
            format!(
                "conf.d/00-core.toml does not document: {} (add them there)",
                keys.join(", ")
            )
        })?;
    write(man.join("siprox.conf.5"), page.as_bytes())
}
